/*
 * Tests of the C API against the real shared library and the tiny llama fixture model.
 *
 * Environment: LLMRT_TEST_MODEL (the fixture folder, required), LLMRT_TEST_STRESS_N
 * (requests in the stress test, default 1000), LLMRT_TEST_ONLY (run only the tests whose
 * name contains this). Reference token ids come from expected.h, generated at build time
 * from the fixture's expected.json (transformers' outputs).
 *
 * Prints one line per test and closes with "N passed, M failed".
 */
#define _POSIX_C_SOURCE 200809L

#include "llmrt.h"
#include "expected.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ harness -- */

static int test_failed;
static const char *model_dir;

#define FAIL(...)                                                    \
    do {                                                             \
        fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);            \
        fprintf(stderr, __VA_ARGS__);                                \
        fputc('\n', stderr);                                         \
        test_failed = 1;                                             \
    } while (0)

#define CHECK(cond)                                                  \
    do {                                                             \
        if (!(cond)) {                                               \
            FAIL("check failed: %s", #cond);                         \
            return;                                                  \
        }                                                            \
    } while (0)

/* Evaluates `call` (an llmrt_error*), checks its code (and that the message contains
 * `needle` when not NULL) and frees it. */
static int expect_code(llmrt_error *err, int want, const char *needle, const char *what,
                       int line) {
    int got = llmrt_error_code(err);
    const char *msg = llmrt_error_message(err);
    int ok = got == want && (needle == NULL || strstr(msg, needle) != NULL);
    if (!ok) {
        fprintf(stderr, "  %s:%d: %s: want %s%s%s%s, got %s: \"%s\"\n", __FILE__, line, what,
                llmrt_error_code_name(want), needle ? " mentioning \"" : "",
                needle ? needle : "", needle ? "\"" : "", llmrt_error_code_name(got), msg);
        test_failed = 1;
    }
    if (want != LLMRT_OK && err == NULL) ok = 0;
    llmrt_error_free(err);
    return ok;
}

#define EXPECT_ERR(call, code, needle)                                         \
    do {                                                                       \
        if (!expect_code((call), (code), (needle), #call, __LINE__)) return;   \
    } while (0)

#define OK(call) EXPECT_ERR(call, LLMRT_OK, NULL)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static llmrt_engine *new_engine_with(const char *extra) {
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"num_threads\": 2%s%s}", model_dir,
             extra ? ", " : "", extra ? extra : "");
    llmrt_engine *engine = NULL;
    llmrt_error *err = llmrt_engine_new(cfg, NULL, NULL, &engine);
    if (err) {
        FAIL("llmrt_engine_new: %s", llmrt_error_message(err));
        llmrt_error_free(err);
        return NULL;
    }
    return engine;
}

static llmrt_engine *new_engine(void) { return new_engine_with(NULL); }

/* The outcome of one request, collected by run_request. */
typedef struct {
    uint32_t tokens[1024];
    size_t num_tokens;
    char text[8192];
    size_t text_len;
    int num_final;
    int events_after_final;
    int finish_reason;
    uint64_t user_tag;
    uint64_t usage[3];
    int has_usage;
    char error[512];
} outcome;

/* Polls until request `id` has its final event; other requests' events fail the test. */
static int collect(llmrt_engine *engine, uint64_t id, outcome *out) {
    memset(out, 0, sizeof *out);
    double deadline = now_s() + 120;
    while (out->num_final == 0) {
        if (now_s() > deadline) {
            FAIL("request %llu did not finish", (unsigned long long)id);
            return 0;
        }
        llmrt_events *ev = NULL;
        llmrt_error *err = llmrt_engine_poll(engine, 16, 100, &ev);
        if (err) {
            FAIL("poll: %s", llmrt_error_message(err));
            llmrt_error_free(err);
            return 0;
        }
        for (size_t i = 0; i < llmrt_events_count(ev); i++) {
            if (llmrt_event_request_id(ev, i) != id) {
                FAIL("event of unexpected request %llu",
                     (unsigned long long)llmrt_event_request_id(ev, i));
                continue;
            }
            if (out->num_final) out->events_after_final++;
            size_t n = 0, len = 0;
            const uint32_t *ids = llmrt_event_token_ids(ev, i, &n);
            if (n && !ids) FAIL("token ids NULL with count %zu", n);
            for (size_t k = 0; k < n && out->num_tokens < 1024; k++)
                out->tokens[out->num_tokens++] = ids[k];
            const char *text = llmrt_event_text(ev, i, &len);
            if (!text || strlen(text) != len) FAIL("text NULL or length mismatch");
            if (out->text_len + len < sizeof out->text) {
                memcpy(out->text + out->text_len, text, len);
                out->text_len += len;
                out->text[out->text_len] = 0;
            }
            out->user_tag = llmrt_event_user_tag(ev, i);
            if (llmrt_event_logprobs_count(ev, i) != 0) FAIL("logprobs without asking");
            if (llmrt_event_kind(ev, i) == LLMRT_EVENT_FINAL) {
                out->num_final++;
                out->finish_reason = llmrt_event_finish_reason(ev, i);
                out->has_usage = llmrt_event_usage(ev, i, &out->usage[0], &out->usage[1],
                                                   &out->usage[2]);
                const char *m = llmrt_event_error_message(ev, i);
                if (m) snprintf(out->error, sizeof out->error, "%s", m);
            } else if (llmrt_event_finish_reason(ev, i) != LLMRT_FINISH_NONE ||
                       llmrt_event_usage(ev, i, NULL, NULL, NULL)) {
                FAIL("a token event with a finish reason or usage");
            }
        }
        llmrt_events_free(ev);
    }
    return !test_failed;
}

static int same_ids(const uint32_t *a, size_t na, const uint32_t *b, size_t nb) {
    if (na != nb) {
        fprintf(stderr, "  length %zu != %zu\n", na, nb);
        return 0;
    }
    for (size_t i = 0; i < na; i++)
        if (a[i] != b[i]) {
            fprintf(stderr, "  token %zu: %u != %u\n", i, a[i], b[i]);
            return 0;
        }
    return 1;
}

static void ids_json(char *buf, size_t cap, const uint32_t *ids, size_t n) {
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (size_t i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%u", i ? ", " : "", ids[i]);
    if (at < cap) snprintf(buf + at, cap - at, "]");
}

/* -------------------------------------------------------------------- tests -- */

static void test_version_and_capabilities(void) {
    CHECK(llmrt_abi_version() == LLMRT_ABI_VERSION);
    CHECK(llmrt_version() != NULL && strlen(llmrt_version()) > 0);
    const char *caps = llmrt_capabilities();
    CHECK(caps != NULL);
    CHECK(strstr(caps, "\"LlamaForCausalLM\"") != NULL);
    CHECK(strstr(caps, "\"Qwen2MoeForCausalLM\"") != NULL);
    CHECK(strstr(caps, "\"gguf\"") != NULL && strstr(caps, "\"safetensors\"") != NULL);
    CHECK(strstr(caps, "\"features\"") != NULL);
    CHECK(caps == llmrt_capabilities()); /* static */
}

static void test_error_code_names(void) {
    static const struct { int code; const char *name; } names[] = {
        {LLMRT_OK, "LLMRT_OK"},
        {LLMRT_ERROR_INVALID_ARGUMENT, "LLMRT_ERROR_INVALID_ARGUMENT"},
        {LLMRT_ERROR_INVALID_JSON, "LLMRT_ERROR_INVALID_JSON"},
        {LLMRT_ERROR_INVALID_REQUEST, "LLMRT_ERROR_INVALID_REQUEST"},
        {LLMRT_ERROR_INVALID_CONFIG, "LLMRT_ERROR_INVALID_CONFIG"},
        {LLMRT_ERROR_INVALID_MODEL, "LLMRT_ERROR_INVALID_MODEL"},
        {LLMRT_ERROR_UNSUPPORTED, "LLMRT_ERROR_UNSUPPORTED"},
        {LLMRT_ERROR_IO, "LLMRT_ERROR_IO"},
        {LLMRT_ERROR_TOKENIZER, "LLMRT_ERROR_TOKENIZER"},
        {LLMRT_ERROR_TEMPLATE, "LLMRT_ERROR_TEMPLATE"},
        {LLMRT_ERROR_ENGINE_STOPPED, "LLMRT_ERROR_ENGINE_STOPPED"},
        {LLMRT_ERROR_INTERNAL, "LLMRT_ERROR_INTERNAL"},
        {LLMRT_ERROR_CANCELLED, "LLMRT_ERROR_CANCELLED"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECK(strcmp(llmrt_error_code_name(names[i].code), names[i].name) == 0);
    CHECK(strcmp(llmrt_error_code_name(-1), "LLMRT_ERROR_UNKNOWN") == 0);
    CHECK(strcmp(llmrt_error_code_name(9999), "LLMRT_ERROR_UNKNOWN") == 0);
    /* NULL error: success. */
    CHECK(llmrt_error_code(NULL) == LLMRT_OK);
    CHECK(strcmp(llmrt_error_message(NULL), "") == 0);
}

static void test_free_null_is_a_noop(void) {
    llmrt_error_free(NULL);
    llmrt_events_free(NULL);
    llmrt_engine_free(NULL);
    llmrt_string_free(NULL);
    llmrt_tokens_free(NULL);
    /* Accessors on a NULL batch give the empty values. */
    size_t n = 7, len = 7;
    CHECK(llmrt_events_count(NULL) == 0);
    CHECK(llmrt_event_request_id(NULL, 0) == 0);
    CHECK(llmrt_event_token_ids(NULL, 0, &n) == NULL && n == 0);
    CHECK(strcmp(llmrt_event_text(NULL, 0, &len), "") == 0 && len == 0);
    CHECK(llmrt_event_finish_reason(NULL, 0) == LLMRT_FINISH_NONE);
    CHECK(!llmrt_event_usage(NULL, 0, NULL, NULL, NULL));
    CHECK(llmrt_event_error_message(NULL, 0) == NULL);
    CHECK(!llmrt_event_logprob(NULL, 0, 0, NULL, NULL, NULL));
    CHECK(llmrt_event_index(NULL, 0) == 0);
    CHECK(llmrt_event_stop_string(NULL, 0) == NULL);
    CHECK(llmrt_event_reasoning_text(NULL, 0) == NULL);
    CHECK(llmrt_event_tool_calls_json(NULL, 0) == NULL);
    CHECK(!llmrt_event_cumulative_logprob(NULL, 0, NULL));
    CHECK(llmrt_event_logprobs_count(NULL, 0) == 0);
    CHECK(llmrt_event_top_logprobs_count(NULL, 0, 0) == 0);
    CHECK(!llmrt_event_top_logprob(NULL, 0, 0, 0, NULL, NULL, NULL));
    CHECK(llmrt_event_prompt_logprobs_count(NULL, 0) == 0);
    CHECK(!llmrt_event_prompt_logprob(NULL, 0, 0, NULL, NULL, NULL));
    CHECK(llmrt_event_prompt_top_logprobs_count(NULL, 0, 0) == 0);
    CHECK(!llmrt_event_prompt_top_logprob(NULL, 0, 0, 0, NULL, NULL, NULL));
}

static void test_engine_new_rejects_bad_config(void) {
    llmrt_engine *sentinel = (llmrt_engine *)&test_failed;
    llmrt_engine *engine = sentinel;
    char cfg[4096];
    EXPECT_ERR(llmrt_engine_new(NULL, NULL, NULL, &engine), LLMRT_ERROR_INVALID_ARGUMENT,
               "config_json");
    EXPECT_ERR(llmrt_engine_new("{}", NULL, NULL, NULL), LLMRT_ERROR_INVALID_ARGUMENT,
               "engine");
    EXPECT_ERR(llmrt_engine_new("{\"model\": \"\xff\xfe\"}", NULL, NULL, &engine),
               LLMRT_ERROR_INVALID_ARGUMENT, "UTF-8");
    EXPECT_ERR(llmrt_engine_new("{\"model\": ", NULL, NULL, &engine),
               LLMRT_ERROR_INVALID_JSON, NULL);
    EXPECT_ERR(llmrt_engine_new("[1]", NULL, NULL, &engine), LLMRT_ERROR_INVALID_CONFIG,
               NULL);
    EXPECT_ERR(llmrt_engine_new("{}", NULL, NULL, &engine), LLMRT_ERROR_INVALID_CONFIG,
               "model");
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"max_num_seqz\": 4}", model_dir);
    EXPECT_ERR(llmrt_engine_new(cfg, NULL, NULL, &engine), LLMRT_ERROR_INVALID_CONFIG,
               "max_num_seqz");
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"max_num_seqs\": \"4\"}", model_dir);
    EXPECT_ERR(llmrt_engine_new(cfg, NULL, NULL, &engine), LLMRT_ERROR_INVALID_CONFIG,
               "max_num_seqs");
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"block_size\": 0}", model_dir);
    EXPECT_ERR(llmrt_engine_new(cfg, NULL, NULL, &engine), LLMRT_ERROR_INVALID_CONFIG,
               "block_size");
    EXPECT_ERR(llmrt_engine_new("{\"model\": \"/nonexistent/llmrt-model\"}", NULL, NULL,
                                &engine),
               LLMRT_ERROR_INVALID_MODEL, "nonexistent");
    CHECK(engine == sentinel); /* out-parameters are written only on success */
}

typedef struct {
    int calls;
    float last;
    int monotonic;
    int cancel_at;
} progress_state;

static bool on_progress(void *user_data, float progress, const char *stage) {
    progress_state *st = (progress_state *)user_data;
    if (progress < st->last || !stage || !*stage) st->monotonic = 0;
    st->last = progress;
    st->calls++;
    return st->calls != st->cancel_at;
}

static void test_progress_callback_and_cancel(void) {
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "{\"model\": \"%s\", \"num_threads\": 1}", model_dir);
    progress_state st = {0, 0.0f, 1, -1};
    llmrt_engine *engine = NULL;
    OK(llmrt_engine_new(cfg, on_progress, &st, &engine));
    CHECK(engine != NULL);
    llmrt_engine_free(engine);
    CHECK(st.calls >= 2 && st.monotonic && st.last == 1.0f);
    for (int at = 1; at <= st.calls; at++) {
        progress_state c = {0, 0.0f, 1, at};
        engine = NULL;
        EXPECT_ERR(llmrt_engine_new(cfg, on_progress, &c, &engine), LLMRT_ERROR_CANCELLED,
                   "cancel");
        CHECK(engine == NULL && c.calls == at);
    }
}

