// Tests of the C++ binding (llmrt.hpp) against the real shared library and the tiny llama
// fixture model. Reference token ids come from expected.hpp, generated at build time from
// the fixture's expected.json (transformers' outputs), never from llmrt itself.
//
// Environment: LLMRT_TEST_MODEL overrides the fixture folder compiled in.
#include <llmrt.hpp>

#include "expected.hpp"

#include <gtest/gtest.h>

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <future>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace std::chrono_literals;
using llmrt::Engine;
using llmrt::Error;
using llmrt::Event;
using llmrt::FinishReason;
using llmrt::Status;
using llmrt::Stream;
using llmrt::TokensRequest;

namespace {

std::string model_dir() {
    const char* env = std::getenv("LLMRT_TEST_MODEL");
    return env != nullptr ? env : LLMRT_TEST_MODEL_DIR;
}

llmrt::Options options() {
    llmrt::Options o;
    o.model = model_dir();
    o.num_threads = 2;
    return o;
}

std::string config_json(const std::string& extra = "") {
    return "{\"model\": " + llmrt::json_string(model_dir()) + ", \"num_threads\": 2" +
           (extra.empty() ? "" : ", " + extra) + "}";
}

std::string ids_json(const std::vector<uint32_t>& ids) {
    std::string s = "[";
    for (size_t i = 0; i < ids.size(); i++) s += (i ? ", " : "") + std::to_string(ids[i]);
    return s + "]";
}

// A greedy request for the reference continuation of `ids` (as long as the reference).
TokensRequest greedy(const std::vector<uint32_t>& ids, int32_t max_tokens) {
    TokensRequest r;
    r.prompt_token_ids = ids;
    r.max_tokens = max_tokens;
    r.temperature = 0.0f;
    r.ignore_eos = true;
    return r;
}

int32_t len(const std::vector<uint32_t>& v) { return static_cast<int32_t>(v.size()); }

// Expects `f()` to throw llmrt::Error with `code`, its message containing `needle`.
template <class F>
void expect_error(F&& f, Status code, const std::string& needle, int line) {
    SCOPED_TRACE("line " + std::to_string(line));
    try {
        f();
        ADD_FAILURE() << "no error; wanted " << llmrt::to_string(code);
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), code) << e.what();
        EXPECT_NE(e.message().find(needle), std::string::npos)
            << "message \"" << e.message() << "\" lacks \"" << needle << "\"";
        EXPECT_NE(std::string(e.what()).find(llmrt::to_string(code)), std::string::npos);
    }
}
#define EXPECT_LLMRT_ERROR(stmt, code, needle) \
    expect_error([&] { stmt; }, (code), (needle), __LINE__)

uint64_t metric(const std::string& json, const std::string& name) {
    size_t at = json.find("\"" + name + "\":");
    if (at == std::string::npos) return UINT64_MAX;
    return std::strtoull(json.c_str() + at + name.size() + 3, nullptr, 10);
}

// Consumes a stream, checking the event invariants: request ids, nothing after the final
// event, finish reason and usage only on the final one, text concatenating.
struct Outcome {
    std::vector<uint32_t> tokens;
    std::string text;
    int finals = 0;
    FinishReason reason = FinishReason::None;
    llmrt::Usage usage;
    int events = 0;
};

Outcome consume(Stream& stream) {
    Outcome out;
    for (const Event& ev : stream) {
        EXPECT_EQ(ev.request_id, stream.id());
        EXPECT_EQ(out.finals, 0) << "an event after the final one";
        out.events++;
        out.tokens.insert(out.tokens.end(), ev.token_ids.begin(), ev.token_ids.end());
        out.text += ev.text;
        if (ev.is_final()) {
            out.finals++;
            out.reason = ev.finish_reason;
            EXPECT_TRUE(ev.usage.has_value());
            if (ev.usage) out.usage = *ev.usage;
        } else {
            EXPECT_EQ(ev.finish_reason, FinishReason::None);
            EXPECT_FALSE(ev.usage.has_value());
        }
        // Nothing the request did not ask for.
        EXPECT_EQ(ev.index, 0u);
        EXPECT_TRUE(ev.logprobs.empty());
        EXPECT_TRUE(ev.prompt_logprobs.empty());
        EXPECT_FALSE(ev.cumulative_logprob.has_value());
        EXPECT_FALSE(ev.stop_string.has_value());
        EXPECT_TRUE(ev.reasoning.empty());
        EXPECT_FALSE(ev.tool_calls_json.has_value());
    }
    EXPECT_TRUE(stream.finished());
    return out;
}

}  // namespace

// ------------------------------------------------------------------- library --

TEST(Library, VersionAbiAndCapabilities) {
    EXPECT_EQ(llmrt::abi_version(), static_cast<uint32_t>(LLMRT_ABI_VERSION));
    EXPECT_FALSE(llmrt::version().empty());
    std::string_view caps = llmrt::capabilities();
    EXPECT_NE(caps.find("\"LlamaForCausalLM\""), std::string_view::npos);
    EXPECT_NE(caps.find("\"safetensors\""), std::string_view::npos);
}

TEST(Library, StatusNamesErrorsAndJsonStrings) {
    EXPECT_STREQ(llmrt::to_string(Status::InvalidJson), "LLMRT_ERROR_INVALID_JSON");
    EXPECT_STREQ(llmrt::to_string(Status::Cancelled), "LLMRT_ERROR_CANCELLED");
    EXPECT_STREQ(llmrt::to_string(static_cast<Status>(9999)), "LLMRT_ERROR_UNKNOWN");
    EXPECT_STREQ(llmrt::to_string(FinishReason::Length), "length");
    Error e(Status::InvalidRequest, "unknown field `x`");
    EXPECT_EQ(e.code(), Status::InvalidRequest);
    EXPECT_EQ(e.message(), "unknown field `x`");
    EXPECT_STREQ(e.what(), "LLMRT_ERROR_INVALID_REQUEST: unknown field `x`");
    static_assert(std::is_base_of_v<std::runtime_error, Error>);
    EXPECT_EQ(llmrt::json_string("a\"b\\c\n\x01\xc3\xa9"), "\"a\\\"b\\\\c\\u000a\\u0001\xc3\xa9\"");
}

TEST(Library, ResultAndAttempt) {
    llmrt::Result<Engine> bad = llmrt::attempt([] { return Engine("{\"model\": "); });
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.status(), Status::InvalidJson);
    EXPECT_EQ(bad.error().code(), Status::InvalidJson);
    EXPECT_THROW(bad.value(), Error);

    llmrt::Result<Engine> good = llmrt::attempt([] { return Engine(options()); });
    ASSERT_TRUE(good) << good.error().what();
    EXPECT_EQ(good.status(), Status::Ok);
    EXPECT_EQ(good->tokenize(expected::LEN4_TEXT, expected::LEN4_ADD_SPECIAL), expected::LEN4_IDS);

    llmrt::Result<void> v = llmrt::attempt([&] { good->stop(); });
    EXPECT_TRUE(v.ok());
    llmrt::Result<uint64_t> stopped =
        llmrt::attempt([&] { return good->submit(greedy(expected::LEN4_IDS, 4)); });
    EXPECT_EQ(stopped.status(), Status::EngineStopped);
    llmrt::Result<void> bad_void = llmrt::attempt([&] { good->abort(1); });
    EXPECT_EQ(bad_void.status(), Status::EngineStopped);
    EXPECT_THROW(bad_void.value(), Error);
}

