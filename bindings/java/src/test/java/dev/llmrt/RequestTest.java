package dev.llmrt;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The request JSON the binding writes (no library needed), and when it takes the fast path. */
class RequestTest {
    @SuppressWarnings("unchecked")
    private static Map<String, Object> parse(Request r) {
        return (Map<String, Object>) new Fixture.Reader(r.toJson()).document();
    }

    @Test
    void writesVllmFieldsAsJson() {
        Request r = Request.prompt("say \"hi\"\\\n\t\u0001 caf\u00e9 \uD83C\uDF0A").maxTokens(5)
                .temperature(0.5).topP(0.9).topK(40).seed(7).minTokens(2).ignoreEos(true)
                .stopTokenIds(2, 0).skipSpecialTokens(false).detokenize(true).priority(-3)
                .cacheSalt("tenant").field("x_extra", 1.5f).build();
        Map<String, Object> m = parse(r);
        assertEquals("say \"hi\"\\\n\t\u0001 caf\u00e9 \uD83C\uDF0A", m.get("prompt"));
        assertEquals(5L, m.get("max_tokens"));
        assertEquals(0.5, m.get("temperature"));
        assertEquals(0.9, m.get("top_p"));
        assertEquals(40L, m.get("top_k"));
        assertEquals(7L, m.get("seed"));
        assertEquals(2L, m.get("min_tokens"));
        assertEquals(true, m.get("ignore_eos"));
        assertEquals(List.of(2L, 0L), m.get("stop_token_ids"));
        assertEquals(false, m.get("skip_special_tokens"));
        assertEquals(-3L, m.get("priority"));
        assertEquals("tenant", m.get("cache_salt"));
        assertEquals(1.5, m.get("x_extra"));
        assertFalse(r.usesTokenFastPath());
    }

    @Test
    void writesSequenceLogprobAndParserFields() {
        Request r = Request.tokens(3, 4).n(2).bestOf(3).beamWidth(2).lengthPenalty(0.5)
                .logprobs(5).promptLogprobs(0).logprobsMode("processed_logprobs")
                .stop("a\"b", "\n").includeStopStrInOutput(true)
                .structuredOutputsJson("{\"choice\": [\"x\", \"y\"]}")
                .reasoningParser("deepseek_r1").toolCallParser("hermes")
                .field("x_list", new String[] {"p", "q"}).build();
        assertFalse(r.usesTokenFastPath());
        Map<String, Object> m = parse(r);
        assertEquals(2L, m.get("n"));
        assertEquals(3L, m.get("best_of"));
        assertEquals(2L, m.get("beam_width"));
        assertEquals(0.5, m.get("length_penalty"));
        assertEquals(5L, m.get("logprobs"));
        assertEquals(0L, m.get("prompt_logprobs"));
        assertEquals("processed_logprobs", m.get("logprobs_mode"));
        assertEquals(List.of("a\"b", "\n"), m.get("stop"));
        assertEquals(true, m.get("include_stop_str_in_output"));
        assertEquals(Map.of("choice", List.of("x", "y")), m.get("structured_outputs"));
        assertEquals("deepseek_r1", m.get("reasoning_parser"));
        assertEquals("hermes", m.get("tool_call_parser"));
        assertEquals(List.of("p", "q"), m.get("x_list"));
        assertFalse(Request.tokens(3).logprobs(1).build().usesTokenFastPath());
        assertFalse(Request.tokens(3).n(2).build().usesTokenFastPath());
    }

    @Test
    void writesChats() {
        Request r = Request.chat(Message.system("Be brief."), Message.user("Q?"))
                .addGenerationPrompt(false).chatTemplateKwargsJson("{\"k\": 1}").build();
        Map<String, Object> m = parse(r);
        assertEquals(List.of(Map.of("role", "system", "content", "Be brief."),
                Map.of("role", "user", "content", "Q?")), m.get("messages"));
        assertEquals(false, m.get("add_generation_prompt"));
        assertEquals(Map.of("k", 1L), m.get("chat_template_kwargs"));
    }

    @Test
    void tokenPromptsTakeTheFastPathWhenTheyCan() {
        assertTrue(Request.tokens(3, 4).build().usesTokenFastPath());
        assertTrue(Request.tokens(3, 4).maxTokens(3).temperature(0).topP(1).topK(-1).seed(1)
                .ignoreEos(true).detokenize(false).skipSpecialTokens(false).build()
                .usesTokenFastPath());
        assertFalse(Request.tokens(3).forceJson(true).build().usesTokenFastPath());
        assertFalse(Request.tokens(3).stopTokenIds(2).build().usesTokenFastPath());
        assertFalse(Request.tokens(3).minTokens(1).build().usesTokenFastPath());
        assertFalse(Request.tokens(3).priority(1).build().usesTokenFastPath());
        assertFalse(Request.tokens(3).seed(-5).build().usesTokenFastPath());
        assertFalse(Request.tokens(3).field("max_tokens", 2).build().usesTokenFastPath());
        assertFalse(Request.prompt("x").build().usesTokenFastPath());
        assertEquals(List.of(3L, -1L), parse(Request.tokens(3, -1).build()).get("prompt_token_ids"));
        Request raw = Request.ofJson("{\"prompt\": \"x\"}");
        assertEquals("{\"prompt\": \"x\"}", raw.toJson());
        assertFalse(raw.usesTokenFastPath());
    }

    @Test
    void engineConfigJson() {
        String json = Engine.builder("/m/\"q\"").numThreads(2).maxModelLen(256).maxNumSeqs(8)
                .option("enable_prefix_caching", false).option("scheduling_policy", "fcfs")
                .toJson();
        assertEquals(Map.of("model", "/m/\"q\"", "num_threads", 2L, "max_model_len", 256L,
                "max_num_seqs", 8L, "enable_prefix_caching", false, "scheduling_policy", "fcfs"),
                new Fixture.Reader(json).document());
    }
}
