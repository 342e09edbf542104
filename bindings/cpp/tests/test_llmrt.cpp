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
        EXPECT_TRUE(ev.logprobs.empty());
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