// -------------------------------------------------------------- engine set-up --

TEST(EngineNew, FromOptionsAndJsonWithProgress) {
    std::vector<float> seen;
    Engine a(options(), [&](float p, std::string_view stage) {
        EXPECT_FALSE(stage.empty());
        seen.push_back(p);
        return true;
    });
    ASSERT_GE(seen.size(), 2u);
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
    EXPECT_EQ(seen.back(), 1.0f);
    Engine b(config_json("\"max_num_seqs\": 8"));
    EXPECT_TRUE(a.valid() && b.valid() && a.native_handle() != b.native_handle());
    EXPECT_NE(b.model_info().find("\"vocab_size\":512"), std::string::npos);
}

TEST(EngineNew, ProgressCallbackCancelsOrRethrows) {
    EXPECT_LLMRT_ERROR(Engine(options(), [](float, std::string_view) { return false; }),
                       Status::Cancelled, "");
    struct Boom {};
    EXPECT_THROW(Engine(options(), [](float, std::string_view) -> bool { throw Boom{}; }), Boom);
}

TEST(EngineNew, BadConfigsThrowTheirCodes) {
    EXPECT_LLMRT_ERROR(Engine("{\"model\": "), Status::InvalidJson, "");
    EXPECT_LLMRT_ERROR(Engine(""), Status::InvalidJson, "");
    EXPECT_LLMRT_ERROR(Engine("{}"), Status::InvalidConfig, "model");
    EXPECT_LLMRT_ERROR(Engine(config_json("\"max_num_seqz\": 4")), Status::InvalidConfig,
                       "max_num_seqz");
    EXPECT_LLMRT_ERROR(Engine(config_json("\"max_num_seqs\": \"4\"")), Status::InvalidConfig,
                       "max_num_seqs");
    EXPECT_LLMRT_ERROR(Engine(config_json("\"block_size\": 0")), Status::InvalidConfig,
                       "block_size");
    llmrt::Options o = options();
    o.extra_json = "\"bogus_option\": true";
    EXPECT_LLMRT_ERROR(Engine{o}, Status::InvalidConfig, "bogus_option");
    o = options();
    o.model = "/nonexistent/llmrt-model";
    EXPECT_LLMRT_ERROR(Engine{o}, Status::InvalidModel, "nonexistent");
    EXPECT_LLMRT_ERROR(Engine("{\"model\": \"\xff\xfe\"}"), Status::InvalidArgument, "UTF-8");
}

// ----------------------------------------------------------------- generation --

TEST(Generate, TokensRequestMatchesReference) {
    Engine engine(options());
    for (const auto* p : {&expected::LEN13_IDS, &expected::LEN1_IDS}) {
        const auto& want = p == &expected::LEN13_IDS ? expected::LEN13_GREEDY : expected::LEN1_GREEDY;
        Stream stream = engine.generate(greedy(*p, len(want)));
        Outcome out = consume(stream);
        EXPECT_EQ(out.tokens, want);
        EXPECT_EQ(out.finals, 1);
        EXPECT_EQ(out.reason, FinishReason::Length);
        EXPECT_EQ(out.usage.prompt_tokens, p->size());
        EXPECT_EQ(out.usage.completion_tokens, want.size());
        // The text deltas concatenate to one decode of all the tokens.
        EXPECT_EQ(out.text, engine.detokenize(out.tokens));
    }
    // Without text.
    TokensRequest r = greedy(expected::LEN4_IDS, len(expected::LEN4_GREEDY));
    r.detokenize = false;
    llmrt::Completion c = engine.generate(r).collect();
    EXPECT_EQ(c.token_ids, expected::LEN4_GREEDY);
    EXPECT_TRUE(c.text.empty());
    EXPECT_EQ(c.finish_reason, FinishReason::Length);
    EXPECT_EQ(c.usage.completion_tokens, expected::LEN4_GREEDY.size());
}

TEST(Generate, JsonRequestsMatchReference) {
    Engine engine(options());
    auto common = [](const std::vector<uint32_t>& want) {
        return ", \"temperature\": 0, \"ignore_eos\": true, \"max_tokens\": " +
               std::to_string(want.size()) + "}";
    };
    llmrt::Completion ids = engine
        .generate("{\"prompt_token_ids\": " + ids_json(expected::LEN4_IDS) +
                  common(expected::LEN4_GREEDY))
        .collect();
    EXPECT_EQ(ids.token_ids, expected::LEN4_GREEDY);
    ASSERT_TRUE(expected::LEN13_ADD_SPECIAL);
    llmrt::Completion text = engine
        .generate("{\"prompt\": " + llmrt::json_string(expected::LEN13_TEXT) +
                  common(expected::LEN13_GREEDY))
        .collect();
    EXPECT_EQ(text.token_ids, expected::LEN13_GREEDY);
    EXPECT_EQ(text.usage.prompt_tokens, expected::LEN13_IDS.size());
    llmrt::Completion chat = engine
        .generate("{\"messages\": " + expected::CHAT_MESSAGES_JSON + common(expected::CHAT_GREEDY))
        .collect();
    EXPECT_EQ(chat.token_ids, expected::CHAT_GREEDY);
    EXPECT_EQ(chat.usage.prompt_tokens, expected::CHAT_IDS.size());
    EXPECT_EQ(chat.finish_reason, FinishReason::Length);
    EXPECT_EQ(chat.text, engine.detokenize(chat.token_ids));
}

TEST(Generate, RangeForEndsAfterTheOneFinalEvent) {
    Engine engine(options());
    Stream stream = engine.generate(greedy(expected::LEN13_IDS, len(expected::LEN13_GREEDY)));
    EXPECT_FALSE(stream.finished());
    std::vector<Event> events;
    for (const auto& ev : stream) events.push_back(ev);
    ASSERT_FALSE(events.empty());
    EXPECT_TRUE(events.back().is_final());
    EXPECT_EQ(std::count_if(events.begin(), events.end(), [](const Event& e) { return e.is_final(); }), 1);
    EXPECT_TRUE(stream.finished());
    EXPECT_FALSE(stream.next().has_value());
    EXPECT_FALSE(stream.next_for(10ms).has_value());
    EXPECT_EQ(stream.begin(), stream.end());  // nothing more
    stream.abort();                           // finished: a no-op
    // next() and next_for() consume the same way.
    Stream s2 = engine.generate(greedy(expected::LEN4_IDS, len(expected::LEN4_GREEDY)));
    std::vector<uint32_t> tokens;
    while (!s2.finished()) {
        std::optional<Event> ev = s2.next_for(50ms);
        if (ev) tokens.insert(tokens.end(), ev->token_ids.begin(), ev->token_ids.end());
    }
    EXPECT_EQ(tokens, expected::LEN4_GREEDY);
}

