package dev.llmrt;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The fixture model and its reference outputs (expected.json, written from transformers):
 * the tests compare against these, never against values llmrt produced. Holds a minimal
 * JSON reader, enough for that file.
 */
final class Fixture {
    static final Path MODEL = Path.of(System.getProperty("llmrt.test.model",
            "../../tests/fixtures/models/llama")).toAbsolutePath().normalize();

    /**
     * A reference prompt: its text, its ids and the greedy continuation; the top-5 tokens and
     * logprobs of the next-token distribution at each greedy step ({@code greedyTop*}) and
     * after reading each prompt prefix ids[0..=t] ({@code promptTop*}), best first.
     */
    static final class Prompt {
        final String name;
        final String text;
        final boolean addSpecialTokens;
        final int[] ids;
        final int[] greedy;
        final List<Message> messages; // null unless a chat
        final int[][] greedyTopIds;
        final double[][] greedyTopLogprobs;
        final int[][] promptTopIds;
        final double[][] promptTopLogprobs;

        Prompt(Map<String, Object> p, List<Object> greedy, Map<String, Object> greedyTop,
                Map<String, Object> promptTop) {
            this.name = (String) p.get("name");
            this.text = (String) p.get("text");
            this.addSpecialTokens = (Boolean) p.get("add_special_tokens");
            this.ids = ints(p.get("ids"));
            this.greedy = ints(greedy);
            this.greedyTopIds = rows(greedyTop.get("ids"));
            this.greedyTopLogprobs = doubleRows(greedyTop.get("logprobs"));
            this.promptTopIds = rows(promptTop.get("ids"));
            this.promptTopLogprobs = doubleRows(promptTop.get("logprobs"));
            if (p.containsKey("messages")) {
                List<Message> ms = new ArrayList<>();
                for (Object o : (List<?>) p.get("messages")) {
                    Map<?, ?> m = (Map<?, ?>) o;
                    ms.add(new Message((String) m.get("role"), (String) m.get("content")));
                }
                this.messages = ms;
            } else {
                this.messages = null;
            }
        }
    }

    private static final Map<String, Prompt> PROMPTS = load();

    /** The reference prompt of this name (len4, len13, chat, len100, len200, ...). */
    static Prompt prompt(String name) {
        Prompt p = PROMPTS.get(name);
        if (p == null) {
            throw new IllegalArgumentException("no prompt " + name + " in expected.json");
        }
        return p;
    }

    /** The engine configuration the tests use: the fixture model, 2 threads. */
    static String config() {
        return Engine.builder(MODEL.toString()).numThreads(2).toJson();
    }

    static Engine newEngine() {
        return Engine.create(config());
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Prompt> load() {
        Path file = MODEL.resolve("expected.json");
        String text;
        try {
            text = Files.readString(file, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new IllegalStateException("cannot read " + file, e);
        }
        Map<String, Object> root = (Map<String, Object>) new Reader(text).document();
        List<Object> prompts = (List<Object>) root.get("prompts");
        List<Object> greedy = (List<Object>) root.get("greedy_ids");
        List<Object> greedyTop = (List<Object>) root.get("greedy_top5");
        List<Object> promptTop = (List<Object>) root.get("prompt_top5");
        Map<String, Prompt> out = new LinkedHashMap<>();
        for (int i = 0; i < prompts.size(); i++) {
            Prompt p = new Prompt((Map<String, Object>) prompts.get(i), (List<Object>) greedy.get(i),
                    (Map<String, Object>) greedyTop.get(i), (Map<String, Object>) promptTop.get(i));
            out.put(p.name, p);
        }
        return out;
    }

    private static int[] ints(Object list) {
        List<?> l = (List<?>) list;
        int[] a = new int[l.size()];
        for (int i = 0; i < a.length; i++) {
            a[i] = ((Number) l.get(i)).intValue();
        }
        return a;
    }

    private static int[][] rows(Object list) {
        List<?> l = (List<?>) list;
        int[][] a = new int[l.size()][];
        for (int i = 0; i < a.length; i++) {
            a[i] = ints(l.get(i));
        }
        return a;
    }

    private static double[][] doubleRows(Object list) {
        List<?> l = (List<?>) list;
        double[][] a = new double[l.size()][];
        for (int i = 0; i < a.length; i++) {
            List<?> row = (List<?>) l.get(i);
            a[i] = new double[row.size()];
            for (int k = 0; k < a[i].length; k++) {
                a[i][k] = ((Number) row.get(k)).doubleValue();
            }
        }
        return a;
    }

    /** A strict little JSON reader: objects, arrays, strings, numbers, literals. */
    static final class Reader {
        private final String s;
        private int i;

        Reader(String s) {
            this.s = s;
        }

        Object document() {
            Object v = value();
            ws();
            if (i != s.length()) {
                throw error("trailing text");
            }
            return v;
        }

        private IllegalArgumentException error(String what) {
            return new IllegalArgumentException("JSON: " + what + " at offset " + i);
        }

        private void ws() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
        }

        private Object value() {
            ws();
            if (i >= s.length()) {
                throw error("unexpected end");
            }
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> m = new LinkedHashMap<>();
                i++;
                ws();
                if (s.charAt(i) == '}') {
                    i++;
                    return m;
                }
                while (true) {
                    ws();
                    String k = string();
                    ws();
                    expect(':');
                    m.put(k, value());
                    ws();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect('}');
                        return m;
                    }
                }
            }
            if (c == '[') {
                List<Object> l = new ArrayList<>();
                i++;
                ws();
                if (s.charAt(i) == ']') {
                    i++;
                    return l;
                }
                while (true) {
                    l.add(value());
                    ws();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect(']');
                        return l;
                    }
                }
            }
            if (c == '"') {
                return string();
            }
            if (s.startsWith("true", i)) {
                i += 4;
                return Boolean.TRUE;
            }
            if (s.startsWith("false", i)) {
                i += 5;
                return Boolean.FALSE;
            }
            if (s.startsWith("null", i)) {
                i += 4;
                return null;
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
            if (start == i) {
                throw error("unexpected character '" + c + "'");
            }
            String num = s.substring(start, i);
            if (num.matches("-?\\d+")) {
                return Long.parseLong(num);
            }
            return Double.parseDouble(num);
        }

        private void expect(char c) {
            if (i >= s.length() || s.charAt(i) != c) {
                throw error("expected '" + c + "'");
            }
            i++;
        }

        private String string() {
            expect('"');
            StringBuilder b = new StringBuilder();
            while (true) {
                if (i >= s.length()) {
                    throw error("unterminated string");
                }
                char c = s.charAt(i++);
                if (c == '"') {
                    return b.toString();
                }
                if (c != '\\') {
                    b.append(c);
                    continue;
                }
                char e = s.charAt(i++);
                switch (e) {
                    case '"': b.append('"'); break;
                    case '\\': b.append('\\'); break;
                    case '/': b.append('/'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u':
                        b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        i += 4;
                        break;
                    default:
                        throw error("bad escape");
                }
            }
        }
    }

    private Fixture() {
    }
}