static void test_greedy_submit_tokens_matches_reference(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    uint64_t id = 0;
    outcome out;
    OK(llmrt_engine_submit_tokens(engine, LEN13_IDS, LEN13_IDS_LEN, 32, 0.0f, 1.0f, -1, -1,
                                  LLMRT_SUBMIT_IGNORE_EOS, 0xfeedbeefcafeULL, &id));
    CHECK(collect(engine, id, &out));
    CHECK(out.num_final == 1 && out.events_after_final == 0);
    CHECK(same_ids(out.tokens, out.num_tokens, LEN13_GREEDY, LEN13_GREEDY_LEN));
    CHECK(out.finish_reason == LLMRT_FINISH_LENGTH);
    CHECK(out.user_tag == 0xfeedbeefcafeULL);
    CHECK(out.has_usage && out.usage[0] == LEN13_IDS_LEN && out.usage[1] == 32);
    /* The text deltas concatenate to one decode of all tokens. */
    char *text = NULL;
    size_t len = 0;
    OK(llmrt_detokenize(engine, out.tokens, out.num_tokens, true, &text, &len));
    CHECK(len == out.text_len && memcmp(text, out.text, len) == 0);
    llmrt_string_free(text);
    /* The same without text. */
    OK(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 32, 0.0f, 1.0f, 0, 7,
                                  LLMRT_SUBMIT_IGNORE_EOS | LLMRT_SUBMIT_NO_TEXT, 5, &id));
    CHECK(collect(engine, id, &out));
    CHECK(same_ids(out.tokens, out.num_tokens, LEN4_GREEDY, LEN4_GREEDY_LEN));
    CHECK(out.text_len == 0 && out.user_tag == 5);
    llmrt_engine_free(engine);
}

