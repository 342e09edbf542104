package dev.llmrt;

import java.util.Arrays;
import java.util.List;
import java.util.Optional;
import java.util.OptionalDouble;
import java.util.OptionalInt;

/**
 * One generated sequence of a request ({@link Result#sequences()}): a request has one
 * unless it asked for {@code n} &gt; 1 (with {@code best_of} or beam search, sequence 0 is
 * the best). Gathered from the events whose {@link Event#index()} is its index. Immutable.
 */
public final class Sequence {
    private final int index;
    private final int[] tokenIds;
    private final String text;
    private final String reasoningText;
    private final FinishReason finishReason;
    private final Integer stopTokenId;
    private final String stopString;
    private final List<TokenLogprob> logprobs;
    private final Double cumulativeLogprob;
    private final String toolCallsJson;

    Sequence(int index, int[] tokenIds, String text, String reasoningText,
            FinishReason finishReason, Integer stopTokenId, String stopString,
            List<TokenLogprob> logprobs, Double cumulativeLogprob, String toolCallsJson) {
        this.index = index;
        this.tokenIds = tokenIds;
        this.text = text;
        this.reasoningText = reasoningText;
        this.finishReason = finishReason;
        this.stopTokenId = stopTokenId;
        this.stopString = stopString;
        this.logprobs = List.copyOf(logprobs);
        this.cumulativeLogprob = cumulativeLogprob;
        this.toolCallsJson = toolCallsJson;
    }

    /** Its index: its place in {@link Result#sequences()}. */
    public int index() {
        return index;
    }

    /** Its token ids (a copy). */
    public int[] tokenIds() {
        return tokenIds.clone();
    }

    int[] tokenIdsUnsafe() {
        return tokenIds;
    }

    /** Its text (the content only, with a {@code reasoning_parser}). */
    public String text() {
        return text;
    }

    /** With a {@code reasoning_parser}: its reasoning text; empty otherwise. */
    public String reasoningText() {
        return reasoningText;
    }

    /** Why it finished ({@link FinishReason#NONE} only if the request failed first). */
    public FinishReason finishReason() {
        return finishReason;
    }

    /** The EOS or stop token that finished it, when one did. */
    public OptionalInt stopTokenId() {
        return stopTokenId == null ? OptionalInt.empty() : OptionalInt.of(stopTokenId);
    }

    /** The stop string that finished it, when one did. */
    public Optional<String> stopString() {
        return Optional.ofNullable(stopString);
    }

    /** One entry per token when the request asked for {@code logprobs}; else empty. */
    public List<TokenLogprob> logprobs() {
        return logprobs;
    }

    /** The sum of its tokens' logprobs, when computed ({@link Event#cumulativeLogprob()}). */
    public OptionalDouble cumulativeLogprob() {
        return cumulativeLogprob == null ? OptionalDouble.empty()
                : OptionalDouble.of(cumulativeLogprob);
    }

    /**
     * With a {@code tool_call_parser}: every tool-call piece of the sequence, in order, as
     * one JSON array (its events' arrays joined; see {@link Event#toolCallsJson()}); empty
     * when there are none.
     */
    public Optional<String> toolCallsJson() {
        return Optional.ofNullable(toolCallsJson);
    }

    @Override
    public String toString() {
        return "Sequence{index=" + index + ", tokens=" + Arrays.toString(tokenIds) + ", finish="
                + finishReason + (stopString != null ? ", stop=" + stopString : "")
                + (cumulativeLogprob != null ? ", cumulativeLogprob=" + cumulativeLogprob : "")
                + "}";
    }
}
