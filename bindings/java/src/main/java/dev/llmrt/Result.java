package dev.llmrt;

import java.util.Arrays;
import java.util.Optional;
import java.util.OptionalInt;

/**
 * The whole outcome of a request: every token and the text, why it finished and its usage
 * ({@link Engine#submitAsync}, {@link RequestStream#collect()}). Immutable.
 */
public final class Result {
    private final long requestId;
    private final int[] tokenIds;
    private final String text;
    private final FinishReason finishReason;
    private final OptionalInt stopTokenId;
    private final Usage usage;
    private final String errorMessage;
    private final int eventCount;

    Result(long requestId, int[] tokenIds, String text, Event last, int eventCount) {
        this.requestId = requestId;
        this.tokenIds = tokenIds;
        this.text = text;
        this.finishReason = last.finishReason();
        this.stopTokenId = last.stopTokenId();
        this.usage = last.usage().orElse(null);
        this.errorMessage = last.errorMessage().orElse(null);
        this.eventCount = eventCount;
    }

    public long requestId() {
        return requestId;
    }

    /** Every generated token id (a copy). */
    public int[] tokenIds() {
        return tokenIds.clone();
    }

    /** The text of every generated token. */
    public String text() {
        return text;
    }

    /** Why the request finished: STOP, LENGTH, ABORT or ERROR. */
    public FinishReason finishReason() {
        return finishReason;
    }

    /** The token that stopped the request, when one did. */
    public OptionalInt stopTokenId() {
        return stopTokenId;
    }

    /** The token counts (present unless the library gave none). */
    public Optional<Usage> usage() {
        return Optional.ofNullable(usage);
    }

    /** Why the request failed, when {@link #finishReason()} is ERROR. */
    public Optional<String> errorMessage() {
        return Optional.ofNullable(errorMessage);
    }

    /** How many events the request had (its final event included). */
    public int eventCount() {
        return eventCount;
    }

    @Override
    public String toString() {
        return "Result{request=" + requestId + ", tokens=" + Arrays.toString(tokenIds)
                + ", finish=" + finishReason + ", usage=" + usage
                + (errorMessage != null ? ", error=" + errorMessage : "") + "}";
    }

    /** Gathers a request's events into a result. Not thread-safe (one feeder). */
    static final class Builder {
        private int[] tokens = new int[16];
        private int count;
        private final StringBuilder text = new StringBuilder();
        private int events;

        /** Adds an event; returns the result when it was the final one, else null. */
        Result add(Event e) {
            events++;
            int[] ids = e.tokenIdsUnsafe();
            if (count + ids.length > tokens.length) {
                tokens = Arrays.copyOf(tokens, Math.max(tokens.length * 2, count + ids.length));
            }
            System.arraycopy(ids, 0, tokens, count, ids.length);
            count += ids.length;
            text.append(e.text());
            if (!e.isFinal()) {
                return null;
            }
            return new Result(e.requestId(),
                    Arrays.copyOf(tokens, count), text.toString(), e, events);
        }
    }
}
