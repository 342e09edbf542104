package dev.llmrt;

import java.util.Map;

/** The little JSON writing the binding needs: requests and configurations. */
final class Json {
    private Json() {
    }

    /** Appends {@code s} as a JSON string (quoted, escaped). */
    static StringBuilder string(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"');
    }

    /**
     * Appends a value: null, a String, a Boolean, a Number (finite), an int[], a String[] or
     * a {@link Raw} JSON text.
     */
    static StringBuilder value(StringBuilder out, Object v) {
        if (v == null) {
            out.append("null");
        } else if (v instanceof String) {
            string(out, (String) v);
        } else if (v instanceof Boolean) {
            out.append(((Boolean) v).booleanValue());
        } else if (v instanceof Double || v instanceof Float) {
            double d = ((Number) v).doubleValue();
            if (Double.isNaN(d) || Double.isInfinite(d)) {
                // JSON has no NaN or infinity: send a string so the library names the field.
                string(out, Double.toString(d));
            } else {
                out.append(d);
            }
        } else if (v instanceof Number) {
            out.append(((Number) v).longValue());
        } else if (v instanceof int[]) {
            int[] a = (int[]) v;
            out.append('[');
            for (int i = 0; i < a.length; i++) {
                if (i > 0) {
                    out.append(',');
                }
                out.append(a[i]);
            }
            out.append(']');
        } else if (v instanceof String[]) {
            String[] a = (String[]) v;
            out.append('[');
            for (int i = 0; i < a.length; i++) {
                if (i > 0) {
                    out.append(',');
                }
                string(out, a[i]);
            }
            out.append(']');
        } else if (v instanceof Raw) {
            out.append(((Raw) v).json);
        } else {
            throw new IllegalArgumentException("cannot write a " + v.getClass().getName()
                    + " as JSON (use a String, Boolean, Number, int[], String[] or raw JSON text)");
        }
        return out;
    }

    /** Writes a map's entries as a JSON object. */
    static String object(Map<String, ?> fields) {
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, ?> e : fields.entrySet()) {
            if (out.length() > 1) {
                out.append(',');
            }
            string(out, e.getKey()).append(':');
            value(out, e.getValue());
        }
        return out.append('}').toString();
    }

    /** JSON text written as is. */
    static final class Raw {
        final String json;

        Raw(String json) {
            this.json = json;
        }
    }
}