static void test_greedy_submit_json_matches_reference(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    char ids[2048], req[4096];
    uint64_t id = 0;
    outcome out;
    const uint32_t *prompts[2] = {LEN4_IDS, LEN13_IDS};
    const size_t lens[2] = {LEN4_IDS_LEN, LEN13_IDS_LEN};
    const uint32_t *greedy[2] = {LEN4_GREEDY, LEN13_GREEDY};
    const size_t glens[2] = {LEN4_GREEDY_LEN, LEN13_GREEDY_LEN};
    for (int p = 0; p < 2; p++) {
        ids_json(ids, sizeof ids, prompts[p], lens[p]);
        snprintf(req, sizeof req,
                 "{\"prompt_token_ids\": %s, \"temperature\": 0, \"ignore_eos\": true, "
                 "\"max_tokens\": 32}",
                 ids);
        OK(llmrt_engine_submit(engine, req, (uint64_t)p + 100, &id));
        CHECK(collect(engine, id, &out));
        CHECK(out.num_final == 1 && out.user_tag == (uint64_t)p + 100);
        CHECK(same_ids(out.tokens, out.num_tokens, greedy[p], glens[p]));
        CHECK(out.finish_reason == LLMRT_FINISH_LENGTH);
    }
    /* A text prompt is tokenized as the reference was (with special tokens). */
    CHECK(LEN13_ADD_SPECIAL == 1);
    snprintf(req, sizeof req,
             "{\"prompt\": \"%s\", \"temperature\": 0, \"ignore_eos\": true, \"max_tokens\": 32, "
             "\"priority\": 0, \"cache_salt\": \"c-test\"}",
             LEN13_TEXT);
    OK(llmrt_engine_submit(engine, req, 1, &id));
    CHECK(collect(engine, id, &out));
    CHECK(same_ids(out.tokens, out.num_tokens, LEN13_GREEDY, LEN13_GREEDY_LEN));
    CHECK(out.usage[0] == LEN13_IDS_LEN);
    /* A chat goes through the model's template. */
    snprintf(req, sizeof req,
             "{\"messages\": %s, \"temperature\": 0, \"ignore_eos\": true, \"max_tokens\": 32}",
             CHAT_MESSAGES_JSON);
    OK(llmrt_engine_submit(engine, req, 2, &id));
    CHECK(collect(engine, id, &out));
    CHECK(same_ids(out.tokens, out.num_tokens, CHAT_GREEDY, CHAT_GREEDY_LEN));
    CHECK(out.usage[0] == CHAT_IDS_LEN);
    llmrt_engine_free(engine);
}

/* n = 2 greedy sequences with logprobs (top 2) and prompt logprobs (top 1): both sequences
 * are the reference's greedy tokens, each token has rank 1 and heads its top list, each
 * event's cumulative logprob is its sequence's running sum, and the first event carries
 * one prompt logprob per prompt token after the first. */
