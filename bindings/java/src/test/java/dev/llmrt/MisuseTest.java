package dev.llmrt;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.function.Executable;

/** Misuse gets an exception with the right status code (and names the field), never a crash. */
@Timeout(value = 120, unit = TimeUnit.SECONDS)
class MisuseTest {
    private static Engine engine;
    private static Fixture.Prompt len4;

    @BeforeAll
    static void start() {
        engine = Fixture.newEngine();
        len4 = Fixture.prompt("len4");
    }

    @AfterAll
    static void stop() {
        engine.close();
    }

    static LlmrtException expect(Status status, String needle, Executable call) {
        LlmrtException e = assertThrows(LlmrtException.class, call);
        assertEquals(status, e.status(), e.getMessage());
        assertEquals(status.code(), e.code());
        assertTrue(e.getMessage().startsWith(status.cName() + ": "), e.getMessage());
        if (needle != null) {
            assertTrue(e.getMessage().contains(needle), "'" + needle + "' in " + e.getMessage());
        }
        return e;
    }

    private static void submitJson(String json) {
        engine.submit(Request.ofJson(json));
    }

    @Test
    void malformedJson() {
        expect(Status.INVALID_JSON, null, () -> submitJson("{\"prompt\": \"x\","));
        expect(Status.INVALID_JSON, null, () -> submitJson(""));
        expect(Status.INVALID_JSON, null, () -> engine.submitAsync(Request.ofJson("{")));
        expect(Status.INVALID_REQUEST, "object", () -> submitJson("[1, 2]"));
    }

    @Test
    void unknownFields() {
        expect(Status.INVALID_REQUEST, "max_tokenz",
                () -> submitJson("{\"prompt\": \"x\", \"max_tokenz\": 3}"));
        expect(Status.INVALID_REQUEST, "bogus_field", () -> engine.submit(
                Request.prompt("x").field("bogus_field", 1).build()));
        expect(Status.INVALID_REQUEST, "tools",
                () -> engine.submit(Request.prompt("x").toolsJson("[]").build()));
    }

    @Test
    void wrongTypesAndMissingPrompt() {
        expect(Status.INVALID_REQUEST, "max_tokens",
                () -> submitJson("{\"prompt\": \"x\", \"max_tokens\": \"3\"}"));
        expect(Status.INVALID_REQUEST, "prompt", () -> submitJson("{\"prompt\": 42}"));
        expect(Status.INVALID_REQUEST, "prompt", () -> submitJson("{\"max_tokens\": 3}"));
        expect(Status.INVALID_REQUEST, "temperature",
                () -> engine.submit(Request.prompt("x").temperature(Double.NaN).build()));
        expect(Status.INVALID_REQUEST, "temperature",
                () -> engine.submit(Request.tokens(len4.ids).temperature(Double.NaN).build()));
    }

    @Test
    void negativeMaxTokens() {
        Request json = Request.prompt("x").maxTokens(-1).build();
        Request fast = Request.tokens(len4.ids).maxTokens(-1).build();
        assertTrue(fast.usesTokenFastPath());
        expect(Status.INVALID_REQUEST, "max_tokens", () -> engine.submit(json));
        expect(Status.INVALID_REQUEST, "max_tokens", () -> engine.submit(fast));
        expect(Status.INVALID_REQUEST, "max_tokens", () -> engine.submitAsync(fast));
        expect(Status.INVALID_REQUEST, "max_tokens",
                () -> engine.submit(Request.tokens(len4.ids).maxTokens(0).build()));
        expect(Status.INVALID_REQUEST, "temperature",
                () -> engine.submit(Request.tokens(len4.ids).temperature(-0.5).build()));
        expect(Status.INVALID_REQUEST, "top_p",
                () -> engine.submit(Request.tokens(len4.ids).topP(0).build()));
    }

    @Test
    void badTokenIds() {
        for (boolean forceJson : new boolean[] {false, true}) {
            expect(Status.INVALID_REQUEST, "99999", () -> engine.submit(
                    Request.tokens(3, 99999).forceJson(forceJson).build()));
            expect(Status.INVALID_REQUEST, "empty", () -> engine.submit(
                    Request.tokens().forceJson(forceJson).build()));
            // A negative id: no id at all (JSON) or one outside the vocabulary (fast path).
            expect(Status.INVALID_REQUEST, null, () -> engine.submit(
                    Request.tokens(3, -1).forceJson(forceJson).build()));
        }
        int[] tooLong = new int[600];
        for (int i = 0; i < tooLong.length; i++) {
            tooLong[i] = 4 + i % 500;
        }
        expect(Status.INVALID_REQUEST, "max_model_len",
                () -> engine.submit(Request.tokens(tooLong).maxTokens(4).build()));
        expect(Status.INVALID_REQUEST, "70000", () -> engine.detokenize(new int[] {3, 70000}, true));
    }

    @Test
    void nulCharactersAndNullArguments() {
        expect(Status.INVALID_ARGUMENT, "request_json",
                () -> submitJson("{\"prompt\": \"x\"}\u0000 trailing"));
        // Inside a JSON string the encoder escapes it: a valid request.
        try (RequestStream s = engine.submit(Request.prompt("a\u0000b").maxTokens(1).ignoreEos(true).build())) {
            assertEquals(1, s.collect().tokenIds().length);
        }
        assertThrows(NullPointerException.class, () -> engine.submit(null));
        assertThrows(NullPointerException.class, () -> engine.submitAsync(null));
        assertThrows(NullPointerException.class, () -> Request.prompt(null));
        assertThrows(NullPointerException.class, () -> engine.tokenize(null, true));
        assertThrows(NullPointerException.class, () -> Engine.create(null));
        assertThrows(IllegalArgumentException.class,
                () -> Request.prompt("x").field("x", new Object()));
    }

    @Test
    void chatTemplateErrors() {
        expect(Status.INVALID_JSON, null, () -> engine.applyChatTemplateJson("{"));
        expect(Status.INVALID_REQUEST, "messages",
                () -> engine.applyChatTemplateJson("{\"add_generation_prompt\": true}"));
        expect(Status.INVALID_REQUEST, "bogus", () -> engine.applyChatTemplateJson(
                "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"bogus\": 1}"));
    }

    @Test
    void badEngineConfigs() {
        String model = Fixture.MODEL.toString();
        expect(Status.INVALID_JSON, null, () -> Engine.create("{\"model\": "));
        expect(Status.INVALID_CONFIG, "model", () -> Engine.create("{}"));
        expect(Status.INVALID_CONFIG, "max_num_seqz",
                () -> Engine.builder(model).option("max_num_seqz", 4).build());
        expect(Status.INVALID_CONFIG, "num_threads",
                () -> Engine.builder(model).option("num_threads", "two").build());
        LlmrtException e = assertThrows(LlmrtException.class,
                () -> Engine.create("{\"model\": \"/nonexistent/llmrt-model\"}"));
        assertTrue(e.status() == Status.INVALID_MODEL || e.status() == Status.IO, e.getMessage());
    }

    @Test
    void statusCodesMatchTheLibrary() {
        for (Status s : Status.values()) {
            if (s != Status.UNKNOWN) {
                assertEquals(s.cName(), Llmrt.errorCodeName(s.code()));
                assertEquals(s, Status.fromCode(s.code()));
            }
        }
        assertEquals("LLMRT_ERROR_UNKNOWN", Llmrt.errorCodeName(9999));
        assertEquals(Status.UNKNOWN, Status.fromCode(9999));
    }
}