TEST(Generate, CallbackFormRunsOnThePollerThread) {
    Engine engine(options());
    struct Got {
        std::vector<uint32_t> tokens;
        int finals = 0;
        std::thread::id thread;
        FinishReason reason = FinishReason::None;
        std::set<uint64_t> request_ids;
    };
    std::promise<Got> done;
    Got got;
    uint64_t id = engine.generate(greedy(expected::LEN13_IDS, len(expected::LEN13_GREEDY)),
                                  [&](const Event& ev) {
                                      got.thread = std::this_thread::get_id();
                                      got.request_ids.insert(ev.request_id);
                                      got.tokens.insert(got.tokens.end(), ev.token_ids.begin(),
                                                        ev.token_ids.end());
                                      if (ev.is_final()) {
                                          got.finals++;
                                          got.reason = ev.finish_reason;
                                          done.set_value(got);
                                      }
                                  });
    std::future<Got> f = done.get_future();
    ASSERT_EQ(f.wait_for(120s), std::future_status::ready);
    Got g = f.get();
    EXPECT_EQ(g.tokens, expected::LEN13_GREEDY);
    EXPECT_EQ(g.finals, 1);
    EXPECT_EQ(g.reason, FinishReason::Length);
    EXPECT_NE(g.thread, std::this_thread::get_id());
    EXPECT_EQ(g.request_ids, std::set<uint64_t>{id});
    // Aborting through the engine: the final event says so.
    std::promise<FinishReason> aborted;
    uint64_t long_id = engine.generate(greedy(expected::LEN1_IDS, 480), [&](const Event& ev) {
        if (ev.is_final()) aborted.set_value(ev.finish_reason);
    });
    engine.abort(long_id);
    std::future<FinishReason> a = aborted.get_future();
    ASSERT_EQ(a.wait_for(120s), std::future_status::ready);
    FinishReason r = a.get();
    EXPECT_TRUE(r == FinishReason::Abort || r == FinishReason::Length);
    EXPECT_LLMRT_ERROR(engine.generate(greedy(expected::LEN4_IDS, 4), llmrt::EventCallback()),
                       Status::InvalidArgument, "on_event");
}

TEST(Generate, SeededSamplingIsRepeatable) {
    Engine engine(options());
    TokensRequest r;
    r.prompt_token_ids = expected::LEN4_IDS;
    r.max_tokens = 16;
    r.temperature = 1.0f;
    r.top_p = 0.9f;
    r.top_k = 50;
    r.seed = 1234;
    r.ignore_eos = true;
    llmrt::Completion a = engine.generate(r).collect();
    llmrt::Completion b = engine
        .generate("{\"prompt_token_ids\": " + ids_json(expected::LEN4_IDS) +
                  ", \"temperature\": 1, \"top_p\": 0.9, \"top_k\": 50, \"seed\": 1234, "
                  "\"ignore_eos\": true, \"max_tokens\": 16}")
        .collect();
    EXPECT_EQ(a.token_ids.size(), 16u);
    EXPECT_EQ(a.token_ids, b.token_ids);
}

// ---------------------------------------------------------------------- misuse --

TEST(Misuse, BadRequestsThrowTheirCodes) {
    Engine engine(options());
    using S = Status;
    // JSON requests, through the stream and the raw form.
    for (bool raw : {false, true}) {
        SCOPED_TRACE(raw ? "submit" : "generate");
        auto go = [&](const std::string& json) {
            if (raw)
                engine.submit(json);
            else
                engine.generate(json);
        };
        EXPECT_LLMRT_ERROR(go("{\"prompt\": \"x\","), S::InvalidJson, "");
        EXPECT_LLMRT_ERROR(go(""), S::InvalidJson, "");
        EXPECT_LLMRT_ERROR(go("[1, 2]"), S::InvalidRequest, "object");
        EXPECT_LLMRT_ERROR(go("{\"prompt\": \"x\", \"max_tokenz\": 3}"), S::InvalidRequest,
                           "max_tokenz");
        EXPECT_LLMRT_ERROR(go("{\"prompt\": \"x\", \"max_tokens\": \"3\"}"), S::InvalidRequest,
                           "max_tokens");
        EXPECT_LLMRT_ERROR(go("{\"prompt\": 42}"), S::InvalidRequest, "prompt");
        EXPECT_LLMRT_ERROR(go("{\"prompt\": \"x\", \"max_tokens\": -1}"), S::InvalidRequest,
                           "max_tokens");
        EXPECT_LLMRT_ERROR(go("{\"prompt\": \"x\", \"temperature\": -0.5}"), S::InvalidRequest,
                           "temperature");
        EXPECT_LLMRT_ERROR(go("{\"prompt_token_ids\": [3, 99999]}"), S::InvalidRequest, "99999");
        EXPECT_LLMRT_ERROR(go("{\"prompt_token_ids\": []}"), S::InvalidRequest, "empty");
        EXPECT_LLMRT_ERROR(go("{\"max_tokens\": 3}"), S::InvalidRequest, "prompt");
        EXPECT_LLMRT_ERROR(go("{\"prompt\": \"caf\xc3\x28\"}"), S::InvalidArgument, "UTF-8");
    }
    // Token requests.
    auto tokens = [&](TokensRequest r) { return engine.generate(r); };
    TokensRequest neg = greedy(expected::LEN4_IDS, -4);
    EXPECT_LLMRT_ERROR(tokens(neg), S::InvalidRequest, "max_tokens");
    EXPECT_LLMRT_ERROR(engine.submit(neg), S::InvalidRequest, "max_tokens");
    EXPECT_LLMRT_ERROR(tokens(greedy(expected::LEN4_IDS, 0)), S::InvalidRequest, "max_tokens");
    EXPECT_LLMRT_ERROR(tokens(greedy({3, 70000}, 4)), S::InvalidRequest, "70000");
    EXPECT_LLMRT_ERROR(tokens(greedy({}, 4)), S::InvalidRequest, "empty");
    EXPECT_LLMRT_ERROR(tokens(greedy(std::vector<uint32_t>(600, 7), 4)), S::InvalidRequest,
                       "max_model_len");
    TokensRequest nan = greedy(expected::LEN4_IDS, 4);
    nan.temperature = std::nanf("");
    EXPECT_LLMRT_ERROR(tokens(nan), S::InvalidRequest, "temperature");
    TokensRequest top_p = greedy(expected::LEN4_IDS, 4);
    top_p.top_p = 0.0f;
    EXPECT_LLMRT_ERROR(tokens(top_p), S::InvalidRequest, "top_p");
    // Utilities.
    EXPECT_LLMRT_ERROR(engine.tokenize("ab\xff"), S::InvalidArgument, "UTF-8");
    EXPECT_LLMRT_ERROR(engine.detokenize({3, 70000}), S::InvalidRequest, "70000");
    EXPECT_LLMRT_ERROR(engine.apply_chat_template("{"), S::InvalidJson, "");
    EXPECT_LLMRT_ERROR(engine.apply_chat_template("{\"add_generation_prompt\": true}"),
                       S::InvalidRequest, "messages");
    EXPECT_LLMRT_ERROR(engine.apply_chat_template(
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"bogus\": 1}"),
                       S::InvalidRequest, "bogus");
    // The engine still serves, and nothing from the failed requests comes.
    llmrt::Completion c = engine.generate(greedy(expected::LEN4_IDS, len(expected::LEN4_GREEDY))).collect();
    EXPECT_EQ(c.token_ids, expected::LEN4_GREEDY);
}