#define LP_TOKENS 8
static void test_logprobs_and_n_sequences(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    char ids[512], req[1024];
    ids_json(ids, sizeof ids, LEN4_IDS, LEN4_IDS_LEN);
    snprintf(req, sizeof req,
             "{\"prompt_token_ids\": %s, \"n\": 2, \"temperature\": 0, \"ignore_eos\": true, "
             "\"max_tokens\": %d, \"logprobs\": 2, \"prompt_logprobs\": 1}",
             ids, LP_TOKENS);
    uint64_t id = 0;
    OK(llmrt_engine_submit(engine, req, 9, &id));
    uint32_t tokens[2][LP_TOKENS];
    size_t num[2] = {0, 0};
    double sum[2] = {0, 0};
    int ends[2] = {0, 0}, finals = 0, first = 1;
    size_t num_prompt_lp = 0;
    double deadline = now_s() + 120;
    while (!finals && now_s() < deadline) {
        llmrt_events *ev = NULL;
        OK(llmrt_engine_poll(engine, 16, 100, &ev));
        size_t count = llmrt_events_count(ev);
        for (size_t i = 0; i < count && !test_failed; i++) {
            uint32_t seq = llmrt_event_index(ev, i), tok = 0, rank = 0, top_tok = 0, top_rank = 0;
            float lp = 0, top_lp = 0;
            size_t n = 0;
            const uint32_t *out = llmrt_event_token_ids(ev, i, &n);
            if (llmrt_event_request_id(ev, i) != id || seq > 1 || ends[seq] ||
                num[seq] + n > LP_TOKENS || llmrt_event_logprobs_count(ev, i) != n) {
                FAIL("event %zu: sequence %u, %zu tokens, %zu logprobs", i, seq, n,
                     llmrt_event_logprobs_count(ev, i));
                break;
            }
            for (size_t k = 0; k < n; k++) {
                if (!llmrt_event_logprob(ev, i, k, &tok, &lp, &rank) || tok != out[k] ||
                    rank != 1 || llmrt_event_top_logprobs_count(ev, i, k) != 2 ||
                    !llmrt_event_top_logprob(ev, i, k, 0, &top_tok, &top_lp, &top_rank) ||
                    top_tok != tok || top_lp != lp || top_rank != 1 || lp > 0 ||
                    !llmrt_event_top_logprob(ev, i, k, 1, NULL, &top_lp, &top_rank) ||
                    top_rank != 2 || top_lp > lp)
                    FAIL("sequence %u token %zu: id %u rank %u logprob %f", seq, num[seq], tok,
                         rank, lp);
                tokens[seq][num[seq]++] = out[k];
                sum[seq] += lp;
            }
            /* Out of range: nothing. */
            if (llmrt_event_logprob(ev, i, n, NULL, NULL, NULL) ||
                llmrt_event_top_logprob(ev, i, 0, 2, NULL, NULL, NULL))
                FAIL("an entry out of range");
            double cum = 0;
            if (n && (!llmrt_event_cumulative_logprob(ev, i, &cum) || fabs(cum - sum[seq]) > 1e-4))
                FAIL("sequence %u: cumulative logprob %f, sum %f", seq, cum, sum[seq]);
            size_t np = llmrt_event_prompt_logprobs_count(ev, i);
            if (first) {
                num_prompt_lp = np;
                for (size_t k = 0; k < np && k + 1 < LEN4_IDS_LEN; k++) {
                    if (!llmrt_event_prompt_logprob(ev, i, k, &tok, &lp, &rank) ||
                        tok != LEN4_IDS[k + 1] || rank < 1 || lp > 0 ||
                        llmrt_event_prompt_top_logprobs_count(ev, i, k) != 1 ||
                        !llmrt_event_prompt_top_logprob(ev, i, k, 0, NULL, &top_lp, &top_rank) ||
                        top_rank != 1 || top_lp < lp)
                        FAIL("prompt entry %zu: id %u rank %u logprob %f", k, tok, rank, lp);
                }
            } else if (np) {
                FAIL("prompt logprobs on a later event");
            }
            first = 0;
            if (llmrt_event_finish_reason(ev, i) != LLMRT_FINISH_NONE) {
                if (llmrt_event_finish_reason(ev, i) != LLMRT_FINISH_LENGTH ||
                    llmrt_event_stop_string(ev, i))
                    FAIL("sequence %u finished with %d", seq, llmrt_event_finish_reason(ev, i));
                ends[seq]++;
            }
            if (llmrt_event_kind(ev, i) == LLMRT_EVENT_FINAL) finals++;
        }
        llmrt_events_free(ev);
        if (test_failed) break;
    }
    llmrt_engine_free(engine);
    CHECK(finals == 1 && ends[0] == 1 && ends[1] == 1);
    CHECK(num_prompt_lp == LEN4_IDS_LEN - 1);
    CHECK(same_ids(tokens[0], num[0], LEN4_GREEDY, LP_TOKENS));
    CHECK(same_ids(tokens[1], num[1], LEN4_GREEDY, LP_TOKENS));
}

static void test_seeded_sampling_is_repeatable(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    outcome a, b;
    uint64_t id;
    OK(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 16, 1.0f, 0.9f, 50, 1234,
                                  LLMRT_SUBMIT_IGNORE_EOS, 0, &id));
    CHECK(collect(engine, id, &a));
    OK(llmrt_engine_submit(engine,
                           "{\"prompt_token_ids\": [3, 272, 430, 479, 466], \"temperature\": 1, "
                           "\"top_p\": 0.9, \"top_k\": 50, \"seed\": 1234, \"ignore_eos\": true, "
                           "\"max_tokens\": 16}",
                           0, &id));
    CHECK(collect(engine, id, &b));
    CHECK(a.num_tokens == 16 && same_ids(a.tokens, a.num_tokens, b.tokens, b.num_tokens));
    llmrt_engine_free(engine);
}

