package dev.llmrt;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Per-event data beyond tokens and text: several sequences per request (n, best_of, beam
 * search), logprobs and prompt logprobs (against transformers' reference values in
 * expected.json), stop strings, reasoning text and tool calls.
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class SequencesAndLogprobsTest {
    private static Engine engine;

    @BeforeAll
    static void start() {
        engine = Fixture.newEngine();
    }

    @AfterAll
    static void stop() {
        engine.close();
    }

    private static Request.Builder greedy(Request.Builder b, int n) {
        return b.temperature(0).ignoreEos(true).maxTokens(n);
    }

    /** Every event of a request, checking that exactly one final event ends it. */
    private static List<Event> events(Request req) {
        List<Event> events = new ArrayList<>();
        try (RequestStream s = engine.submit(req)) {
            while (s.hasNext()) {
                Event e = s.next();
                assertEquals(s.requestId(), e.requestId());
                events.add(e);
            }
        }
        assertFalse(events.isEmpty());
        assertEquals(1, events.stream().filter(Event::isFinal).count());
        assertTrue(events.get(events.size() - 1).isFinal());
        return events;
    }

    @Test
    void nTwoGreedyGivesTheReferenceTwiceWithPerSequenceEnds() {
        Fixture.Prompt p = Fixture.prompt("len4");
        Request req = greedy(Request.tokens(p.ids), p.greedy.length).n(2).build();
        List<Event> events = events(req);
        int[][] tokens = {new int[0], new int[0]};
        int[] ends = new int[2];
        for (Event e : events) {
            int i = e.index();
            assertTrue(i == 0 || i == 1, "index " + i);
            assertEquals(0, ends[i], "an event after its sequence ended");
            int[] more = e.tokenIds();
            int[] all = Arrays.copyOf(tokens[i], tokens[i].length + more.length);
            System.arraycopy(more, 0, all, tokens[i].length, more.length);
            tokens[i] = all;
            if (e.finishReason() != FinishReason.NONE) {
                assertEquals(FinishReason.LENGTH, e.finishReason());
                ends[i]++;
            }
            assertEquals(e.isFinal(), e.usage().isPresent());
            assertTrue(e.logprobs().isEmpty());
            assertFalse(e.cumulativeLogprob().isPresent());
        }
        assertArrayEquals(new int[] {1, 1}, ends);
        assertArrayEquals(p.greedy, tokens[0]);
        assertArrayEquals(p.greedy, tokens[1]);
        assertEquals(2L * p.greedy.length,
                events.get(events.size() - 1).usage().orElseThrow().completionTokens());

        // Gathered into a Result: one Sequence per index, the top level is sequence 0's.
        Result r = engine.generate(req);
        assertEquals(2, r.sequences().size());
        String text = engine.detokenize(p.greedy, true);
        for (int i = 0; i < 2; i++) {
            Sequence s = r.sequences().get(i);
            assertEquals(i, s.index());
            assertArrayEquals(p.greedy, s.tokenIds());
            assertEquals(text, s.text());
            assertEquals(FinishReason.LENGTH, s.finishReason());
        }
        assertArrayEquals(p.greedy, r.tokenIds());
        assertEquals(text, r.text());
        assertEquals(FinishReason.LENGTH, r.finishReason());
        assertEquals(2L * p.greedy.length, r.usage().orElseThrow().completionTokens());
    }

    @Test
    void bestOfAndBeamSearchReportCumulativeLogprobs() throws Exception {
        Fixture.Prompt p = Fixture.prompt("len4");
        Result best = engine.submitAsync(greedy(Request.tokens(p.ids), 8).n(2).bestOf(3).build())
                .get(120, TimeUnit.SECONDS);
        assertEquals(2, best.sequences().size());
        for (Sequence s : best.sequences()) {
            assertArrayEquals(Arrays.copyOf(p.greedy, 8), s.tokenIds());
            assertTrue(s.cumulativeLogprob().orElseThrow() < 0);
            assertTrue(s.logprobs().isEmpty()); // not asked for
        }
        Result beam = engine.generate(Request.tokens(p.ids).ignoreEos(true).maxTokens(6).n(2)
                .beamWidth(2).lengthPenalty(1.0).build());
        assertEquals(2, beam.sequences().size());
        for (Sequence s : beam.sequences()) {
            assertEquals(6, s.tokenIds().length);
            assertEquals(FinishReason.LENGTH, s.finishReason());
        }
        assertTrue(beam.sequences().get(0).cumulativeLogprob().orElseThrow()
                >= beam.sequences().get(1).cumulativeLogprob().orElseThrow());
    }

    @Test
    void greedyLogprobsAreRankOneAndMatchTheReference() {
        Fixture.Prompt p = Fixture.prompt("len13");
        List<Event> events = events(greedy(Request.tokens(p.ids), p.greedy.length)
                .logprobs(5).promptLogprobs(2).build());
        List<TokenLogprob> lps = new ArrayList<>();
        List<Integer> tokens = new ArrayList<>();
        double sum = 0;
        for (Event e : events) {
            int[] ids = e.tokenIds();
            assertEquals(ids.length, e.logprobs().size());
            for (int k = 0; k < ids.length; k++) {
                TokenLogprob lp = e.logprobs().get(k);
                assertEquals(ids[k], lp.tokenId());
                sum += lp.logprob();
                tokens.add(ids[k]);
                lps.add(lp);
            }
            if (ids.length > 0) {
                assertEquals(sum, e.cumulativeLogprob().orElseThrow(), 1e-4);
            }
            if (e != events.get(0)) {
                assertTrue(e.promptLogprobs().isEmpty());
            }
        }
        assertArrayEquals(p.greedy, tokens.stream().mapToInt(Integer::intValue).toArray());
        for (int t = 0; t < lps.size(); t++) {
            TokenLogprob lp = lps.get(t);
            String at = "greedy step " + t;
            assertEquals(1, lp.rank(), at);
            assertEquals(5, lp.top().size(), at);
            assertEquals(lp.tokenId(), lp.top().get(0).tokenId(), at);
            assertEquals(lp.logprob(), lp.top().get(0).logprob(), at);
            assertEquals(p.greedyTopIds[t][0], lp.tokenId(), at);
            for (int k = 0; k < 5; k++) {
                assertEquals(k + 1, lp.top().get(k).rank(), at);
                assertEquals(p.greedyTopLogprobs[t][k], lp.top().get(k).logprob(), 1e-3, at);
            }
        }
        // Prompt logprobs on the first event: one per prompt token after the first.
        List<TokenLogprob> plp = events.get(0).promptLogprobs();
        assertEquals(p.ids.length - 1, plp.size());
        for (int i = 0; i < plp.size(); i++) {
            TokenLogprob e = plp.get(i);
            String at = "prompt entry " + i;
            assertEquals(p.ids[i + 1], e.tokenId(), at);
            assertTrue(e.rank() >= 1, at);
            assertTrue(e.logprob() <= 0, at);
            assertEquals(2, e.top().size(), at);
            // After reading ids[0..=i]: the reference's top tokens.
            assertEquals(p.promptTopIds[i][0], e.top().get(0).tokenId(), at);
            assertEquals(p.promptTopLogprobs[i][0], e.top().get(0).logprob(), 1e-3, at);
            assertEquals(p.promptTopLogprobs[i][1], e.top().get(1).logprob(), 1e-3, at);
        }

        // A Result gathers the same; logprobs 0 gives no alternatives.
        Result r = engine.generate(greedy(Request.tokens(p.ids), p.greedy.length)
                .logprobs(0).promptLogprobs(0).build());
        assertArrayEquals(p.greedy, r.tokenIds());
        assertEquals(p.greedy.length, r.logprobs().size());
        double total = 0;
        for (int t = 0; t < p.greedy.length; t++) {
            TokenLogprob lp = r.logprobs().get(t);
            assertEquals(1, lp.rank());
            assertTrue(lp.top().isEmpty());
            assertEquals(lps.get(t).logprob(), lp.logprob(), 1e-5);
            total += lp.logprob();
        }
        assertEquals(total, r.cumulativeLogprob().orElseThrow(), 1e-4);
        assertEquals(p.ids.length - 1, r.promptLogprobs().size());
        for (int i = 0; i < p.ids.length - 1; i++) {
            assertEquals(p.ids[i + 1], r.promptLogprobs().get(i).tokenId());
            assertEquals(plp.get(i).logprob(), r.promptLogprobs().get(i).logprob(), 1e-5);
        }

        // n = 2 with logprobs: both sequences' tokens are rank 1, each with its own sum.
        Result two = engine.generate(greedy(Request.tokens(p.ids), 6).n(2).logprobs(1).build());
        Set<Integer> seen = new HashSet<>();
        for (Sequence s : two.sequences()) {
            seen.add(s.index());
            assertEquals(6, s.logprobs().size());
            double seqSum = 0;
            for (TokenLogprob lp : s.logprobs()) {
                assertEquals(1, lp.rank());
                assertEquals(lp.tokenId(), lp.top().get(0).tokenId());
                seqSum += lp.logprob();
            }
            assertEquals(seqSum, s.cumulativeLogprob().orElseThrow(), 1e-4);
        }
        assertEquals(Set.of(0, 1), seen);
    }

    @Test
    void stopStringIsReported() {
        Fixture.Prompt p = Fixture.prompt("len4");
        String full = engine.detokenize(p.greedy, true);
        // A two-letter stop string from the reference continuation, past its start.
        int at = 2;
        while (at + 1 < full.length()
                && !(Character.isLetter(full.charAt(at)) && Character.isLetter(full.charAt(at + 1)))) {
            at++;
        }
        assertTrue(at + 1 < full.length(), "no letters in \"" + full + "\"");
        String stop = full.substring(at, at + 2);
        Request req = greedy(Request.tokens(p.ids), p.greedy.length).stop(stop).build();
        Result r = engine.generate(req);
        assertEquals(FinishReason.STOP, r.finishReason());
        assertEquals(stop, r.stopString().orElseThrow());
        assertEquals(stop, r.sequences().get(0).stopString().orElseThrow());
        assertFalse(r.stopTokenId().isPresent());
        assertEquals(full.substring(0, full.indexOf(stop)), r.text());
        int[] got = r.tokenIds();
        assertTrue(got.length <= p.greedy.length);
        assertArrayEquals(Arrays.copyOf(p.greedy, got.length), got);
        // The event that carries it is the final one.
        List<Event> events = events(req);
        for (Event e : events.subList(0, events.size() - 1)) {
            assertFalse(e.stopString().isPresent());
        }
        assertEquals(stop, events.get(events.size() - 1).stopString().orElseThrow());
        // include_stop_str_in_output keeps it.
        Result kept = engine.generate(greedy(Request.tokens(p.ids), p.greedy.length).stop(stop)
                .includeStopStrInOutput(true).build());
        assertEquals(full.substring(0, full.indexOf(stop) + stop.length()), kept.text());
    }

    @Test
    @SuppressWarnings("unchecked")
    void reasoningAndToolCallParsers() {
        Fixture.Prompt p = Fixture.prompt("len4");
        String full = engine.detokenize(p.greedy, true);
        assertFalse(full.contains("</think>"));
        // deepseek_r1 starts in reasoning: with no "</think>", all the text is reasoning.
        Result r = engine.generate(greedy(Request.tokens(p.ids), p.greedy.length)
                .reasoningParser("deepseek_r1").build());
        assertArrayEquals(p.greedy, r.tokenIds());
        assertEquals(full, r.reasoningText());
        assertEquals("", r.text());

        // A tool call forced by a structured output, parsed by the hermes parser.
        String call = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
        Request req = Request.tokens(p.ids).temperature(0).maxTokens(100).toolCallParser("hermes")
                .structuredOutputsJson("{\"choice\": [" + Json.string(new StringBuilder(), call)
                        + "]}")
                .build();
        StringBuilder text = new StringBuilder();
        StringBuilder arguments = new StringBuilder();
        String name = null;
        for (Event e : events(req)) {
            text.append(e.text());
            if (e.toolCallsJson().isEmpty()) {
                continue;
            }
            for (Object o : (List<Object>) new Fixture.Reader(e.toolCallsJson().get()).document()) {
                Map<String, Object> piece = (Map<String, Object>) o;
                assertEquals(0L, piece.get("index"));
                if (piece.get("name") != null) {
                    assertEquals(null, name, "one first piece");
                    name = (String) piece.get("name");
                    assertTrue(((String) piece.get("id")).startsWith("call_"));
                }
                arguments.append((String) piece.get("arguments"));
            }
        }
        assertFalse(text.toString().contains("<tool_call>"), text.toString());
        assertEquals("f", name);
        assertEquals("{\"a\":1}", arguments.toString());
        // A Result joins a sequence's pieces into one JSON array.
        Result joined = engine.generate(req);
        List<Object> pieces = (List<Object>) new Fixture.Reader(joined.toolCallsJson().orElseThrow())
                .document();
        StringBuilder args = new StringBuilder();
        for (Object o : pieces) {
            args.append((String) ((Map<String, Object>) o).get("arguments"));
        }
        assertEquals("{\"a\":1}", args.toString());
        assertNotEquals(0, pieces.size());
    }
}