TEST(Misuse, ForcedPanicIsAnInternalErrorAndTheProcessLives) {
    const std::string req = "{\"prompt\": \"x\", \"llmrt_test_panic\": true}";
    {
        Engine engine(options());
        Stream running = engine.generate(greedy(expected::LEN1_IDS, 480));
        unsetenv("LLMRT_TEST_HOOKS");
        EXPECT_LLMRT_ERROR(engine.generate(req), Status::InvalidRequest, "llmrt_test_panic");
        setenv("LLMRT_TEST_HOOKS", "1", 1);
        EXPECT_LLMRT_ERROR(engine.generate(req), Status::Internal, "test hook");
        unsetenv("LLMRT_TEST_HOOKS");
        EXPECT_LLMRT_ERROR(engine.generate("{\"prompt\": \"x\"}"), Status::Internal, "");
        EXPECT_LLMRT_ERROR(engine.generate(greedy(expected::LEN4_IDS, 4)), Status::Internal, "");
        // The running stream ends: with its final event, or with the engine's error.
        try {
            for (const Event& ev : running) (void)ev;
        } catch (const Error& e) {
            EXPECT_EQ(e.code(), Status::Internal);
        }
        EXPECT_TRUE(running.finished());
    }  // the engine that panicked is freed
    Engine engine(options());
    EXPECT_EQ(engine.generate(greedy(expected::LEN13_IDS, len(expected::LEN13_GREEDY))).collect().token_ids,
              expected::LEN13_GREEDY);
}

// ------------------------------------------------------------------ utilities --

TEST(Utilities, TokenizeDetokenizeTemplateMetrics) {
    Engine engine(options());
    std::vector<uint32_t> ids = engine.tokenize(expected::LEN4_TEXT, expected::LEN4_ADD_SPECIAL);
    EXPECT_EQ(ids, expected::LEN4_IDS);
    EXPECT_EQ(engine.detokenize(ids), expected::LEN4_TEXT);
    EXPECT_EQ(engine.detokenize(ids.data(), ids.size(), true), expected::LEN4_TEXT);
    EXPECT_TRUE(engine.tokenize("", false).empty());
    std::string chat = engine.apply_chat_template(
        "{\"messages\": " + expected::CHAT_MESSAGES_JSON + ", \"add_generation_prompt\": true}");
    EXPECT_EQ(chat, expected::CHAT_TEXT);
    EXPECT_EQ(engine.tokenize(chat, expected::CHAT_ADD_SPECIAL), expected::CHAT_IDS);
    engine.generate(greedy(expected::LEN4_IDS, 8)).collect();
    std::string m = engine.metrics_json();
    EXPECT_EQ(m.front(), '{');
    EXPECT_EQ(metric(m, "generation_tokens"), 8u);
    EXPECT_NE(engine.metrics_prometheus().find("# TYPE llmrt_"), std::string::npos);
    EXPECT_NE(engine.model_info().find("\"architecture\":\"LlamaForCausalLM\""), std::string::npos);
}

TEST(RawPoll, SubmitPollAndEventFd) {
    Engine engine(options());
    int fd = engine.event_fd();
    ASSERT_GE(fd, 0);
    EXPECT_EQ(engine.event_fd(), fd);
    uint64_t id = engine.submit(greedy(expected::LEN13_IDS, len(expected::LEN13_GREEDY)), 0xfeedULL);
    std::vector<uint32_t> tokens;
    int finals = 0;
    auto deadline = std::chrono::steady_clock::now() + 120s;
    while (finals == 0 && std::chrono::steady_clock::now() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        if (::poll(&p, 1, 10000) != 1) break;  // wait as an event loop would
        for (;;) {
            std::vector<Event> batch = engine.poll(4, 0ms);
            for (const Event& ev : batch) {
                EXPECT_EQ(ev.request_id, id);
                EXPECT_EQ(ev.user_tag, 0xfeedULL);
                tokens.insert(tokens.end(), ev.token_ids.begin(), ev.token_ids.end());
                finals += ev.is_final();
            }
            if (batch.empty()) break;
        }
    }
    EXPECT_EQ(finals, 1);
    EXPECT_EQ(tokens, expected::LEN13_GREEDY);
    EXPECT_LLMRT_ERROR(engine.poll(0, 0ms), Status::InvalidArgument, "max_events");
    // Stopped: pending events, then ENGINE_STOPPED.
    engine.submit(greedy(expected::LEN1_IDS, 480), 1);
    engine.stop();
    int stopped_finals = 0;
    for (;;) {
        try {
            for (const Event& ev : engine.poll(64, 1000ms)) stopped_finals += ev.is_final();
        } catch (const Error& e) {
            EXPECT_EQ(e.code(), Status::EngineStopped);
            break;
        }
    }
    EXPECT_EQ(stopped_finals, 1);
    // Once generate() routes the events, raw polling is refused.
    Engine routed(options());
    routed.generate(greedy(expected::LEN4_IDS, 2)).collect();
    EXPECT_THROW(routed.poll(1, 0ms), std::logic_error);
}

// ------------------------------------------------------------------- lifetime --

