package dev.llmrt;

import java.util.Objects;

/**
 * One message of a chat ({@link Request#chat}, {@link Engine#applyChatTemplate}).
 *
 * @param role "system", "user", "assistant", ...
 * @param content the message's text
 */
public record Message(String role, String content) {
    public Message {
        Objects.requireNonNull(role, "role");
        Objects.requireNonNull(content, "content");
    }

    public static Message system(String content) {
        return new Message("system", content);
    }

    public static Message user(String content) {
        return new Message("user", content);
    }

    public static Message assistant(String content) {
        return new Message("assistant", content);
    }
}
