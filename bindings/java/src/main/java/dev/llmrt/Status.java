package dev.llmrt;

/**
 * The status codes of the C API ({@code llmrt_status}), with the same fixed values. A
 * {@link LlmrtException} carries one.
 */
public enum Status {
    /** Success (never carried by an exception). */
    OK(0),
    /** A bad argument: a string that is not UTF-8, an unknown flag, an index out of range. */
    INVALID_ARGUMENT(1),
    /** A JSON argument that does not parse. */
    INVALID_JSON(2),
    /**
     * A request that cannot be served as given: unknown field, wrong type, value out of range
     * (e.g. a negative {@code max_tokens}), empty or too long prompt, token id out of range.
     */
    INVALID_REQUEST(3),
    /** An engine configuration that cannot be used: unknown option, wrong type, bad value. */
    INVALID_CONFIG(4),
    /** A model file or folder that cannot be used: missing, truncated, inconsistent. */
    INVALID_MODEL(5),
    /** A well-formed model or feature this build does not support. */
    UNSUPPORTED(6),
    /** An operating-system I/O error. */
    IO(7),
    /** The tokenizer failed on the given input. */
    TOKENIZER(8),
    /** The chat template failed to render. */
    TEMPLATE(9),
    /** The engine is stopped. */
    ENGINE_STOPPED(10),
    /** A bug in llmrt (a panic was caught); the engine refuses further work: close it. */
    INTERNAL(11),
    /** The load-progress listener returned false. */
    CANCELLED(12),
    /** A code this binding does not know (from a newer library). */
    UNKNOWN(-1);

    private final int code;

    Status(int code) {
        this.code = code;
    }

    /** The C API's value of this code ({@code -1} for {@link #UNKNOWN}). */
    public int code() {
        return code;
    }

    /** The C API's name of this code, e.g. {@code "LLMRT_ERROR_INVALID_JSON"}. */
    public String cName() {
        return this == OK ? "LLMRT_OK" : "LLMRT_ERROR_" + name();
    }

    /** The status with this value; {@link #UNKNOWN} for a value that is not a code. */
    public static Status fromCode(int code) {
        for (Status s : values()) {
            if (s.code == code && s != UNKNOWN) {
                return s;
            }
        }
        return UNKNOWN;
    }
}
