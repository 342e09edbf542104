package dev.llmrt;

/** Why a request finished ({@code llmrt_reason}). */
public enum FinishReason {
    /** Not finished: a token event. */
    NONE,
    /** An end-of-sequence token, a stop token or a stop string. */
    STOP,
    /** {@code max_tokens} or the model's context length reached. */
    LENGTH,
    /** Aborted ({@link RequestStream#abort()}, {@link Engine#abort(long)}, closing the engine). */
    ABORT,
    /** The request failed; the event's error message says why. */
    ERROR;

    static FinishReason fromCode(int code) {
        switch (code) {
            case 0: return NONE;
            case 1: return STOP;
            case 2: return LENGTH;
            case 3: return ABORT;
            default: return ERROR;
        }
    }
}