static void test_submit_misuse_gives_errors(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    uint64_t id = 777;
    const char *good = "{\"prompt_token_ids\": [3, 272], \"max_tokens\": 2}";
    EXPECT_ERR(llmrt_engine_submit(NULL, good, 0, &id), LLMRT_ERROR_INVALID_ARGUMENT, "engine");
    EXPECT_ERR(llmrt_engine_submit(engine, NULL, 0, &id), LLMRT_ERROR_INVALID_ARGUMENT,
               "request_json");
    EXPECT_ERR(llmrt_engine_submit(engine, good, 0, NULL), LLMRT_ERROR_INVALID_ARGUMENT,
               "request_id");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"caf\xc3\x28\"}", 0, &id),
               LLMRT_ERROR_INVALID_ARGUMENT, "UTF-8");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\",", 0, &id),
               LLMRT_ERROR_INVALID_JSON, NULL);
    EXPECT_ERR(llmrt_engine_submit(engine, "", 0, &id), LLMRT_ERROR_INVALID_JSON, NULL);
    EXPECT_ERR(llmrt_engine_submit(engine, "[1, 2]", 0, &id), LLMRT_ERROR_INVALID_REQUEST,
               "object");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\", \"max_tokenz\": 3}", 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "max_tokenz");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\", \"max_tokens\": \"3\"}", 0,
                                   &id),
               LLMRT_ERROR_INVALID_REQUEST, "max_tokens");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": 42}", 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "prompt");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\", \"max_tokens\": -1}", 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "max_tokens");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\", \"temperature\": -0.5}", 0,
                                   &id),
               LLMRT_ERROR_INVALID_REQUEST, "temperature");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt_token_ids\": [3, 99999]}", 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "99999");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt_token_ids\": []}", 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "empty");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"max_tokens\": 3}", 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "prompt");
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\", \"tools\": []}", 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "tools");
    static uint32_t too_long[600];
    for (size_t i = 0; i < 600; i++) too_long[i] = 4 + (uint32_t)i % 500;
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, too_long, 600, 4, 0, 1, -1, -1, 0, 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "max_model_len");
    CHECK(id == 777); /* untouched by failures */

    /* The JSON-free path. */
    EXPECT_ERR(llmrt_engine_submit_tokens(NULL, LEN4_IDS, LEN4_IDS_LEN, 4, 0, 1, -1, -1, 0, 0,
                                          &id),
               LLMRT_ERROR_INVALID_ARGUMENT, "engine");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, -4, 0, 1, -1, -1, 0,
                                          0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "max_tokens");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 0, 0, 1, -1, -1, 0,
                                          0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "max_tokens");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, NULL, 3, 4, 0, 1, -1, -1, 0, 0, &id),
               LLMRT_ERROR_INVALID_ARGUMENT, "prompt_token_ids");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, NULL, 0, 4, 0, 1, -1, -1, 0, 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "empty");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 4, 0, 1, -1, -1,
                                          0x100, 0, &id),
               LLMRT_ERROR_INVALID_ARGUMENT, "flags");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 4, (float)NAN, 1,
                                          -1, -1, 0, 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "temperature");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 4, 0, 0.0f, -1, -1,
                                          0, 0, &id),
               LLMRT_ERROR_INVALID_REQUEST, "top_p");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 4, 0, 1, -1, -1, 0,
                                          0, NULL),
               LLMRT_ERROR_INVALID_ARGUMENT, "request_id");
    CHECK(id == 777);

    /* Polling and aborting misuse. */
    llmrt_events *ev = (llmrt_events *)&test_failed;
    EXPECT_ERR(llmrt_engine_poll(NULL, 8, 0, &ev), LLMRT_ERROR_INVALID_ARGUMENT, "engine");
    EXPECT_ERR(llmrt_engine_poll(engine, 0, 0, &ev), LLMRT_ERROR_INVALID_ARGUMENT,
               "max_events");
    EXPECT_ERR(llmrt_engine_poll(engine, 8, 0, NULL), LLMRT_ERROR_INVALID_ARGUMENT, "events");
    CHECK(ev == (llmrt_events *)&test_failed);
    EXPECT_ERR(llmrt_engine_abort(NULL, 1), LLMRT_ERROR_INVALID_ARGUMENT, "engine");
    OK(llmrt_engine_abort(engine, 123456789)); /* unknown ids are ignored */

    /* Nothing invalid entered the queue. */
    OK(llmrt_engine_poll(engine, 8, 50, &ev));
    CHECK(llmrt_events_count(ev) == 0);
    /* Accessors past the end give empty values. */
    size_t n = 9;
    CHECK(llmrt_event_request_id(ev, 0) == 0 && llmrt_event_user_tag(ev, 5) == 0);
    CHECK(llmrt_event_token_ids(ev, 3, &n) == NULL && n == 0);
    CHECK(llmrt_event_kind(ev, 1) == LLMRT_EVENT_TOKEN);
    llmrt_events_free(ev);

    /* The engine still serves. */
    outcome out;
    OK(llmrt_engine_submit(engine, good, 0, &id));
    CHECK(collect(engine, id, &out));
    CHECK(out.num_tokens == 2 || out.finish_reason == LLMRT_FINISH_STOP);
    llmrt_engine_free(engine);
}

static void test_tokenize_detokenize_template(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    uint32_t *ids = NULL;
    size_t n = 0;
    OK(llmrt_tokenize(engine, LEN4_TEXT, strlen(LEN4_TEXT), LEN4_ADD_SPECIAL, &ids, &n));
    CHECK(same_ids(ids, n, LEN4_IDS, LEN4_IDS_LEN));
    char *text = NULL;
    size_t len = 0;
    OK(llmrt_detokenize(engine, ids, n, true, &text, &len));
    CHECK(strcmp(text, LEN4_TEXT) == 0 && len == strlen(LEN4_TEXT));
    llmrt_string_free(text);
    llmrt_tokens_free(ids);
    /* Empty text: a valid (empty) array. */
    OK(llmrt_tokenize(engine, NULL, 0, false, &ids, &n));
    CHECK(ids != NULL && n == 0);
    llmrt_tokens_free(ids);
    ids = NULL;
    EXPECT_ERR(llmrt_tokenize(engine, "ab\xff", 3, false, &ids, &n),
               LLMRT_ERROR_INVALID_ARGUMENT, "UTF-8");
    EXPECT_ERR(llmrt_tokenize(engine, NULL, 3, false, &ids, &n), LLMRT_ERROR_INVALID_ARGUMENT,
               "text");
    EXPECT_ERR(llmrt_tokenize(NULL, "a", 1, false, &ids, &n), LLMRT_ERROR_INVALID_ARGUMENT,
               "engine");
    EXPECT_ERR(llmrt_tokenize(engine, "a", 1, false, NULL, &n), LLMRT_ERROR_INVALID_ARGUMENT,
               "token_ids");
    CHECK(ids == NULL);
    const uint32_t bad[2] = {3, 70000};
    EXPECT_ERR(llmrt_detokenize(engine, bad, 2, true, &text, NULL),
               LLMRT_ERROR_INVALID_REQUEST, "70000");

    /* The chat template renders as transformers did. */
    char chat[4096];
    snprintf(chat, sizeof chat, "{\"messages\": %s, \"add_generation_prompt\": true}",
             CHAT_MESSAGES_JSON);
    OK(llmrt_apply_chat_template(engine, chat, &text, &len));
    CHECK(strcmp(text, CHAT_TEXT) == 0 && len == strlen(CHAT_TEXT));
    OK(llmrt_tokenize(engine, text, len, false, &ids, &n));
    CHECK(same_ids(ids, n, CHAT_IDS, CHAT_IDS_LEN));
    llmrt_tokens_free(ids);
    llmrt_string_free(text);
    EXPECT_ERR(llmrt_apply_chat_template(engine, "{\"messages\": [], \"x\": 1}", &text, NULL),
               LLMRT_ERROR_INVALID_REQUEST, NULL);
    EXPECT_ERR(llmrt_apply_chat_template(engine, "{\"add_generation_prompt\": true}", &text,
                                         NULL),
               LLMRT_ERROR_INVALID_REQUEST, "messages");
    EXPECT_ERR(llmrt_apply_chat_template(engine, "{\"messages\": [{\"role\": \"user\", "
                                                 "\"content\": \"x\"}], \"bogus\": 1}",
                                         &text, NULL),
               LLMRT_ERROR_INVALID_REQUEST, "bogus");
    EXPECT_ERR(llmrt_apply_chat_template(engine, "{", &text, NULL), LLMRT_ERROR_INVALID_JSON,
               NULL);
    llmrt_engine_free(engine);
}