TEST(Lifetime, EngineDestroyedWhileRequestsRun) {
    std::optional<Engine> engine(std::in_place, options());
    constexpr int N = 4;
    std::vector<Stream> streams;
    for (int i = 0; i < N; i++) streams.push_back(engine->generate(greedy(expected::LEN1_IDS, 480)));
    Stream unread = engine->generate(greedy(expected::LEN4_IDS, 480));
    std::promise<FinishReason> cb_final;
    engine->generate(greedy(expected::LEN13_IDS, 480), [&](const Event& ev) {
        if (ev.is_final()) cb_final.set_value(ev.finish_reason);
    });
    std::atomic<int> started{0};
    std::vector<Outcome> outs(N);
    std::vector<std::thread> threads;
    for (int i = 0; i < N; i++)
        threads.emplace_back([&, i] {
            bool first = true;
            for (const Event& ev : streams[i]) {
                if (first) started++, first = false;
                outs[i].finals += ev.is_final();
                outs[i].tokens.insert(outs[i].tokens.end(), ev.token_ids.begin(), ev.token_ids.end());
                if (ev.is_final()) outs[i].reason = ev.finish_reason;
            }
        });
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (started < N && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
    engine.reset();  // stops, aborts what runs, joins, frees: returns only after all that
    // The callback's final event came before the destructor returned.
    std::future<FinishReason> f = cb_final.get_future();
    ASSERT_EQ(f.wait_for(0s), std::future_status::ready);
    FinishReason cr = f.get();
    EXPECT_TRUE(cr == FinishReason::Abort || cr == FinishReason::Length);
    for (auto& t : threads) t.join();
    int aborts = 0;
    for (int i = 0; i < N; i++) {
        aborts += outs[i].reason == FinishReason::Abort;
        EXPECT_EQ(outs[i].finals, 1) << i;
        EXPECT_TRUE(outs[i].reason == FinishReason::Abort || outs[i].reason == FinishReason::Length);
        EXPECT_LE(outs[i].tokens.size(), 480u);
    }
    EXPECT_GT(aborts, 0);  // they had 479 tokens to go: the destructor stopped them
    // A stream read only after its engine is gone still yields its events and final.
    Outcome late = consume(unread);
    EXPECT_EQ(late.finals, 1);
    EXPECT_TRUE(late.reason == FinishReason::Abort || late.reason == FinishReason::Length);
    unread.abort();  // the engine is gone: a no-op
    streams.clear();
}

TEST(Lifetime, DroppingAStreamAbortsItsRequest) {
    Engine engine(options());
    {
        Stream s = engine.generate(greedy(expected::LEN1_IDS, 500));
        ASSERT_TRUE(s.next().has_value());
    }  // dropped unfinished: aborted
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (metric(engine.metrics_json(), "num_requests_running") != 0 &&
           std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(5ms);
    EXPECT_EQ(metric(engine.metrics_json(), "num_requests_running"), 0u);
    EXPECT_LT(metric(engine.metrics_json(), "generation_tokens"), 500u);
    // A stream aborted explicitly ends with its (abort) final event.
    Stream s = engine.generate(greedy(expected::LEN1_IDS, 500));
    s.abort();
    Outcome out = consume(s);
    EXPECT_EQ(out.finals, 1);
    EXPECT_EQ(out.reason, FinishReason::Abort);
    EXPECT_LT(out.tokens.size(), 500u);
    EXPECT_EQ(engine.generate(greedy(expected::LEN4_IDS, len(expected::LEN4_GREEDY))).collect().token_ids,
              expected::LEN4_GREEDY);
}

TEST(Lifetime, StopEndsStreamsAndRefusesNewWork) {
    Engine engine(options());
    std::vector<Stream> streams;
    for (int i = 0; i < 3; i++) streams.push_back(engine.generate(greedy(expected::LEN13_IDS, 300)));
    engine.stop();
    engine.stop();  // idempotent
    for (Stream& s : streams) {
        Outcome out = consume(s);
        EXPECT_EQ(out.finals, 1);
        EXPECT_TRUE(out.reason == FinishReason::Abort || out.reason == FinishReason::Length);
    }
    EXPECT_LLMRT_ERROR(engine.generate(greedy(expected::LEN4_IDS, 4)), Status::EngineStopped, "");
    EXPECT_LLMRT_ERROR(engine.generate("{\"prompt\": \"x\"}"), Status::EngineStopped, "");
    EXPECT_EQ(engine.tokenize(expected::LEN4_TEXT, expected::LEN4_ADD_SPECIAL), expected::LEN4_IDS);
}

TEST(Raii, EngineAndStreamAreMoveOnly) {
    static_assert(!std::is_copy_constructible_v<Engine> && !std::is_copy_assignable_v<Engine>);
    static_assert(std::is_nothrow_move_constructible_v<Engine>);
    static_assert(!std::is_copy_constructible_v<Stream> && !std::is_copy_assignable_v<Stream>);
    static_assert(std::is_nothrow_move_constructible_v<Stream> && std::is_nothrow_move_assignable_v<Stream>);

    Engine a(options());
    llmrt_engine* handle = a.native_handle();
    Stream live = a.generate(greedy(expected::LEN13_IDS, len(expected::LEN13_GREEDY)));
    Engine b(std::move(a));
    EXPECT_FALSE(a.valid());
    EXPECT_FALSE(static_cast<bool>(a));
    EXPECT_EQ(a.native_handle(), nullptr);
    EXPECT_EQ(b.native_handle(), handle);
    // A moved-from engine reports errors, it does not crash.
    EXPECT_LLMRT_ERROR(a.tokenize("x"), Status::InvalidArgument, "engine");
    EXPECT_LLMRT_ERROR(a.submit("{\"prompt\": \"x\"}"), Status::InvalidArgument, "engine");
    EXPECT_LLMRT_ERROR(a.generate("{\"prompt\": \"x\"}"), Status::InvalidArgument, "engine");
    EXPECT_LLMRT_ERROR(a.stop(), Status::InvalidArgument, "engine");
    // Streams follow their engine through moves.
    Stream moved(std::move(live));
    EXPECT_TRUE(live.finished());
    EXPECT_FALSE(live.next().has_value());
    EXPECT_EQ(live.begin(), live.end());
    Stream assigned;
    assigned = std::move(moved);
    EXPECT_EQ(consume(assigned).tokens, expected::LEN13_GREEDY);

    // Move-assigning over an engine frees the old one: its running request is aborted.
    Engine c(options());
    Stream old = c.generate(greedy(expected::LEN1_IDS, 480));
    c = std::move(b);
    EXPECT_EQ(c.native_handle(), handle);
    Outcome out = consume(old);
    EXPECT_EQ(out.finals, 1);
    EXPECT_TRUE(out.reason == FinishReason::Abort || out.reason == FinishReason::Length);
    EXPECT_EQ(c.generate(greedy(expected::LEN4_IDS, len(expected::LEN4_GREEDY))).collect().token_ids,
              expected::LEN4_GREEDY);
    // Assigning a moved-from engine leaves an empty one.
    c = std::move(a);
    EXPECT_FALSE(c.valid());
}

// ---------------------------------------------------------------- concurrency --

TEST(Concurrency, StreamsFromThreadsGetTheirOwnTokens) {
    Engine engine(options());
    struct Case {
        const std::vector<uint32_t>* ids;
        const std::vector<uint32_t>* greedy;
    };
    const Case cases[] = {{&expected::LEN1_IDS, &expected::LEN1_GREEDY},
                          {&expected::LEN4_IDS, &expected::LEN4_GREEDY},
                          {&expected::LEN13_IDS, &expected::LEN13_GREEDY},
                          {&expected::CHAT_IDS, &expected::CHAT_GREEDY}};
    constexpr int THREADS = 8, PER_THREAD = 3;
    std::mutex mu;
    std::set<uint64_t> ids;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < THREADS; t++)
        threads.emplace_back([&, t] {
            for (int k = 0; k < PER_THREAD; k++) {
                const Case& c = cases[(t + k) % 4];
                Stream s = (t + k) % 2 == 0
                               ? engine.generate(greedy(*c.ids, len(*c.greedy)))
                               : engine.generate("{\"prompt_token_ids\": " + ids_json(*c.ids) +
                                                 ", \"temperature\": 0, \"ignore_eos\": true, "
                                                 "\"max_tokens\": " +
                                                 std::to_string(c.greedy->size()) + "}");
                {
                    std::lock_guard<std::mutex> lock(mu);
                    ids.insert(s.id());
                }
                Outcome out = consume(s);
                if (out.tokens != *c.greedy || out.finals != 1 || out.reason != FinishReason::Length)
                    failures++;
            }
        });
    for (auto& t : threads) t.join();
    EXPECT_EQ(failures, 0);
    EXPECT_EQ(ids.size(), static_cast<size_t>(THREADS * PER_THREAD));
}

TEST(Concurrency, RandomAbortsStillGiveOneFinalEach) {
    Engine engine(config_json("\"max_num_seqs\": 32"));
    constexpr int THREADS = 4, PER_THREAD = 40;
    std::atomic<int> failures{0}, aborted{0}, callbacks_done{0}, callbacks_submitted{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < THREADS; t++)
        threads.emplace_back([&, t] {
            std::mt19937 rng(1234 + t);
            std::vector<Stream> pending;
            for (int k = 0; k < PER_THREAD; k++) {
                std::vector<uint32_t> prompt(1 + rng() % 16);
                for (auto& id : prompt) id = 4 + rng() % 500;
                int32_t max_tokens = 1 + static_cast<int32_t>(rng() % 12);
                int mode = static_cast<int>(rng() % 8);
                if (mode == 7) {  // the callback form
                    auto finals = std::make_shared<std::atomic<int>>(0);
                    callbacks_submitted++;
                    engine.generate(greedy(prompt, max_tokens), [&, finals](const Event& ev) {
                        if (ev.is_final() && ++*finals == 1) callbacks_done++;
                        if (*finals > 1) failures++;
                    });
                    continue;
                }
                Stream s = engine.generate(greedy(prompt, max_tokens));
                if (mode == 0) {
                    s.abort();
                    aborted++;
                }
                if (mode == 1) continue;  // dropped at once: aborted by its destructor
                pending.push_back(std::move(s));
                if (pending.size() >= 4 || k == PER_THREAD - 1) {
                    for (Stream& p : pending) {
                        Outcome out = consume(p);
                        if (out.finals != 1) failures++;
                        if (out.reason != FinishReason::Length && out.reason != FinishReason::Abort) failures++;
                        if (out.tokens.size() > 12) failures++;
                    }
                    pending.clear();
                }
            }
        });
    for (auto& t : threads) t.join();
    EXPECT_EQ(failures, 0);
    EXPECT_GT(aborted, 0);
    // The callbacks' finals all come (the destructor would also deliver them).
    auto deadline = std::chrono::steady_clock::now() + 60s;
    int submitted_callbacks = callbacks_submitted;
    while (callbacks_done < submitted_callbacks && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(5ms);
    EXPECT_EQ(callbacks_done, submitted_callbacks);
    EXPECT_EQ(failures, 0);
}

// ---------------------------------------------- sequences, logprobs, parsers --

namespace {

// A greedy JSON request for `ids` with further fields (`extra`: members, no braces).
std::string greedy_json(const std::vector<uint32_t>& ids, size_t max_tokens,
                        const std::string& extra) {
    return "{\"prompt_token_ids\": " + ids_json(ids) +
           ", \"temperature\": 0, \"ignore_eos\": true, \"max_tokens\": " +
           std::to_string(max_tokens) + (extra.empty() ? "" : ", " + extra) + "}";
}

std::vector<Event> events_of(Stream& stream) {
    std::vector<Event> events;
    for (const Event& ev : stream) events.push_back(ev);
    EXPECT_TRUE(stream.finished());
    return events;
}

// The concatenated "arguments" string values of a tool-call JSON array (it reads only the
// escapes of quotes and backslashes, all these tests' arguments hold).
std::string tool_call_arguments(const std::string& json) {
    std::string out;
    const std::string key = "\"arguments\":\"";
    for (size_t at = json.find(key); at != std::string::npos; at = json.find(key, at)) {
        at += key.size();
        while (at < json.size() && json[at] != '"') {
            if (json[at] == '\\' && at + 1 < json.size()) at++;
            out += json[at++];
        }
    }
    return out;
}

}  // namespace

TEST(Sequences, NTwoGreedyGivesTheReferenceTwiceWithPerSequenceEnds) {
    Engine engine(options());
    const auto& want = expected::LEN4_GREEDY;
    const std::string req = greedy_json(expected::LEN4_IDS, want.size(), "\"n\": 2");
    // Event by event: indexes 0 and 1, each sequence ends once, one final event, last.
    Stream stream = engine.generate(req);
    std::vector<Event> events = events_of(stream);
    ASSERT_FALSE(events.empty());
    EXPECT_TRUE(events.back().is_final());
    std::vector<uint32_t> tokens[2];
    std::string texts[2];
    int ends[2] = {0, 0};
    for (const Event& ev : events) {
        EXPECT_EQ(ev.request_id, stream.id());
        ASSERT_LT(ev.index, 2u);
        EXPECT_EQ(ends[ev.index], 0) << "an event after its sequence ended";
        tokens[ev.index].insert(tokens[ev.index].end(), ev.token_ids.begin(), ev.token_ids.end());
        texts[ev.index] += ev.text;
        if (ev.finish_reason != FinishReason::None) {
            EXPECT_EQ(ev.finish_reason, FinishReason::Length);
            ends[ev.index]++;
        }
        EXPECT_EQ(ev.usage.has_value(), ev.is_final());
        if (ev.is_final()) { EXPECT_NE(ev.finish_reason, FinishReason::None); }
    }
    EXPECT_EQ(ends[0], 1);
    EXPECT_EQ(ends[1], 1);
    EXPECT_EQ(std::count_if(events.begin(), events.end(), [](const Event& e) { return e.is_final(); }), 1);
    EXPECT_EQ(tokens[0], want);
    EXPECT_EQ(tokens[1], want);
    EXPECT_EQ(texts[0], engine.detokenize(want));
    EXPECT_EQ(texts[1], texts[0]);
    EXPECT_EQ(events.back().usage->completion_tokens, 2 * want.size());
    EXPECT_EQ(events.back().usage->prompt_tokens, expected::LEN4_IDS.size());

    // Gathered: one Sequence per index; the top-level fields are sequence 0's.
    llmrt::Completion c = engine.generate(req).collect();
    ASSERT_EQ(c.sequences.size(), 2u);
    for (uint32_t i = 0; i < 2; i++) {
        EXPECT_EQ(c.sequences[i].index, i);
        EXPECT_EQ(c.sequences[i].token_ids, want);
        EXPECT_EQ(c.sequences[i].text, texts[0]);
        EXPECT_EQ(c.sequences[i].finish_reason, FinishReason::Length);
        EXPECT_FALSE(c.sequences[i].cumulative_logprob.has_value());
    }
    EXPECT_EQ(c.token_ids, want);
    EXPECT_EQ(c.text, texts[0]);
    EXPECT_EQ(c.finish_reason, FinishReason::Length);
    EXPECT_EQ(c.usage.completion_tokens, 2 * want.size());
    EXPECT_GE(c.num_events, 2u);
}

TEST(Sequences, BestOfAndBeamSearchReportCumulativeLogprobs) {
    Engine engine(options());
    const auto& want = expected::LEN4_GREEDY;
    // best_of > n computes logprobs to rank: greedy sequences all equal the reference.
    llmrt::Completion best =
        engine.generate(greedy_json(expected::LEN4_IDS, 8, "\"n\": 2, \"best_of\": 3")).collect();
    ASSERT_EQ(best.sequences.size(), 2u);
    for (const llmrt::Sequence& seq : best.sequences) {
        EXPECT_EQ(seq.token_ids, std::vector<uint32_t>(want.begin(), want.begin() + 8));
        ASSERT_TRUE(seq.cumulative_logprob.has_value());
        EXPECT_LT(*seq.cumulative_logprob, 0.0);
        EXPECT_TRUE(seq.logprobs.empty());  // not asked for
    }
    // Beam search: n sequences, best first.
    llmrt::Completion beam = engine
        .generate("{\"prompt_token_ids\": " + ids_json(expected::LEN4_IDS) +
                  ", \"ignore_eos\": true, \"max_tokens\": 6, \"n\": 2, \"beam_width\": 2, "
                  "\"length_penalty\": 1.0}")
        .collect();
    ASSERT_EQ(beam.sequences.size(), 2u);
    for (const llmrt::Sequence& seq : beam.sequences) {
        EXPECT_EQ(seq.token_ids.size(), 6u);
        EXPECT_EQ(seq.finish_reason, FinishReason::Length);
        EXPECT_TRUE(seq.cumulative_logprob.has_value());
    }
    ASSERT_TRUE(beam.sequences[0].cumulative_logprob && beam.sequences[1].cumulative_logprob);
    EXPECT_GE(*beam.sequences[0].cumulative_logprob, *beam.sequences[1].cumulative_logprob);
}

TEST(Logprobs, GreedyTokensAreRankOneAndMatchTheReference) {
    Engine engine(options());
    const auto& prompt = expected::LEN13_IDS;
    const auto& want = expected::LEN13_GREEDY;
    Stream stream = engine.generate(
        greedy_json(prompt, want.size(), "\"logprobs\": 5, \"prompt_logprobs\": 2"));
    std::vector<Event> events = events_of(stream);
    ASSERT_FALSE(events.empty());
    // Every token: rank 1, first of its top 5, whose logprobs match transformers'; each
    // event's cumulative logprob is the running sum.
    std::vector<uint32_t> tokens;
    std::vector<llmrt::TokenLogprob> lps;
    double sum = 0.0;
    for (const Event& ev : events) {
        ASSERT_EQ(ev.logprobs.size(), ev.token_ids.size());
        for (size_t i = 0; i < ev.token_ids.size(); i++) {
            const llmrt::TokenLogprob& lp = ev.logprobs[i];
            EXPECT_EQ(lp.token_id, ev.token_ids[i]);
            sum += lp.logprob;
            tokens.push_back(ev.token_ids[i]);
            lps.push_back(lp);
        }
        if (!ev.token_ids.empty()) {
            ASSERT_TRUE(ev.cumulative_logprob.has_value());
            EXPECT_NEAR(*ev.cumulative_logprob, sum, 1e-4);
        }
        if (&ev != &events.front()) { EXPECT_TRUE(ev.prompt_logprobs.empty()); }
    }
    ASSERT_EQ(tokens, want);
    for (size_t t = 0; t < lps.size(); t++) {
        SCOPED_TRACE("greedy step " + std::to_string(t));
        const llmrt::TokenLogprob& lp = lps[t];
        EXPECT_EQ(lp.rank, 1u);
        ASSERT_EQ(lp.top.size(), 5u);
        EXPECT_EQ(lp.top[0].token_id, lp.token_id);
        EXPECT_EQ(lp.top[0].logprob, lp.logprob);
        EXPECT_LE(lp.logprob, 0.0f);
        EXPECT_EQ(lp.token_id, expected::LEN13_GREEDY_TOP_IDS[t][0]);
        for (size_t k = 0; k < 5; k++) {
            EXPECT_EQ(lp.top[k].rank, k + 1);
            if (k > 0) { EXPECT_LE(lp.top[k].logprob, lp.top[k - 1].logprob); }
            EXPECT_NEAR(lp.top[k].logprob, expected::LEN13_GREEDY_TOP_LOGPROBS[t][k], 1e-3);
        }
    }
    // Prompt logprobs, on the first event: one per prompt token after the first.
    const std::vector<llmrt::TokenLogprob>& plp = events.front().prompt_logprobs;
    ASSERT_EQ(plp.size(), prompt.size() - 1);
    for (size_t i = 0; i < plp.size(); i++) {
        SCOPED_TRACE("prompt entry " + std::to_string(i));
        EXPECT_EQ(plp[i].token_id, prompt[i + 1]);
        EXPECT_GE(plp[i].rank, 1u);
        EXPECT_LE(plp[i].logprob, 0.0f);
        ASSERT_EQ(plp[i].top.size(), 2u);
        // After reading prompt[0..=i]: the reference's top tokens.
        EXPECT_EQ(plp[i].top[0].token_id, expected::LEN13_PROMPT_TOP_IDS[i][0]);
        EXPECT_NEAR(plp[i].top[0].logprob, expected::LEN13_PROMPT_TOP_LOGPROBS[i][0], 1e-3);
        EXPECT_NEAR(plp[i].top[1].logprob, expected::LEN13_PROMPT_TOP_LOGPROBS[i][1], 1e-3);
        EXPECT_EQ(plp[i].top[0].rank, 1u);
        EXPECT_LE(plp[i].logprob, plp[i].top[0].logprob + 1e-6f);
        if (plp[i].rank == 1) { EXPECT_EQ(plp[i].top[0].token_id, plp[i].token_id); }
    }

    // collect() gathers the same, per sequence; the raw poll path copies the same fields.
    llmrt::Completion c = engine.generate(
        greedy_json(prompt, want.size(), "\"logprobs\": 0, \"prompt_logprobs\": 0")).collect();
    ASSERT_EQ(c.sequences.size(), 1u);
    EXPECT_EQ(c.token_ids, want);
    ASSERT_EQ(c.logprobs.size(), want.size());
    double total = 0.0;
    for (size_t t = 0; t < c.logprobs.size(); t++) {
        EXPECT_EQ(c.logprobs[t].rank, 1u);
        EXPECT_TRUE(c.logprobs[t].top.empty());  // logprobs: 0 -> no alternatives
        EXPECT_NEAR(c.logprobs[t].logprob, lps[t].logprob, 1e-5);
        total += c.logprobs[t].logprob;
    }
    ASSERT_TRUE(c.sequences[0].cumulative_logprob.has_value());
    EXPECT_NEAR(*c.sequences[0].cumulative_logprob, total, 1e-4);
    ASSERT_EQ(c.prompt_logprobs.size(), prompt.size() - 1);
    for (size_t i = 0; i < c.prompt_logprobs.size(); i++) {
        EXPECT_EQ(c.prompt_logprobs[i].token_id, prompt[i + 1]);
        EXPECT_NEAR(c.prompt_logprobs[i].logprob, plp[i].logprob, 1e-5);
        EXPECT_TRUE(c.prompt_logprobs[i].top.empty());
    }

    Engine raw(options());
    uint64_t id = raw.submit(greedy_json(expected::LEN4_IDS, 4, "\"n\": 2, \"logprobs\": 1"), 7);
    std::vector<Event> polled;
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while ((polled.empty() || !polled.back().is_final()) && std::chrono::steady_clock::now() < deadline)
        for (Event& ev : raw.poll(16, 100ms)) polled.push_back(std::move(ev));
    ASSERT_FALSE(polled.empty());
    ASSERT_TRUE(polled.back().is_final());
    std::set<uint32_t> indexes;
    for (const Event& ev : polled) {
        EXPECT_EQ(ev.request_id, id);
        EXPECT_EQ(ev.user_tag, 7u);
        indexes.insert(ev.index);
        ASSERT_EQ(ev.logprobs.size(), ev.token_ids.size());
        for (const llmrt::TokenLogprob& lp : ev.logprobs) {
            EXPECT_EQ(lp.rank, 1u);
            ASSERT_EQ(lp.top.size(), 1u);
            EXPECT_EQ(lp.top[0].token_id, lp.token_id);
        }
    }
    EXPECT_EQ(indexes, (std::set<uint32_t>{0, 1}));
}

TEST(Events, StopStringIsReported) {
    Engine engine(options());
    const auto& want = expected::LEN4_GREEDY;
    const std::string full = engine.detokenize(want);
    // A two-character stop string from the reference continuation, past its start.
    size_t at = 2;
    while (at + 1 < full.size() &&
           !(std::isalpha(static_cast<unsigned char>(full[at])) &&
             std::isalpha(static_cast<unsigned char>(full[at + 1]))))
        at++;
    ASSERT_LT(at + 1, full.size()) << "no letters in \"" << full << "\"";
    const std::string stop = full.substr(at, 2);
    const size_t first = full.find(stop);
    llmrt::Completion c = engine
        .generate(greedy_json(expected::LEN4_IDS, want.size(),
                              "\"stop\": [" + llmrt::json_string(stop) + "]"))
        .collect();
    EXPECT_EQ(c.finish_reason, FinishReason::Stop);
    ASSERT_EQ(c.sequences.size(), 1u);
    ASSERT_TRUE(c.sequences[0].stop_string.has_value());
    EXPECT_EQ(*c.sequences[0].stop_string, stop);
    EXPECT_FALSE(c.stop_token_id.has_value());
    EXPECT_EQ(c.text, full.substr(0, first));  // the text ends before the stop string
    ASSERT_LE(c.token_ids.size(), want.size());
    EXPECT_TRUE(std::equal(c.token_ids.begin(), c.token_ids.end(), want.begin()));
    // The event that carries it is the final one.
    Stream s = engine.generate(greedy_json(expected::LEN4_IDS, want.size(),
                                           "\"stop\": [" + llmrt::json_string(stop) + "]"));
    std::vector<Event> events = events_of(s);
    ASSERT_FALSE(events.empty());
    for (size_t i = 0; i + 1 < events.size(); i++) EXPECT_FALSE(events[i].stop_string.has_value());
    ASSERT_TRUE(events.back().stop_string.has_value());
    EXPECT_EQ(*events.back().stop_string, stop);
}

TEST(Events, ReasoningAndToolCallParsers) {
    Engine engine(options());
    const auto& want = expected::LEN4_GREEDY;
    const std::string full = engine.detokenize(want);
    ASSERT_EQ(full.find("</think>"), std::string::npos);
    // deepseek_r1 starts in reasoning: with no "</think>", all the text is reasoning.
    llmrt::Completion r = engine
        .generate(greedy_json(expected::LEN4_IDS, want.size(),
                              "\"reasoning_parser\": \"deepseek_r1\""))
        .collect();
    EXPECT_EQ(r.token_ids, want);
    ASSERT_EQ(r.sequences.size(), 1u);
    EXPECT_EQ(r.sequences[0].reasoning, full);
    EXPECT_TRUE(r.text.empty());

    // A tool call forced by a structured output, parsed by the hermes parser.
    const std::string call = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
    Stream s = engine.generate(
        "{\"prompt_token_ids\": " + ids_json(expected::LEN4_IDS) +
        ", \"temperature\": 0, \"max_tokens\": 100, \"tool_call_parser\": \"hermes\", "
        "\"structured_outputs\": {\"choice\": [" + llmrt::json_string(call) + "]}}");
    std::vector<Event> events = events_of(s);
    std::string text, pieces;
    for (const Event& ev : events) {
        text += ev.text;
        if (!ev.tool_calls_json) continue;
        EXPECT_EQ(ev.tool_calls_json->front(), '[');
        EXPECT_EQ(ev.tool_calls_json->back(), ']');
        pieces += *ev.tool_calls_json;
    }
    EXPECT_EQ(text.find("<tool_call>"), std::string::npos) << text;
    EXPECT_NE(pieces.find("\"name\":\"f\""), std::string::npos) << pieces;
    EXPECT_NE(pieces.find("\"id\":\"call_"), std::string::npos) << pieces;
    EXPECT_EQ(tool_call_arguments(pieces), "{\"a\":1}") << pieces;
    // collect() joins a sequence's pieces into one JSON array.
    llmrt::Completion c = engine
        .generate("{\"prompt_token_ids\": " + ids_json(expected::LEN4_IDS) +
                  ", \"temperature\": 0, \"max_tokens\": 100, \"tool_call_parser\": \"hermes\", "
                  "\"structured_outputs\": {\"choice\": [" + llmrt::json_string(call) + "]}}")
        .collect();
    ASSERT_EQ(c.sequences.size(), 1u);
    ASSERT_TRUE(c.sequences[0].tool_calls_json.has_value());
    const std::string& joined = *c.sequences[0].tool_calls_json;
    EXPECT_EQ(joined.front(), '[');
    EXPECT_EQ(joined.back(), ']');
    EXPECT_EQ(joined.find("]["), std::string::npos);
    EXPECT_EQ(tool_call_arguments(joined), "{\"a\":1}") << joined;
}
