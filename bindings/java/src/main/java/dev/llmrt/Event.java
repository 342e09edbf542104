package dev.llmrt;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Optional;
import java.util.OptionalDouble;
import java.util.OptionalInt;

/**
 * One event of a request: new tokens with their text and, for the request's last event
 * ({@link #isFinal()}), why it finished and its usage. Every request gets any number of
 * token events and exactly one final event, in order. Immutable (a copy of what the C
 * accessors give: nothing refers to the library's event batch), so it may be kept and
 * shared between threads freely.
 *
 * <p>With {@code n} &gt; 1, {@code best_of} or beam search ({@code beam_width}) every event
 * belongs to the sequence {@link #index()}; each sequence ends with an event carrying its
 * own {@link #finishReason()} (a token event, or the final event for the sequence that
 * ends the request last). Events also carry what the request asked for: logprobs, prompt
 * logprobs, the stop string that ended a sequence, reasoning text
 * ({@code reasoning_parser}) and tool-call pieces ({@code tool_call_parser}).
 */
public final class Event {
    /** The kind of an event ({@code llmrt_kind}). */
    public enum Kind {
        /**
         * New tokens (and their text) of a running request; with several sequences, also
         * the end of a sequence that is not the request's last.
         */
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
    private final int index;
    private final String stopString;
    private final Double cumulativeLogprob;
    private final List<TokenLogprob> logprobs;
    private final List<TokenLogprob> promptLogprobs;
    private final String reasoningText;
    private final String toolCallsJson;

    /**
     * Called by the JNI glue; strings come as UTF-8 bytes (null: none), logprob lists packed
     * as {@link #unpackLogprobs} reads them.
     */
    Event(long requestId, long userTag, int kind, int[] tokenIds, byte[] text, int finishReason,
            boolean hasStopToken, int stopTokenId, boolean hasUsage, long promptTokens,
            long completionTokens, long cachedPromptTokens, byte[] errorMessage, int index,
            byte[] stopString, boolean hasCumulativeLogprob, double cumulativeLogprob,
            int[] logprobInts, float[] logprobFloats, int[] promptLogprobInts,
            float[] promptLogprobFloats, byte[] reasoningText, byte[] toolCallsJson) {
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
        this.index = index;
        this.stopString = stopString == null ? null : new String(stopString, StandardCharsets.UTF_8);
        this.cumulativeLogprob = hasCumulativeLogprob ? cumulativeLogprob : null;
        this.logprobs = unpackLogprobs(logprobInts, logprobFloats);
        this.promptLogprobs = unpackLogprobs(promptLogprobInts, promptLogprobFloats);
        this.reasoningText = reasoningText == null ? ""
                : new String(reasoningText, StandardCharsets.UTF_8);
        this.toolCallsJson = toolCallsJson == null ? null
                : new String(toolCallsJson, StandardCharsets.UTF_8);
    }

    /**
     * A logprob list as the glue packs it (null arrays: empty): per entry, ints
     * {@code [token, rank, top count, (top token, top rank) per alternative]} and floats
     * {@code [logprob, top logprob per alternative]}.
     */
    static List<TokenLogprob> unpackLogprobs(int[] ints, float[] floats) {
        if (ints == null || floats == null) {
            return List.of();
        }
        List<TokenLogprob> out = new ArrayList<>();
        int i = 0;
        int f = 0;
        while (i + 3 <= ints.length) {
            int token = ints[i++];
            int rank = ints[i++];
            int count = ints[i++];
            float logprob = floats[f++];
            TopLogprob[] top = new TopLogprob[count];
            for (int k = 0; k < count; k++) {
                int topToken = ints[i++];
                int topRank = ints[i++];
                top[k] = new TopLogprob(topToken, floats[f++], topRank);
            }
            out.add(new TokenLogprob(token, logprob, rank, List.of(top)));
        }
        return Collections.unmodifiableList(out);
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

    /**
     * Which sequence of its request this event belongs to ({@code llmrt_event_index}): 0
     * unless the request asked for {@code n} &gt; 1, {@code best_of} or beam search (then
     * 0..n; best_of and beam search number the returned sequences best first).
     */
    public int index() {
        return index;
    }

    /** The token ids this event adds to its sequence's output (a copy; possibly empty). */
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
     * no text. With a {@code reasoning_parser}, the content only ({@link #reasoningText()});
     * with a {@code tool_call_parser}, what is outside tool calls ({@link #toolCallsJson()}).
     */
    public String text() {
        return text;
    }

    /**
     * With a {@code reasoning_parser}: the reasoning text of this event's tokens
     * ({@code llmrt_event_reasoning_text}); empty otherwise.
     */
    public String reasoningText() {
        return reasoningText;
    }

    /**
     * Why the event's sequence finished, on the event that ends it; {@link FinishReason#NONE}
     * before. With one sequence per request that is the final event.
     */
    public FinishReason finishReason() {
        return finishReason;
    }

    /** For the event that ends a sequence on a token (EOS or a stop token id): that token. */
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

    /**
     * For the event that ends a sequence on a stop string (of the request's {@code stop}):
     * that string ({@code llmrt_event_stop_string}).
     */
    public Optional<String> stopString() {
        return Optional.ofNullable(stopString);
    }

    /**
     * One entry per token of {@link #tokenIds()} when the request asked for
     * {@code logprobs} ({@code llmrt_event_logprob}, {@code llmrt_event_top_logprob}); empty
     * otherwise. Unmodifiable.
     */
    public List<TokenLogprob> logprobs() {
        return logprobs;
    }

    /**
     * The sum of the logprobs of the sequence's tokens so far, when they are computed (the
     * request asked for {@code logprobs}, {@code best_of} &gt; n or beam search):
     * {@code llmrt_event_cumulative_logprob}.
     */
    public OptionalDouble cumulativeLogprob() {
        return cumulativeLogprob == null ? OptionalDouble.empty()
                : OptionalDouble.of(cumulativeLogprob);
    }

    /**
     * With {@code prompt_logprobs}, on the request's first event: one entry per prompt token
     * after the first (entry i is about prompt token i + 1, given the tokens before it);
     * empty otherwise. Unmodifiable.
     */
    public List<TokenLogprob> promptLogprobs() {
        return promptLogprobs;
    }

    /**
     * With a {@code tool_call_parser}: the tool-call pieces found in this event's text, as
     * the JSON array {@code llmrt_event_tool_calls_json} gives:
     * {@code [{"index": 0, "id": "call_...", "name": "f", "arguments": "{\"a\": 1}"}]}. A
     * call's first piece carries its id and name (null in later pieces); its arguments are
     * the concatenation of its pieces'. Empty when the event has none.
     */
    public Optional<String> toolCallsJson() {
        return Optional.ofNullable(toolCallsJson);
    }

    @Override
    public String toString() {
        return "Event{request=" + requestId + ", " + kind + (index != 0 ? ", index=" + index : "")
                + ", tokens=" + Arrays.toString(tokenIds)
                + (finishReason != FinishReason.NONE ? ", finish=" + finishReason : "")
                + (isFinal() ? ", usage=" + usage : "")
                + (stopString != null ? ", stop=" + stopString : "")
                + (errorMessage != null ? ", error=" + errorMessage : "") + "}";
    }
}
