package dev.llmrt;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Optional;
import java.util.OptionalDouble;
import java.util.OptionalInt;

/**
 * The whole outcome of a request: its tokens and text, why it finished and its usage
 * ({@link Engine#submitAsync}, {@link RequestStream#collect()}). Immutable.
 *
 * <p>The token ids, text, finish reason, stop token and string, logprobs, reasoning text and
 * tool calls are those of sequence 0, the only one unless the request asked for
 * {@code n} &gt; 1 (with {@code best_of} or beam search, the best one);
 * {@link #sequences()} has every sequence by index. {@link #finishReason()} is
 * {@link FinishReason#ERROR} whenever the request failed.
 */
public final class Result {
    private final long requestId;
    private final List<Sequence> sequences;
    private final Sequence first;
    private final FinishReason finishReason;
    private final Usage usage;
    private final String errorMessage;
    private final List<TokenLogprob> promptLogprobs;
    private final int eventCount;

    Result(long requestId, List<Sequence> sequences, Event last, List<TokenLogprob> promptLogprobs,
            int eventCount) {
        this.requestId = requestId;
        this.sequences = List.copyOf(sequences);
        this.first = this.sequences.get(0);
        this.finishReason = last.finishReason() == FinishReason.ERROR ? FinishReason.ERROR
                : first.finishReason();
        this.usage = last.usage().orElse(null);
        this.errorMessage = last.errorMessage().orElse(null);
        this.promptLogprobs = List.copyOf(promptLogprobs);
        this.eventCount = eventCount;
    }

    public long requestId() {
        return requestId;
    }

    /** Every generated token id of sequence 0 (a copy). */
    public int[] tokenIds() {
        return first.tokenIds();
    }

    /** The text of sequence 0's tokens. */
    public String text() {
        return first.text();
    }

    /** Why the request (its sequence 0) finished: STOP, LENGTH, ABORT or ERROR. */
    public FinishReason finishReason() {
        return finishReason;
    }

    /** The token that stopped sequence 0, when one did. */
    public OptionalInt stopTokenId() {
        return first.stopTokenId();
    }

    /** The stop string that stopped sequence 0, when one did. */
    public Optional<String> stopString() {
        return first.stopString();
    }

    /** Sequence 0's logprobs, one per token when the request asked for them. */
    public List<TokenLogprob> logprobs() {
        return first.logprobs();
    }

    /** Sequence 0's cumulative logprob, when computed. */
    public OptionalDouble cumulativeLogprob() {
        return first.cumulativeLogprob();
    }

    /** Sequence 0's reasoning text (with a {@code reasoning_parser}); else empty. */
    public String reasoningText() {
        return first.reasoningText();
    }

    /** Sequence 0's tool-call pieces as one JSON array (with a {@code tool_call_parser}). */
    public Optional<String> toolCallsJson() {
        return first.toolCallsJson();
    }

    /** Every sequence, {@code sequences().get(i).index() == i}; at least one. Unmodifiable. */
    public List<Sequence> sequences() {
        return sequences;
    }

    /**
     * With {@code prompt_logprobs}: one entry per prompt token after the first (see
     * {@link Event#promptLogprobs()}); else empty. Unmodifiable.
     */
    public List<TokenLogprob> promptLogprobs() {
        return promptLogprobs;
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
        return "Result{request=" + requestId + ", tokens=" + Arrays.toString(first.tokenIdsUnsafe())
                + ", finish=" + finishReason + ", usage=" + usage
                + (sequences.size() > 1 ? ", sequences=" + sequences : "")
                + (errorMessage != null ? ", error=" + errorMessage : "") + "}";
    }

    /** Gathers a request's events into a result. Not thread-safe (one feeder). */
    static final class Builder {
        private final List<SequenceBuilder> sequences = new ArrayList<>();
        private final List<TokenLogprob> promptLogprobs = new ArrayList<>();
        private int events;

        /** Adds an event; returns the result when it was the final one, else null. */
        Result add(Event e) {
            events++;
            while (sequences.size() <= e.index()) {
                sequences.add(new SequenceBuilder(sequences.size()));
            }
            sequences.get(e.index()).add(e);
            promptLogprobs.addAll(e.promptLogprobs());
            if (!e.isFinal()) {
                return null;
            }
            List<Sequence> built = new ArrayList<>(sequences.size());
            for (SequenceBuilder b : sequences) {
                built.add(b.build());
            }
            return new Result(e.requestId(), built, e, promptLogprobs, events);
        }
    }

    /** Gathers one sequence's events. */
    private static final class SequenceBuilder {
        private final int index;
        private int[] tokens = new int[16];
        private int count;
        private final StringBuilder text = new StringBuilder();
        private final StringBuilder reasoning = new StringBuilder();
        private final List<TokenLogprob> logprobs = new ArrayList<>();
        private Double cumulativeLogprob;
        private StringBuilder toolCalls; // one JSON array, joined from the events'
        private FinishReason finishReason = FinishReason.NONE;
        private Integer stopTokenId;
        private String stopString;

        SequenceBuilder(int index) {
            this.index = index;
        }

        void add(Event e) {
            int[] ids = e.tokenIdsUnsafe();
            if (count + ids.length > tokens.length) {
                tokens = Arrays.copyOf(tokens, Math.max(tokens.length * 2, count + ids.length));
            }
            System.arraycopy(ids, 0, tokens, count, ids.length);
            count += ids.length;
            text.append(e.text());
            reasoning.append(e.reasoningText());
            logprobs.addAll(e.logprobs());
            e.cumulativeLogprob().ifPresent(v -> cumulativeLogprob = v);
            e.toolCallsJson().ifPresent(json -> {
                if (toolCalls == null || toolCalls.length() <= 2) {
                    toolCalls = new StringBuilder(json);
                } else if (json.length() > 2) { // "[a]" + "[b]" -> "[a,b]"
                    toolCalls.setLength(toolCalls.length() - 1);
                    toolCalls.append(',').append(json, 1, json.length());
                }
            });
            if (e.finishReason() != FinishReason.NONE) {
                finishReason = e.finishReason();
                stopTokenId = e.stopTokenId().isPresent() ? e.stopTokenId().getAsInt() : null;
                stopString = e.stopString().orElse(null);
            }
        }

        Sequence build() {
            return new Sequence(index, Arrays.copyOf(tokens, count), text.toString(),
                    reasoning.toString(), finishReason, stopTokenId, stopString, logprobs,
                    cumulativeLogprob, toolCalls == null ? null : toolCalls.toString());
        }
    }
}