static void test_metrics_and_model_info(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    uint64_t id;
    outcome out;
    OK(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 8, 0, 1, -1, -1,
                                  LLMRT_SUBMIT_IGNORE_EOS, 0, &id));
    CHECK(collect(engine, id, &out));
    char *s = NULL;
    OK(llmrt_engine_metrics_json(engine, &s));
    CHECK(s[0] == '{' && strstr(s, "\"generation_tokens\":8") != NULL);
    llmrt_string_free(s);
    OK(llmrt_engine_metrics_prometheus(engine, &s));
    CHECK(strstr(s, "# TYPE llmrt_") != NULL);
    llmrt_string_free(s);
    OK(llmrt_engine_model_info(engine, &s));
    CHECK(strstr(s, "\"architecture\":\"LlamaForCausalLM\"") != NULL);
    CHECK(strstr(s, "\"vocab_size\":512") != NULL);
    llmrt_string_free(s);
    EXPECT_ERR(llmrt_engine_metrics_json(NULL, &s), LLMRT_ERROR_INVALID_ARGUMENT, "engine");
    EXPECT_ERR(llmrt_engine_metrics_json(engine, NULL), LLMRT_ERROR_INVALID_ARGUMENT, "json");
    llmrt_engine_free(engine);
}

static void test_abort_gives_one_final_event(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    uint64_t id;
    outcome out;
    OK(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 400, 0, 1, -1, -1,
                                  LLMRT_SUBMIT_IGNORE_EOS, 9, &id));
    OK(llmrt_engine_abort(engine, id));
    CHECK(collect(engine, id, &out));
    CHECK(out.num_final == 1 && out.user_tag == 9);
    CHECK(out.finish_reason == LLMRT_FINISH_ABORT);
    CHECK(out.num_tokens < 400);
    OK(llmrt_engine_abort(engine, id)); /* finished: ignored */
    llmrt_events *ev = NULL;
    OK(llmrt_engine_poll(engine, 8, 100, &ev));
    CHECK(llmrt_events_count(ev) == 0);
    llmrt_events_free(ev);
    llmrt_engine_free(engine);
}

static int fd_readable(int fd, int timeout_ms) {
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

static void test_event_fd(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    int fd = -1, fd2 = -1;
    OK(llmrt_engine_event_fd(engine, &fd));
    CHECK(fd >= 0);
    OK(llmrt_engine_event_fd(engine, &fd2));
    CHECK(fd2 == fd);
    EXPECT_ERR(llmrt_engine_event_fd(engine, NULL), LLMRT_ERROR_INVALID_ARGUMENT, "fd");
    CHECK(!fd_readable(fd, 0));
    uint64_t id;
    OK(llmrt_engine_submit_tokens(engine, LEN13_IDS, LEN13_IDS_LEN, 32, 0, 1, -1, -1,
                                  LLMRT_SUBMIT_IGNORE_EOS, 0, &id));
    /* Wait in poll(2) only, as an event loop would; drain with non-blocking polls. */
    uint32_t tokens[64];
    size_t num_tokens = 0;
    int finals = 0;
    double deadline = now_s() + 120;
    while (!finals && now_s() < deadline) {
        if (!fd_readable(fd, 10000)) break;
        for (;;) {
            llmrt_events *ev = NULL;
            OK(llmrt_engine_poll(engine, 4, 0, &ev));
            size_t count = llmrt_events_count(ev);
            for (size_t i = 0; i < count; i++) {
                size_t n = 0;
                const uint32_t *ids = llmrt_event_token_ids(ev, i, &n);
                for (size_t k = 0; k < n && num_tokens < 64; k++) tokens[num_tokens++] = ids[k];
                finals += llmrt_event_kind(ev, i) == LLMRT_EVENT_FINAL;
            }
            llmrt_events_free(ev);
            if (count == 0) break;
        }
    }
    CHECK(finals == 1);
    CHECK(same_ids(tokens, num_tokens, LEN13_GREEDY, LEN13_GREEDY_LEN));
    /* Drained, and nothing pending: not readable. */
    llmrt_events *ev = NULL;
    OK(llmrt_engine_poll(engine, 4, 0, &ev));
    CHECK(llmrt_events_count(ev) == 0);
    llmrt_events_free(ev);
    CHECK(!fd_readable(fd, 50));
    /* Stopping makes it readable. */
    OK(llmrt_engine_stop(engine));
    CHECK(fd_readable(fd, 1000));
    llmrt_engine_free(engine);
}

static void test_stop_finishes_every_request(void) {
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    enum { N = 6 };
    uint64_t ids[N];
    int finals[N] = {0};
    for (int i = 0; i < N; i++)
        OK(llmrt_engine_submit_tokens(engine, LEN13_IDS, LEN13_IDS_LEN, 300, 0, 1, -1, -1,
                                      LLMRT_SUBMIT_IGNORE_EOS, (uint64_t)i, &ids[i]));
    OK(llmrt_engine_stop(engine));
    OK(llmrt_engine_stop(engine)); /* idempotent */
    uint64_t id;
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 4, 0, 1, -1, -1, 0,
                                          0, &id),
               LLMRT_ERROR_ENGINE_STOPPED, NULL);
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\"}", 0, &id),
               LLMRT_ERROR_ENGINE_STOPPED, NULL);
    /* Pending events come out without waiting, then ENGINE_STOPPED. */
    double t0 = now_s();
    for (;;) {
        llmrt_events *ev = NULL;
        llmrt_error *err = llmrt_engine_poll(engine, 3, 10000, &ev);
        if (err) {
            EXPECT_ERR(err, LLMRT_ERROR_ENGINE_STOPPED, NULL);
            break;
        }
        for (size_t i = 0; i < llmrt_events_count(ev); i++) {
            uint64_t tag = llmrt_event_user_tag(ev, i);
            CHECK(tag < N && llmrt_event_request_id(ev, i) == ids[tag]);
            if (llmrt_event_kind(ev, i) == LLMRT_EVENT_FINAL) {
                finals[tag]++;
                int r = llmrt_event_finish_reason(ev, i);
                CHECK(r == LLMRT_FINISH_ABORT || r == LLMRT_FINISH_LENGTH);
            }
        }
        llmrt_events_free(ev);
    }
    CHECK(now_s() - t0 < 5);
    for (int i = 0; i < N; i++) CHECK(finals[i] == 1);
    /* Utilities still work on a stopped engine. */
    uint32_t *toks = NULL;
    size_t n = 0;
    OK(llmrt_tokenize(engine, "a", 1, false, &toks, &n));
    llmrt_tokens_free(toks);
    llmrt_engine_free(engine);
}

