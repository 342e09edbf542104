package dev.llmrt;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Optional;
import java.util.OptionalInt;

/**
 * One event of a request: new tokens with their text and, for the request's last event
 * ({@link #isFinal()}), why it finished and its usage. Every request gets any number of
 * token events and exactly one final event, in order. Immutable.
 */
public final class Event {
    /** The kind of an event ({@code llmrt_kind}). */
    public enum Kind {
        /** New tokens (and their text) of a running request. */
        TOKEN,
        /** The request's last event; it may carry tokens too. */
        FINAL
    }

    private final long requestId;
    private final long userTag;
    private final Kind kind;
    private final int[] tokenIds;
    private final String text;
    private final FinishReason finishReason;
    private final Integer stopTokenId;
    private final Usage usage;
    private final String errorMessage;

    /** Called by the JNI glue; strings come as UTF-8 bytes. */
    Event(long requestId, long userTag, int kind, int[] tokenIds, byte[] text, int finishReason,
            boolean hasStopToken, int stopTokenId, boolean hasUsage, long promptTokens,
            long completionTokens, long cachedPromptTokens, byte[] errorMessage) {
        this.requestId = requestId;
        this.userTag = userTag;
        this.kind = kind == 1 ? Kind.FINAL : Kind.TOKEN;
        this.tokenIds = tokenIds;
        this.text = text.length == 0 ? "" : new String(text, StandardCharsets.UTF_8);
        this.finishReason = FinishReason.fromCode(finishReason);
        this.stopTokenId = hasStopToken ? stopTokenId : null;
        this.usage = hasUsage ? new Usage(promptTokens, completionTokens, cachedPromptTokens) : null;
        this.errorMessage = errorMessage == null ? null
                : new String(errorMessage, StandardCharsets.UTF_8);
    }

    /** The id of the request (as {@link RequestStream#requestId()} gives it). */
    public long requestId() {
        return requestId;
    }

    /** The tag the binding gave the request (its key for dispatching events). */
    long userTag() {
        return userTag;
    }

    public Kind kind() {
        return kind;
    }

    /** True for the request's last event. */
    public boolean isFinal() {
        return kind == Kind.FINAL;
    }

    /** The token ids this event adds to the request's output (a copy; possibly empty). */
    public int[] tokenIds() {
        return tokenIds.clone();
    }

    /** The number of token ids this event adds. */
    public int tokenCount() {
        return tokenIds.length;
    }

    int[] tokenIdsUnsafe() {
        return tokenIds;
    }

    /**
     * The text of this event's tokens: always whole characters; the texts of a request's
     * events concatenate to the decode of all its tokens. Empty when the request asked for
     * no text.
     */
    public String text() {
        return text;
    }

    /** Why the request finished; {@link FinishReason#NONE} for a token event. */
    public FinishReason finishReason() {
        return finishReason;
    }

    /** For a final event that stopped on a token (EOS or a stop token id): that token. */
    public OptionalInt stopTokenId() {
        return stopTokenId == null ? OptionalInt.empty() : OptionalInt.of(stopTokenId);
    }

    /** The request's token counts, on a final event. */
    public Optional<Usage> usage() {
        return Optional.ofNullable(usage);
    }

    /** Why the request failed, on a final event with {@link FinishReason#ERROR}. */
    public Optional<String> errorMessage() {
        return Optional.ofNullable(errorMessage);
    }

    @Override
    public String toString() {
        return "Event{request=" + requestId + ", " + kind + ", tokens=" + Arrays.toString(tokenIds)
                + (isFinal() ? ", finish=" + finishReason + ", usage=" + usage : "")
                + (errorMessage != null ? ", error=" + errorMessage : "") + "}";
    }
}
