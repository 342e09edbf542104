package dev.llmrt;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Greedy generation through every path of the binding gives the reference tokens of
 * expected.json (transformers' greedy continuation), as the Rust and C APIs do.
 */
@Timeout(value = 300, unit = TimeUnit.SECONDS)
class GreedyReferenceTest {
    private static Engine engine;

    @BeforeAll
    static void start() {
        engine = Fixture.newEngine();
    }

    @AfterAll
    static void stop() {
        engine.close();
    }

    /** Reads a stream to its end, checking that exactly one final event ends it. */
    static Result drain(RequestStream stream) {
        List<Event> events = new ArrayList<>();
        while (stream.hasNext()) {
            events.add(stream.next());
        }
        assertFalse(events.isEmpty());
        long finals = events.stream().filter(Event::isFinal).count();
        assertEquals(1, finals, "exactly one final event");
        assertTrue(events.get(events.size() - 1).isFinal(), "the final event comes last");
        assertTrue(stream.isFinished());
        Result.Builder b = new Result.Builder();
        Result r = null;
        for (Event e : events) {
            assertEquals(stream.requestId(), e.requestId());
            if (!e.isFinal()) {
                assertEquals(FinishReason.NONE, e.finishReason());
                assertFalse(e.usage().isPresent());
            }
            r = b.add(e);
        }
        assertNotNull(r);
        return r;
    }

    private static Request.Builder greedy(Request.Builder b, int n) {
        return b.temperature(0).ignoreEos(true).maxTokens(n);
    }

    @ParameterizedTest
    @ValueSource(strings = {"len4", "len13"})
    void jsonTextPromptGivesTheReferenceTokens(String name) {
        Fixture.Prompt p = Fixture.prompt(name);
        assertTrue(p.addSpecialTokens, "a \"prompt\" request tokenizes with special tokens");
        Request req = greedy(Request.prompt(p.text), p.greedy.length).build();
        assertFalse(req.usesTokenFastPath());
        Result r = drain(engine.submit(req));
        assertArrayEquals(p.greedy, r.tokenIds());
        assertEquals(FinishReason.LENGTH, r.finishReason());
        Usage u = r.usage().orElseThrow();
        assertEquals(p.ids.length, u.promptTokens());
        assertEquals(p.greedy.length, u.completionTokens());
        // The text deltas concatenate to one decode of all the tokens.
        assertEquals(engine.detokenize(p.greedy, true), r.text());
    }

    @ParameterizedTest
    @ValueSource(strings = {"len4", "len13"})
    void jsonTokenPromptGivesTheReferenceTokens(String name) {
        Fixture.Prompt p = Fixture.prompt(name);
        Request req = greedy(Request.tokens(p.ids), p.greedy.length).forceJson(true).build();
        assertFalse(req.usesTokenFastPath());
        assertTrue(req.toJson().contains("\"prompt_token_ids\":["), req.toJson());
        assertArrayEquals(p.greedy, drain(engine.submit(req)).tokenIds());
        // The same request written by hand.
        String ids = java.util.Arrays.stream(p.ids).mapToObj(Integer::toString)
                .collect(Collectors.joining(", "));
        Request raw = Request.ofJson("{\"prompt_token_ids\": [" + ids + "], \"temperature\": 0,"
                + " \"ignore_eos\": true, \"max_tokens\": " + p.greedy.length + "}");
        assertArrayEquals(p.greedy, drain(engine.submit(raw)).tokenIds());
    }

    @ParameterizedTest
    @ValueSource(strings = {"len4", "len13"})
    void tokenFastPathGivesTheReferenceTokens(String name) {
        Fixture.Prompt p = Fixture.prompt(name);
        Request req = greedy(Request.tokens(p.ids), p.greedy.length).build();
        assertTrue(req.usesTokenFastPath());
        Result r = drain(engine.submit(req));
        assertArrayEquals(p.greedy, r.tokenIds());
        assertEquals(FinishReason.LENGTH, r.finishReason());
        assertEquals(p.ids.length, r.usage().orElseThrow().promptTokens());
        assertEquals(engine.detokenize(p.greedy, true), r.text());
        // Without text: the same tokens, empty texts.
        Request noText = greedy(Request.tokens(p.ids), p.greedy.length).detokenize(false)
                .topK(0).seed(7).build();
        assertTrue(noText.usesTokenFastPath());
        Result r2 = drain(engine.submit(noText));
        assertArrayEquals(p.greedy, r2.tokenIds());
        assertEquals("", r2.text());
    }

    @Test
    void chatGivesTheReferenceTokens() {
        Fixture.Prompt p = Fixture.prompt("chat");
        assertNotNull(p.messages);
        Request req = greedy(Request.chat(p.messages), p.greedy.length).build();
        assertArrayEquals(p.greedy, drain(engine.submit(req)).tokenIds());
        // The template renders as transformers did, and tokenizes to the reference ids.
        String text = engine.applyChatTemplate(p.messages, true);
        assertEquals(p.text, text);
        assertArrayEquals(p.ids, engine.tokenize(text, false));
    }

    @Test
    void futureGivesTheReferenceTokens() throws Exception {
        Fixture.Prompt p = Fixture.prompt("len13");
        Result r = engine.submitAsync(greedy(Request.tokens(p.ids), p.greedy.length).build())
                .get(120, TimeUnit.SECONDS);
        assertArrayEquals(p.greedy, r.tokenIds());
        assertEquals(FinishReason.LENGTH, r.finishReason());
        assertEquals(p.greedy.length, r.usage().orElseThrow().completionTokens());
        assertEquals(engine.detokenize(p.greedy, true), r.text());
        assertTrue(r.eventCount() >= 1);
        // And through the JSON path, composed with a dependent stage.
        int[] tokens = engine.submitAsync(greedy(Request.prompt(p.text), p.greedy.length).build())
                .thenApply(Result::tokenIds).get(120, TimeUnit.SECONDS);
        assertArrayEquals(p.greedy, tokens);
    }

    @Test
    void streamApiAndGenerate() {
        Fixture.Prompt p = Fixture.prompt("len4");
        Request req = greedy(Request.tokens(p.ids), 8).build();
        int[] viaStream;
        try (var events = engine.submit(req).stream()) {
            viaStream = events.flatMapToInt(e -> java.util.Arrays.stream(e.tokenIds())).toArray();
        }
        assertArrayEquals(java.util.Arrays.copyOf(p.greedy, 8), viaStream);
        assertArrayEquals(java.util.Arrays.copyOf(p.greedy, 8), engine.generate(req).tokenIds());
    }

    @Test
    void nonAsciiTextCrossesAsUtf8() {
        // Characters outside the BMP (a surrogate pair in Java) and CJK: JNI's modified
        // UTF-8 would garble them; the binding passes real UTF-8 both ways.
        Fixture.Prompt p = Fixture.prompt("len200");
        assertTrue(p.text.contains("\uD83C\uDF0A") && p.text.contains("你好"));
        int[] ids = engine.tokenize(p.text, p.addSpecialTokens);
        assertArrayEquals(p.ids, ids);
        assertEquals(p.text, engine.detokenize(ids, true));
        String s = "caf\u00e9 \uD83D\uDE00 \u4e16\u754c";
        assertEquals(s, engine.detokenize(engine.tokenize(s, false), true));
    }
}