static void test_forced_panic_is_an_error_and_the_process_lives(void) {
    const char *req = "{\"prompt\": \"x\", \"llmrt_test_panic\": true}";
    llmrt_engine *engine = new_engine();
    CHECK(engine);
    uint64_t id = 0;
    /* Without the test hooks the field is unknown like any other. */
    unsetenv("LLMRT_TEST_HOOKS");
    EXPECT_ERR(llmrt_engine_submit(engine, req, 0, &id), LLMRT_ERROR_INVALID_REQUEST,
               "llmrt_test_panic");
    setenv("LLMRT_TEST_HOOKS", "1", 1);
    fprintf(stderr, "  (a panic message from the test hook follows)\n");
    EXPECT_ERR(llmrt_engine_submit(engine, req, 0, &id), LLMRT_ERROR_INTERNAL, "test hook");
    unsetenv("LLMRT_TEST_HOOKS");
    /* The engine refuses further work with the same code. */
    EXPECT_ERR(llmrt_engine_submit(engine, "{\"prompt\": \"x\"}", 0, &id),
               LLMRT_ERROR_INTERNAL, "refuses");
    EXPECT_ERR(llmrt_engine_submit_tokens(engine, LEN4_IDS, LEN4_IDS_LEN, 4, 0, 1, -1, -1, 0,
                                          0, &id),
               LLMRT_ERROR_INTERNAL, NULL);
    llmrt_events *ev = NULL;
    EXPECT_ERR(llmrt_engine_poll(engine, 4, 0, &ev), LLMRT_ERROR_INTERNAL, NULL);
    CHECK(ev == NULL && id == 0);
    llmrt_engine_free(engine);
    /* The process lives, and a new engine serves. */
    engine = new_engine();
    CHECK(engine);
    outcome out;
    OK(llmrt_engine_submit_tokens(engine, LEN13_IDS, LEN13_IDS_LEN, 32, 0, 1, -1, -1,
                                  LLMRT_SUBMIT_IGNORE_EOS, 0, &id));
    CHECK(collect(engine, id, &out));
    CHECK(same_ids(out.tokens, out.num_tokens, LEN13_GREEDY, LEN13_GREEDY_LEN));
    llmrt_engine_free(engine);
}

/* --------------------------------------------------------------- stress test -- */

enum { SUBMITTERS = 8, POLLERS = 2 };

typedef struct {
    llmrt_engine *engine;
    int n;
    pthread_mutex_t lock;
    uint64_t *ids;        /* request id by tag */
    uint64_t *seen_ids;   /* request id seen in events, by tag */
    int *finals;          /* final events by tag */
    int *max_tokens;      /* by tag; negative: may stop early (sampled, EOS allowed) */
    int *num_tokens;      /* tokens received, by tag */
    int *aborted;
    int total_finals;
    int bad_tags;
    int errors;
    int submitted;
} stress_state;

typedef struct {
    stress_state *st;
    int first, count;
    unsigned seed;
} submitter_arg;

static void *stress_submitter(void *p) {
    submitter_arg *a = (submitter_arg *)p;
    stress_state *st = a->st;
    uint64_t pending[8];
    int npending = 0;
    for (int k = 0; k < a->count; k++) {
        int tag = a->first + k;
        uint32_t prompt[24];
        int len = 1 + rand_r(&a->seed) % 24;
        for (int i = 0; i < len; i++) prompt[i] = 4 + (uint32_t)(rand_r(&a->seed) % 500);
        int max_tokens = 1 + rand_r(&a->seed) % 12;
        uint64_t id = 0;
        llmrt_error *err;
        int sampled = rand_r(&a->seed) % 2;
        st->max_tokens[tag] = sampled ? -max_tokens : max_tokens; /* before any event */
        if (sampled) {
            err = llmrt_engine_submit_tokens(st->engine, prompt, (size_t)len, max_tokens, 0.8f,
                                             0.95f, 40, rand_r(&a->seed) % 3 ? -1 : tag, 0,
                                             (uint64_t)tag, &id);
        } else {
            char ids[512], req[1024];
            ids_json(ids, sizeof ids, prompt, (size_t)len);
            snprintf(req, sizeof req,
                     "{\"prompt_token_ids\": %s, \"max_tokens\": %d, \"temperature\": 0, "
                     "\"ignore_eos\": true, \"priority\": %d}",
                     ids, max_tokens, tag % 3);
            err = llmrt_engine_submit(st->engine, req, (uint64_t)tag, &id);
        }
        pthread_mutex_lock(&st->lock);
        if (err) {
            fprintf(stderr, "  submit %d: %s\n", tag, llmrt_error_message(err));
            st->errors++;
            st->finals[tag] = 1; /* nothing to wait for */
            st->total_finals++;
        } else {
            st->ids[tag] = id;
            st->submitted++;
        }
        pthread_mutex_unlock(&st->lock);
        llmrt_error_free(err);
        if (err) continue;
        /* Abort about a quarter: at once, or a little later. */
        int r = rand_r(&a->seed) % 8;
        if (r <= 1 && (r == 0 || npending < 8)) {
            pthread_mutex_lock(&st->lock);
            st->aborted[tag] = 1;
            pthread_mutex_unlock(&st->lock);
            if (r == 0)
                llmrt_error_free(llmrt_engine_abort(st->engine, id));
            else
                pending[npending++] = id;
        }
        if (npending == 8 || (npending && rand_r(&a->seed) % 4 == 0)) {
            for (int i = 0; i < npending; i++)
                llmrt_error_free(llmrt_engine_abort(st->engine, pending[i]));
            npending = 0;
        }
    }
    for (int i = 0; i < npending; i++)
        llmrt_error_free(llmrt_engine_abort(st->engine, pending[i]));
    return NULL;
}

