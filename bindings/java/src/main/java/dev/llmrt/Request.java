package dev.llmrt;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * A generation request: a prompt (text, token ids or a chat) and vLLM's sampling fields,
 * with vLLM's names and the library's defaults for what is not set ({@code max_tokens} 16,
 * {@code temperature} 1, ...). Build one with {@link #prompt}, {@link #tokens} or
 * {@link #chat}, or pass JSON as is with {@link #ofJson}. Immutable and reusable.
 *
 * <p>A token-id prompt that sets only {@code max_tokens}, {@code temperature},
 * {@code top_p}, {@code top_k}, a non-negative {@code seed}, {@code ignore_eos},
 * {@code detokenize} and {@code skip_special_tokens} is submitted without JSON, through
 * {@code llmrt_engine_submit_tokens} ({@link #usesTokenFastPath()}); everything else is
 * written as JSON and submitted through {@code llmrt_engine_submit}. Both give the same
 * tokens. The library validates every field: a bad value is a {@link LlmrtException} from
 * {@code submit}.
 */
public final class Request {
    private final String rawJson;
    private final String prompt;
    private final int[] promptTokenIds;
    private final List<Message> messages;
    private final Map<String, Object> fields;
    private final boolean fastPath;
    // The fast path's values (the library's defaults where not set).
    private final int maxTokens;
    private final float temperature;
    private final float topP;
    private final int topK;
    private final long seed;
    private final int flags;

    static final int FLAG_IGNORE_EOS = 1;
    static final int FLAG_NO_TEXT = 2;
    static final int FLAG_KEEP_SPECIAL_TOKENS = 4;

    private Request(String rawJson) {
        this.rawJson = rawJson;
        this.prompt = null;
        this.promptTokenIds = null;
        this.messages = null;
        this.fields = Map.of();
        this.fastPath = false;
        this.maxTokens = 0;
        this.temperature = 0;
        this.topP = 0;
        this.topK = 0;
        this.seed = 0;
        this.flags = 0;
    }

    private Request(Builder b) {
        this.rawJson = null;
        this.prompt = b.prompt;
        this.promptTokenIds = b.promptTokenIds;
        this.messages = b.messages == null ? null : List.copyOf(b.messages);
        this.fields = new LinkedHashMap<>(b.fields);
        Map<String, Object> f = b.fields;
        boolean fast = promptTokenIds != null && !b.forceJson && !b.hasOtherFields;
        for (String k : f.keySet()) {
            fast &= FAST_FIELDS.contains(k);
        }
        Object s = f.get("seed");
        fast &= s == null || ((Number) s).longValue() >= 0;
        Object t = f.get("temperature");
        Object p = f.get("top_p");
        this.fastPath = fast;
        Object m = f.get("max_tokens");
        this.maxTokens = m == null ? 16 : ((Number) m).intValue();
        this.temperature = t == null ? 1.0f : ((Number) t).floatValue();
        this.topP = p == null ? 1.0f : ((Number) p).floatValue();
        this.topK = f.containsKey("top_k") ? ((Number) f.get("top_k")).intValue() : -1;
        this.seed = s == null ? -1 : ((Number) s).longValue();
        int fl = 0;
        if (Boolean.TRUE.equals(f.get("ignore_eos"))) {
            fl |= FLAG_IGNORE_EOS;
        }
        if (Boolean.FALSE.equals(f.get("detokenize"))) {
            fl |= FLAG_NO_TEXT;
        }
        if (Boolean.FALSE.equals(f.get("skip_special_tokens"))) {
            fl |= FLAG_KEEP_SPECIAL_TOKENS;
        }
        this.flags = fl;
    }

    private static final List<String> FAST_FIELDS = List.of("max_tokens", "temperature", "top_p",
            "top_k", "seed", "ignore_eos", "detokenize", "skip_special_tokens");

    /** A request whose prompt is text (tokenized with the tokenizer's special tokens). */
    public static Builder prompt(String text) {
        Builder b = new Builder();
        b.prompt = Objects.requireNonNull(text, "text");
        return b;
    }

    /** A request whose prompt is token ids (copied). */
    public static Builder tokens(int... promptTokenIds) {
        Builder b = new Builder();
        b.promptTokenIds = Objects.requireNonNull(promptTokenIds, "promptTokenIds").clone();
        return b;
    }

    /** A chat request, rendered with the model's chat template. */
    public static Builder chat(List<Message> messages) {
        Builder b = new Builder();
        b.messages = new ArrayList<>(Objects.requireNonNull(messages, "messages"));
        for (Message m : b.messages) {
            Objects.requireNonNull(m, "message");
        }
        return b;
    }

    /** A chat request, rendered with the model's chat template. */
    public static Builder chat(Message... messages) {
        return chat(List.of(messages));
    }

    /**
     * A request given as a JSON object, passed to {@code llmrt_engine_submit} as is (see
     * {@code include/llmrt.h} for its fields). For fields this binding has no setter for.
     */
    public static Request ofJson(String requestJson) {
        return new Request(Objects.requireNonNull(requestJson, "requestJson"));
    }

    /** True when {@code submit} takes the JSON-free path ({@code llmrt_engine_submit_tokens}). */
    public boolean usesTokenFastPath() {
        return fastPath;
    }

    /** The request as the JSON object {@code llmrt_engine_submit} takes. */
    public String toJson() {
        if (rawJson != null) {
            return rawJson;
        }
        Map<String, Object> all = new LinkedHashMap<>();
        if (prompt != null) {
            all.put("prompt", prompt);
        } else if (promptTokenIds != null) {
            all.put("prompt_token_ids", promptTokenIds);
        } else {
            StringBuilder m = new StringBuilder("[");
            for (Message msg : messages) {
                if (m.length() > 1) {
                    m.append(',');
                }
                m.append("{\"role\":");
                Json.string(m, msg.role()).append(",\"content\":");
                Json.string(m, msg.content()).append('}');
            }
            all.put("messages", new Json.Raw(m.append(']').toString()));
        }
        all.putAll(fields);
        return Json.object(all);
    }

    @Override
    public String toString() {
        return "Request" + toJson();
    }

    int[] promptTokenIds() {
        return promptTokenIds;
    }

    int maxTokens() {
        return maxTokens;
    }

    float temperature() {
        return temperature;
    }

    float topP() {
        return topP;
    }

    int topK() {
        return topK;
    }

    long seed() {
        return seed;
    }

    int flags() {
        return flags;
    }

    /** Sets a request's fields; {@link #build()} makes the immutable {@link Request}. */
    public static final class Builder {
        private String prompt;
        private int[] promptTokenIds;
        private List<Message> messages;
        private final Map<String, Object> fields = new LinkedHashMap<>();
        private boolean forceJson;
        private boolean hasOtherFields;

        private Builder() {
        }

        /** {@code max_tokens}: tokens to generate at most (default 16). */
        public Builder maxTokens(int n) {
            fields.put("max_tokens", n);
            return this;
        }

        /** {@code temperature}: 0 is greedy (default 1). */
        public Builder temperature(double t) {
            fields.put("temperature", t);
            return this;
        }

        /** {@code top_p}: in (0, 1], 1 is off. */
        public Builder topP(double p) {
            fields.put("top_p", p);
            return this;
        }

        /** {@code top_k}: -1 or 0 is off. */
        public Builder topK(int k) {
            fields.put("top_k", k);
            return this;
        }

        /** {@code seed}: the request's own seed (the same seed gives the same tokens). */
        public Builder seed(long seed) {
            fields.put("seed", seed);
            return this;
        }

        /** {@code min_tokens}: tokens to generate before EOS or stop tokens may end it. */
        public Builder minTokens(int n) {
            fields.put("min_tokens", n);
            return this;
        }

        /** {@code ignore_eos}: keep generating after an end-of-sequence token. */
        public Builder ignoreEos(boolean ignore) {
            fields.put("ignore_eos", ignore);
            return this;
        }

        /** {@code stop_token_ids}: tokens that finish the request (with STOP). */
        public Builder stopTokenIds(int... ids) {
            fields.put("stop_token_ids", ids.clone());
            return this;
        }

        /**
         * {@code stop}: strings that finish a sequence (with STOP, the string reported by
         * {@link Event#stopString()}); the text ends before the string unless
         * {@link #includeStopStrInOutput} is set.
         */
        public Builder stop(String... strings) {
            String[] copy = strings.clone();
            for (String s : copy) {
                Objects.requireNonNull(s, "stop string");
            }
            fields.put("stop", copy);
            return this;
        }

        /** {@code include_stop_str_in_output}: keep the stop string at the end of the text. */
        public Builder includeStopStrInOutput(boolean include) {
            fields.put("include_stop_str_in_output", include);
            return this;
        }

        /**
         * {@code n}: how many sequences to return (default 1); each event names its sequence
         * ({@link Event#index()}) and {@link Result#sequences()} has them all.
         */
        public Builder n(int n) {
            fields.put("n", n);
            return this;
        }

        /**
         * {@code best_of}: sample this many sequences and return the {@code n} with the
         * highest cumulative logprob, best first (they come at the request's end).
         */
        public Builder bestOf(int bestOf) {
            fields.put("best_of", bestOf);
            return this;
        }

        /** {@code beam_width}: beam search with this many beams; returns the best {@code n}. */
        public Builder beamWidth(int beamWidth) {
            fields.put("beam_width", beamWidth);
            return this;
        }

        /**
         * {@code length_penalty} of beam search: a beam's score is its cumulative logprob
         * divided by its length to this power (default 1).
         */
        public Builder lengthPenalty(double penalty) {
            fields.put("length_penalty", penalty);
            return this;
        }

        /**
         * {@code logprobs}: give each generated token's logprob and rank with the {@code k}
         * most likely alternatives ({@link Event#logprobs()}); 0 for none of them, -1 for the
         * whole vocabulary.
         */
        public Builder logprobs(int k) {
            fields.put("logprobs", k);
            return this;
        }

        /**
         * {@code prompt_logprobs}: the same for each prompt token after the first, on the
         * request's first event ({@link Event#promptLogprobs()}).
         */
        public Builder promptLogprobs(int k) {
            fields.put("prompt_logprobs", k);
            return this;
        }

        /**
         * {@code logprobs_mode}: what the logprobs are of: "raw_logprobs" (the default),
         * "raw_logits", "processed_logprobs" or "processed_logits" (vLLM's names).
         */
        public Builder logprobsMode(String mode) {
            fields.put("logprobs_mode", Objects.requireNonNull(mode, "mode"));
            return this;
        }

        /**
         * {@code structured_outputs}, as a JSON object's text: {@code {"json": schema}},
         * {@code {"regex": ...}}, {@code {"choice": [...]}}, {@code {"grammar": ...}} or
         * {@code {"json_object": true}}.
         */
        public Builder structuredOutputsJson(String json) {
            fields.put("structured_outputs", new Json.Raw(Objects.requireNonNull(json)));
            return this;
        }

        /**
         * {@code reasoning_parser} (e.g. "deepseek_r1", "qwen3"): the reasoning goes to
         * {@link Event#reasoningText()}, the text keeps the content.
         */
        public Builder reasoningParser(String name) {
            fields.put("reasoning_parser", Objects.requireNonNull(name, "name"));
            return this;
        }

        /**
         * {@code tool_call_parser} (e.g. "hermes", "llama3_json", "mistral", "pythonic"): tool
         * calls go to {@link Event#toolCallsJson()}, the text keeps what is outside them.
         */
        public Builder toolCallParser(String name) {
            fields.put("tool_call_parser", Objects.requireNonNull(name, "name"));
            return this;
        }

        /** {@code skip_special_tokens}: leave special tokens out of the text (default true). */
        public Builder skipSpecialTokens(boolean skip) {
            fields.put("skip_special_tokens", skip);
            return this;
        }

        /** {@code detokenize}: false gives token ids only, events with empty text. */
        public Builder detokenize(boolean detokenize) {
            fields.put("detokenize", detokenize);
            return this;
        }

        /** {@code priority}: lower runs first under the "priority" scheduling policy. */
        public Builder priority(int priority) {
            fields.put("priority", priority);
            return this;
        }

        /** {@code cache_salt}: isolates the request's prefix-cache blocks from others'. */
        public Builder cacheSalt(String salt) {
            fields.put("cache_salt", Objects.requireNonNull(salt, "salt"));
            return this;
        }

        /** {@code add_generation_prompt} of a chat (default true). */
        public Builder addGenerationPrompt(boolean add) {
            fields.put("add_generation_prompt", add);
            return this;
        }

        /** {@code chat_template_kwargs} of a chat, as a JSON object's text. */
        public Builder chatTemplateKwargsJson(String json) {
            fields.put("chat_template_kwargs", new Json.Raw(Objects.requireNonNull(json)));
            return this;
        }

        /** {@code tools} of a chat, as a JSON array's text. */
        public Builder toolsJson(String json) {
            fields.put("tools", new Json.Raw(Objects.requireNonNull(json)));
            return this;
        }

        /**
         * Any other field, written as JSON: a String, Boolean, Number, int[] or String[]. The
         * library rejects fields it does not know (naming them).
         */
        public Builder field(String name, Object value) {
            Objects.requireNonNull(name, "name");
            if (value instanceof int[]) {
                value = ((int[]) value).clone();
            } else if (value instanceof String[]) {
                value = ((String[]) value).clone();
            } else if (value instanceof Float) {
                value = ((Float) value).doubleValue();
            } else if (value instanceof Number && !(value instanceof Double)) {
                value = ((Number) value).longValue();
            }
            Json.value(new StringBuilder(), value); // rejects types it cannot write, now
            fields.put(name, value);
            hasOtherFields = true; // written as JSON, whatever the field
            return this;
        }

        /** Submit as JSON even when the token fast path could serve (the tokens are the same). */
        public Builder forceJson(boolean force) {
            this.forceJson = force;
            return this;
        }

        public Request build() {
            return new Request(this);
        }
    }
}
