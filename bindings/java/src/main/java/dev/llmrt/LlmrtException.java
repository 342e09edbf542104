package dev.llmrt;

import java.nio.charset.StandardCharsets;

/**
 * An error reported by the library: a {@link Status} and the library's message, which names
 * the offending argument or JSON field. Misuse that Java can tell on its own (a null argument,
 * a closed engine) raises the usual {@link NullPointerException} or
 * {@link IllegalStateException} instead.
 */
public class LlmrtException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final Status status;
    private final int code;

    /** An error with this code and message. */
    public LlmrtException(Status status, String message) {
        super(status.cName() + ": " + message);
        this.status = status;
        this.code = status.code();
    }

    /** Called by the JNI glue: the message comes as UTF-8 bytes. */
    LlmrtException(int code, byte[] messageUtf8) {
        super(Status.fromCode(code).cName() + ": "
                + new String(messageUtf8, StandardCharsets.UTF_8));
        this.status = Status.fromCode(code);
        this.code = code;
    }

    /** The status code. */
    public Status status() {
        return status;
    }

    /** The raw value of the code (meaningful when {@link #status()} is UNKNOWN). */
    public int code() {
        return code;
    }
}