static void *stress_poller(void *p) {
    stress_state *st = (stress_state *)p;
    double deadline = now_s() + 600;
    for (;;) {
        pthread_mutex_lock(&st->lock);
        int done = st->total_finals >= st->n;
        pthread_mutex_unlock(&st->lock);
        if (done || now_s() > deadline) return NULL;
        llmrt_events *ev = NULL;
        llmrt_error *err = llmrt_engine_poll(st->engine, 32, 50, &ev);
        if (err) {
            fprintf(stderr, "  poll: %s\n", llmrt_error_message(err));
            llmrt_error_free(err);
            pthread_mutex_lock(&st->lock);
            st->errors++;
            pthread_mutex_unlock(&st->lock);
            return NULL;
        }
        pthread_mutex_lock(&st->lock);
        for (size_t i = 0; i < llmrt_events_count(ev); i++) {
            uint64_t tag = llmrt_event_user_tag(ev, i);
            if (tag >= (uint64_t)st->n) {
                st->bad_tags++;
                continue;
            }
            st->seen_ids[tag] = llmrt_event_request_id(ev, i);
            size_t n = 0;
            llmrt_event_token_ids(ev, i, &n);
            st->num_tokens[tag] += (int)n;
            /* Within a batch a request's events are in order: nothing after its final. */
            for (size_t j = 0; j < i; j++)
                if (llmrt_event_request_id(ev, j) == llmrt_event_request_id(ev, i) &&
                    llmrt_event_kind(ev, j) == LLMRT_EVENT_FINAL)
                    st->errors++;
            if (llmrt_event_kind(ev, i) == LLMRT_EVENT_FINAL) {
                st->finals[tag]++;
                st->total_finals++;
                int r = llmrt_event_finish_reason(ev, i);
                uint64_t usage[2] = {0, 0};
                llmrt_event_usage(ev, i, &usage[0], &usage[1], NULL);
                if (usage[1] > (uint64_t)abs(st->max_tokens[tag])) st->errors++;
                if (r == LLMRT_FINISH_ERROR ||
                    (r == LLMRT_FINISH_ABORT && !st->aborted[tag]) ||
                    (r == LLMRT_FINISH_LENGTH && usage[1] != (uint64_t)abs(st->max_tokens[tag])) ||
                    (st->max_tokens[tag] > 0 && r == LLMRT_FINISH_STOP)) {
                    fprintf(stderr, "  request %llu: unexpected finish %d\n",
                            (unsigned long long)tag, r);
                    st->errors++;
                }
            }
        }
        pthread_mutex_unlock(&st->lock);
        llmrt_events_free(ev);
    }
}

static void test_stress_concurrent_submit_abort_poll(void) {
    const char *env = getenv("LLMRT_TEST_STRESS_N");
    int n = env ? atoi(env) : 1000;
    CHECK(n >= SUBMITTERS);
    llmrt_engine *engine = new_engine_with("\"max_num_seqs\": 64");
    CHECK(engine);
    stress_state st;
    memset(&st, 0, sizeof st);
    st.engine = engine;
    st.n = n;
    pthread_mutex_init(&st.lock, NULL);
    st.ids = calloc((size_t)n, sizeof *st.ids);
    st.seen_ids = calloc((size_t)n, sizeof *st.seen_ids);
    st.finals = calloc((size_t)n, sizeof *st.finals);
    st.max_tokens = calloc((size_t)n, sizeof *st.max_tokens);
    st.num_tokens = calloc((size_t)n, sizeof *st.num_tokens);
    st.aborted = calloc((size_t)n, sizeof *st.aborted);
    pthread_t subs[SUBMITTERS], polls[POLLERS];
    submitter_arg args[SUBMITTERS];
    double t0 = now_s();
    for (int p = 0; p < POLLERS; p++) pthread_create(&polls[p], NULL, stress_poller, &st);
    for (int s = 0; s < SUBMITTERS; s++) {
        args[s].st = &st;
        args[s].first = s * n / SUBMITTERS;
        args[s].count = (s + 1) * n / SUBMITTERS - args[s].first;
        args[s].seed = 1234u + (unsigned)s;
        pthread_create(&subs[s], NULL, stress_submitter, &args[s]);
    }
    for (int s = 0; s < SUBMITTERS; s++) pthread_join(subs[s], NULL);
    for (int p = 0; p < POLLERS; p++) pthread_join(polls[p], NULL);
    int naborted = 0, missing = 0, dup = 0, wrong_count = 0, idmismatch = 0;
    for (int i = 0; i < n; i++) {
        naborted += st.aborted[i];
        missing += st.finals[i] == 0;
        dup += st.finals[i] > 1;
        /* Greedy with ignore_eos, not aborted: exactly max_tokens tokens. */
        if (st.max_tokens[i] > 0 && !st.aborted[i]) wrong_count += st.num_tokens[i] != st.max_tokens[i];
        if (st.num_tokens[i] > abs(st.max_tokens[i])) wrong_count++;
        idmismatch += st.seen_ids[i] != st.ids[i];
    }
    /* Request ids are unique. */
    int same = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) same += st.ids[i] == st.ids[j];
    fprintf(stderr, "  %d requests (%d aborted) in %.1f s\n", n, naborted, now_s() - t0);
    /* Nothing more comes. */
    llmrt_events *ev = NULL;
    llmrt_error *err = llmrt_engine_poll(engine, 8, 100, &ev);
    size_t stray = llmrt_events_count(ev);
    llmrt_events_free(ev);
    llmrt_error_free(err);
    llmrt_engine_free(engine);
    free(st.ids);
    free(st.seen_ids);
    free(st.finals);
    free(st.max_tokens);
    free(st.num_tokens);
    free(st.aborted);
    pthread_mutex_destroy(&st.lock);
    CHECK(err == NULL && stray == 0);
    CHECK(st.errors == 0 && st.bad_tags == 0);
    CHECK(st.submitted == n);
    CHECK(missing == 0 && dup == 0 && wrong_count == 0);
    CHECK(idmismatch == 0 && same == 0);
    CHECK(naborted > 0);
}

/* --------------------------------------------------------------------- main -- */

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

#define TEST(f) {#f, f}

int main(void) {
    model_dir = getenv("LLMRT_TEST_MODEL");
    if (!model_dir) {
        fprintf(stderr, "set LLMRT_TEST_MODEL to the llama fixture folder\n");
        return 2;
    }
    const char *only = getenv("LLMRT_TEST_ONLY");
    static const test_case tests[] = {
        TEST(test_version_and_capabilities),
        TEST(test_error_code_names),
        TEST(test_free_null_is_a_noop),
        TEST(test_engine_new_rejects_bad_config),
        TEST(test_progress_callback_and_cancel),
        TEST(test_greedy_submit_tokens_matches_reference),
        TEST(test_greedy_submit_json_matches_reference),
        TEST(test_logprobs_and_n_sequences),
        TEST(test_seeded_sampling_is_repeatable),
        TEST(test_submit_misuse_gives_errors),
        TEST(test_tokenize_detokenize_template),
        TEST(test_metrics_and_model_info),
        TEST(test_abort_gives_one_final_event),
        TEST(test_event_fd),
        TEST(test_stop_finishes_every_request),
        TEST(test_forced_panic_is_an_error_and_the_process_lives),
        TEST(test_stress_concurrent_submit_abort_poll),
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (only && !strstr(tests[i].name, only)) continue;
        test_failed = 0;
        double t0 = now_s();
        tests[i].fn();
        printf("%s - %s (%.2f s)\n", test_failed ? "FAIL" : "ok", tests[i].name, now_s() - t0);
        fflush(stdout);
        if (test_failed)
            failed++;
        else
            passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
