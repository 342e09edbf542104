// llmrt.hpp: a header-only C++17 wrapper of the llmrt C API (include/llmrt.h).
//
// It adds RAII ownership, exceptions and value types to the C API and nothing else: every
// call below is one C call (its contract, including the error codes it can return, is the
// comment of that function in llmrt.h), plus the plumbing C++ needs to consume events:
//
//   llmrt::Engine engine(llmrt::Options{"path/to/model"});
//   llmrt::Stream stream = engine.generate(R"({"prompt": "Hello", "max_tokens": 16})");
//   for (const llmrt::Event& ev : stream) std::cout << ev.text << std::flush;
//
// - `llmrt::Error` (a std::runtime_error) carries the `llmrt::Status` code and the
//   library's message. `llmrt::attempt(f)` turns a throwing call into a `Result<T>` for
//   code that prefers expected-style values.
// - `Engine` is move-only; its destructor stops the engine (every running request gets
//   its final `FinishReason::Abort` event), joins the internal poller and frees it.
// - `Engine::generate` submits a request (JSON, or token ids through the JSON-free
//   `llmrt_engine_submit_tokens`) and returns a `Stream` of that request's events, which
//   ends after the final event; or, given a callback, calls it for each event on the
//   engine's poller thread. Streams may be consumed from any threads, one thread per
//   stream at a time. A stream dropped before its final event aborts its request.
// - `Event` is a value copy of everything the C accessors give for one event: tokens and
//   text, finish reason, usage, and what the request asked for: the sequence `index` (n > 1,
//   best_of, beam search), logprobs with their top alternatives, the cumulative logprob,
//   prompt logprobs, the stop string, reasoning text and tool-call pieces (raw JSON).
//   `Stream::collect` gathers a request's events per sequence into a `Completion`. Request
//   fields (`n`, `logprobs`, `stop`, `reasoning_parser`, ...) are the request JSON's.
// - One internal thread per engine (started by the first `generate`) polls the engine and
//   routes each event to its request's stream by the user tag it was submitted with.
//   `Engine::submit`/`Engine::poll` are the raw C calls for hosts that poll themselves
//   (e.g. on `event_fd()` in their own event loop): use either those or `generate` on one
//   engine, not both.
//
// Link with -lllmrt (target/<profile>/libllmrt.so, or an installed libllmrt.so.0) and
// -pthread.
#ifndef LLMRT_HPP
#define LLMRT_HPP

#include "llmrt.h"

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace llmrt {

// ------------------------------------------------------------------------- codes --

/// `llmrt_status`, value for value.
enum class Status : int32_t {
    Ok = LLMRT_OK,
    InvalidArgument = LLMRT_ERROR_INVALID_ARGUMENT,
    InvalidJson = LLMRT_ERROR_INVALID_JSON,
    InvalidRequest = LLMRT_ERROR_INVALID_REQUEST,
    InvalidConfig = LLMRT_ERROR_INVALID_CONFIG,
    InvalidModel = LLMRT_ERROR_INVALID_MODEL,
    Unsupported = LLMRT_ERROR_UNSUPPORTED,
    Io = LLMRT_ERROR_IO,
    Tokenizer = LLMRT_ERROR_TOKENIZER,
    Template = LLMRT_ERROR_TEMPLATE,
    EngineStopped = LLMRT_ERROR_ENGINE_STOPPED,
    Internal = LLMRT_ERROR_INTERNAL,
    Cancelled = LLMRT_ERROR_CANCELLED,
};

/// `llmrt_kind`.
enum class EventKind : int32_t {
    Token = LLMRT_EVENT_TOKEN,
    Final = LLMRT_EVENT_FINAL,
};

/// `llmrt_reason`.
enum class FinishReason : int32_t {
    None = LLMRT_FINISH_NONE,
    Stop = LLMRT_FINISH_STOP,
    Length = LLMRT_FINISH_LENGTH,
    Abort = LLMRT_FINISH_ABORT,
    Error = LLMRT_FINISH_ERROR,
};

/// The static name of a code ("LLMRT_ERROR_INVALID_JSON", ...): `llmrt_error_code_name`.
inline const char* to_string(Status code) noexcept {
    return llmrt_error_code_name(static_cast<int32_t>(code));
}

/// vLLM's name of a finish reason: "stop", "length", "abort", "error"; "" for None.
inline const char* to_string(FinishReason reason) noexcept {
    switch (reason) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    case FinishReason::Error: return "error";
    default: return "";
    }
}

// ------------------------------------------------------------------------ errors --

/// An error from llmrt: its code and message. `what()` is "CODE_NAME: message".
class Error : public std::runtime_error {
public:
    Error(Status code, const std::string& message)
        : std::runtime_error(std::string(to_string(code)) + ": " + message),
          code_(code),
          message_(std::make_shared<const std::string>(message)) {}

    /// The llmrt status code.
    Status code() const noexcept { return code_; }
    /// The static name of the code, e.g. "LLMRT_ERROR_INVALID_REQUEST".
    const char* code_name() const noexcept { return to_string(code_); }
    /// The library's message (it names the offending argument or JSON field).
    const std::string& message() const noexcept { return *message_; }

private:
    Status code_;
    std::shared_ptr<const std::string> message_;  // shared: copying an Error never throws
};

namespace detail {

/// Takes ownership of `err`: frees it and, when it is not NULL, throws it as an Error.
inline void check(llmrt_error* err) {
    if (err == nullptr) return;
    Status code = static_cast<Status>(llmrt_error_code(err));
    std::string message = llmrt_error_message(err);
    llmrt_error_free(err);
    throw Error(code, message);
}

struct StringDeleter {
    void operator()(char* s) const noexcept { llmrt_string_free(s); }
};
struct TokensDeleter {
    void operator()(uint32_t* p) const noexcept { llmrt_tokens_free(p); }
};
struct EventsDeleter {
    void operator()(llmrt_events* p) const noexcept { llmrt_events_free(p); }
};
using unique_string = std::unique_ptr<char, StringDeleter>;
using unique_tokens = std::unique_ptr<uint32_t, TokensDeleter>;
using unique_events = std::unique_ptr<llmrt_events, EventsDeleter>;

}  // namespace detail

/// An expected-style value: a T or the Error that prevented it. Build one with
/// `llmrt::attempt`.
template <class T>
class Result {
public:
    Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
    Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

    bool ok() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }
    /// `Status::Ok`, or the error's code.
    Status status() const noexcept { return ok() ? Status::Ok : std::get<1>(v_).code(); }

    /// The value; throws the Error if there is none.
    T& value() & {
        if (!ok()) throw std::get<1>(v_);
        return std::get<0>(v_);
    }
    const T& value() const& {
        if (!ok()) throw std::get<1>(v_);
        return std::get<0>(v_);
    }
    T&& value() && {
        if (!ok()) throw std::get<1>(v_);
        return std::get<0>(std::move(v_));
    }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    /// The error; only when `!ok()` (else std::bad_variant_access).
    const Error& error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

template <>
class Result<void> {
public:
    Result() = default;
    Result(Error error) : error_(std::move(error)) {}

    bool ok() const noexcept { return !error_.has_value(); }
    explicit operator bool() const noexcept { return ok(); }
    Status status() const noexcept { return ok() ? Status::Ok : error_->code(); }
    void value() const {
        if (error_) throw *error_;
    }
    const Error& error() const { return error_.value(); }

private:
    std::optional<Error> error_;
};

/// Calls `f()` and returns its value, or the `llmrt::Error` it threw, as a Result (other
/// exceptions pass through):
///
///   llmrt::Result<llmrt::Engine> engine = llmrt::attempt([&] { return llmrt::Engine(cfg); });
///   if (!engine) log(engine.error().what());
template <class F>
auto attempt(F&& f) -> Result<std::invoke_result_t<F>> {
    using T = std::invoke_result_t<F>;
    try {
        if constexpr (std::is_void_v<T>) {
            std::forward<F>(f)();
            return Result<void>();
        } else {
            return Result<T>(std::forward<F>(f)());
        }
    } catch (const Error& e) {
        return Result<T>(e);
    }
}

// --------------------------------------------------------------- library facts --

/// The library's version, e.g. "0.1.0" (`llmrt_version`).
inline std::string_view version() noexcept { return llmrt_version(); }

/// The ABI version of the loaded library (`llmrt_abi_version`); a host checks it equals
/// `LLMRT_ABI_VERSION`, the header's.
inline uint32_t abi_version() noexcept { return llmrt_abi_version(); }

/// What this build can do, a JSON object (`llmrt_capabilities`).
inline std::string_view capabilities() noexcept { return llmrt_capabilities(); }

/// `s` as a JSON string literal, quotes included (for building request JSON by hand).
inline std::string json_string(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(s.size() + 2);
    out.push_back('"');
    for (char c : s) {
        unsigned char b = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out.push_back('\\');
            out.push_back(c);
        } else if (b < 0x20) {
            out += "\\u00";
            out.push_back(hex[b >> 4]);
            out.push_back(hex[b & 15]);
        } else {
            out.push_back(c);
        }
    }
    out.push_back('"');
    return out;
}

// ------------------------------------------------------------------ value types --

/// Token counts of a finished request (`llmrt_event_usage`).
struct Usage {
    uint64_t prompt_tokens = 0;
    uint64_t completion_tokens = 0;
    uint64_t cached_prompt_tokens = 0;
};

/// One alternative at a position (`llmrt_event_top_logprob`,
/// `llmrt_event_prompt_top_logprob`). A plain value.
struct TopLogprob {
    uint32_t token_id = 0;
    /// Its log-probability, of the distribution the request's `logprobs_mode` names.
    float logprob = 0.0f;
    /// 1 for the most likely token.
    uint32_t rank = 0;
};

/// The logprob of one token, generated (`llmrt_event_logprob`) or of the prompt
/// (`llmrt_event_prompt_logprob`), with the most likely alternatives at its position
/// (`top`, best first: vLLM's `logprobs: k` / `prompt_logprobs: k` of them; none for 0).
/// A plain value.
struct TokenLogprob {
    uint32_t token_id = 0;
    float logprob = 0.0f;
    uint32_t rank = 0;
    std::vector<TopLogprob> top;
};

namespace detail {

// The accessors of one logprob list of an event: the generated tokens' or the prompt's
// (both sets of C functions have the same shapes).
struct LogprobAccessors {
    size_t (*count)(const llmrt_events*, size_t);
    bool (*entry)(const llmrt_events*, size_t, size_t, uint32_t*, float*, uint32_t*);
    size_t (*top_count)(const llmrt_events*, size_t, size_t);
    bool (*top)(const llmrt_events*, size_t, size_t, size_t, uint32_t*, float*, uint32_t*);
};

inline constexpr LogprobAccessors token_logprobs{llmrt_event_logprobs_count, llmrt_event_logprob,
                                                 llmrt_event_top_logprobs_count,
                                                 llmrt_event_top_logprob};
inline constexpr LogprobAccessors prompt_logprobs{
    llmrt_event_prompt_logprobs_count, llmrt_event_prompt_logprob,
    llmrt_event_prompt_top_logprobs_count, llmrt_event_prompt_top_logprob};

// Copies one logprob list of event `index` of a batch.
inline std::vector<TokenLogprob> copy_logprobs(const llmrt_events* events, size_t index,
                                               const LogprobAccessors& c) {
    std::vector<TokenLogprob> out;
    size_t n = c.count(events, index);
    out.reserve(n);
    for (size_t pos = 0; pos < n; pos++) {
        TokenLogprob lp;
        if (!c.entry(events, index, pos, &lp.token_id, &lp.logprob, &lp.rank)) continue;
        size_t ntop = c.top_count(events, index, pos);
        lp.top.reserve(ntop);
        for (size_t k = 0; k < ntop; k++) {
            TopLogprob t;
            if (c.top(events, index, pos, k, &t.token_id, &t.logprob, &t.rank)) lp.top.push_back(t);
        }
        out.push_back(std::move(lp));
    }
    return out;
}

// Appends the elements of JSON array `piece` ("[...]") to the array `into` ("": none yet).
inline void append_json_array(std::string& into, const std::string& piece) {
    if (piece.size() <= 2) {  // "[]"
        if (into.empty()) into = piece;
    } else if (into.size() <= 2) {
        into = piece;
    } else {
        into.pop_back();  // ']'
        into += ',';
        into.append(piece, 1, std::string::npos);
    }
}

}  // namespace detail

/// A copy of one event of a batch: everything its C accessors expose. A plain value that
/// owns its data (nothing points into the batch): copy it, move it, keep it, hand it to
/// other threads freely.
///
/// With one sequence per request (the default), a request's token events are followed by
/// its final event, which carries the finish reason. With `n` > 1, `best_of` or beam search
/// (`beam_width`), every event belongs to sequence `index`; each sequence ends with an event
/// that carries its own finish reason (a token event, or the final event for the sequence
/// that ends the request last).
struct Event {
    uint64_t request_id = 0;
    /// The tag the request was submitted with (`generate` uses tags of its own).
    uint64_t user_tag = 0;
    EventKind kind = EventKind::Token;
    /// The token ids this event adds to sequence `index`'s output.
    std::vector<uint32_t> token_ids;
    /// Their text: whole UTF-8 characters; "" when the request asked for no text. With a
    /// `reasoning_parser`, the content only (see `reasoning`); with a `tool_call_parser`,
    /// what is outside tool calls (see `tool_calls_json`).
    std::string text;
    /// Why sequence `index` finished, on the event that ends it; `None` before.
    FinishReason finish_reason = FinishReason::None;
    /// The EOS or stop token that finished the sequence (`Stop` by a token).
    std::optional<uint32_t> stop_token_id;
    /// Set on final events: the whole request's token counts.
    std::optional<Usage> usage;
    /// Why the request failed (final events with `FinishReason::Error`).
    std::optional<std::string> error_message;
    /// One entry per token of `token_ids` when the request asked for `logprobs`.
    std::vector<TokenLogprob> logprobs;
    /// The sequence of the request this event belongs to (`llmrt_event_index`): 0 unless
    /// the request asked for n > 1, best_of or beam search (then 0..n; best_of and beam
    /// search number the returned sequences best first).
    uint32_t index = 0;
    /// The stop string (of the request's `stop`) that finished the sequence
    /// (`llmrt_event_stop_string`).
    std::optional<std::string> stop_string;
    /// With a `reasoning_parser`: the reasoning text of this event's tokens; "" otherwise
    /// (`llmrt_event_reasoning_text`).
    std::string reasoning;
    /// The sum of the sequence's token logprobs so far, when they are computed (the request
    /// asked for `logprobs`, `best_of` > n or beam search): `llmrt_event_cumulative_logprob`.
    std::optional<double> cumulative_logprob;
    /// With `prompt_logprobs`, on the request's first event: one entry per prompt token
    /// after the first (entry i is about prompt token i + 1, given the tokens before it).
    std::vector<TokenLogprob> prompt_logprobs;
    /// With a `tool_call_parser`: the tool-call pieces found in this event's text, the JSON
    /// array `llmrt_event_tool_calls_json` gives (`[{"index", "id", "name", "arguments"}]`;
    /// a call's first piece carries its id and name, its arguments are the concatenation
    /// of its pieces'). Unset when the event has none.
    std::optional<std::string> tool_calls_json;

    bool is_final() const noexcept { return kind == EventKind::Final; }

    /// Copies event `index` of a C batch (which the caller still owns and frees).
    static Event from_batch(const llmrt_events* events, size_t index) {
        Event ev;
        ev.request_id = llmrt_event_request_id(events, index);
        ev.user_tag = llmrt_event_user_tag(events, index);
        ev.kind = static_cast<EventKind>(llmrt_event_kind(events, index));
        ev.index = llmrt_event_index(events, index);
        size_t n = 0;
        const uint32_t* ids = llmrt_event_token_ids(events, index, &n);
        if (ids != nullptr && n > 0) ev.token_ids.assign(ids, ids + n);
        size_t len = 0;
        const char* text = llmrt_event_text(events, index, &len);
        if (text != nullptr) ev.text.assign(text, len);
        if (const char* r = llmrt_event_reasoning_text(events, index)) ev.reasoning = r;
        ev.finish_reason = static_cast<FinishReason>(llmrt_event_finish_reason(events, index));
        uint32_t stop = 0;
        if (llmrt_event_stop_token_id(events, index, &stop)) ev.stop_token_id = stop;
        if (const char* s = llmrt_event_stop_string(events, index)) ev.stop_string = s;
        Usage usage;
        if (llmrt_event_usage(events, index, &usage.prompt_tokens, &usage.completion_tokens,
                              &usage.cached_prompt_tokens))
            ev.usage = usage;
        if (const char* msg = llmrt_event_error_message(events, index)) ev.error_message = msg;
        ev.logprobs = detail::copy_logprobs(events, index, detail::token_logprobs);
        double cumulative = 0.0;
        if (llmrt_event_cumulative_logprob(events, index, &cumulative))
            ev.cumulative_logprob = cumulative;
        ev.prompt_logprobs = detail::copy_logprobs(events, index, detail::prompt_logprobs);
        if (const char* calls = llmrt_event_tool_calls_json(events, index))
            ev.tool_calls_json = calls;
        return ev;
    }
};

/// One generated sequence of a request, gathered from its events by `Stream::collect`
/// (`Completion::sequences`). A plain value.
struct Sequence {
    /// Its index (`Event::index`): its place in `Completion::sequences`.
    uint32_t index = 0;
    std::vector<uint32_t> token_ids;
    std::string text;
    /// With a `reasoning_parser`: the reasoning text (`text` is then the content only).
    std::string reasoning;
    /// Why it finished (`None` only if the request failed before it did).
    FinishReason finish_reason = FinishReason::None;
    std::optional<uint32_t> stop_token_id;
    std::optional<std::string> stop_string;
    /// One per token when the request asked for logprobs.
    std::vector<TokenLogprob> logprobs;
    /// The last value its events gave (the sum over all its tokens), when computed.
    std::optional<double> cumulative_logprob;
    /// With a `tool_call_parser`: every tool-call piece of the sequence, in order, as one
    /// JSON array (its events' arrays joined); unset when there are none.
    std::optional<std::string> tool_calls_json;
};

/// The whole output of a request, gathered from its events by `Stream::collect`. A plain
/// value.
///
/// `token_ids`, `text`, `finish_reason`, `stop_token_id` and `logprobs` are those of
/// sequence 0, the only one unless the request asked for n > 1 (with best_of or beam
/// search, the best one); `sequences` has every sequence by index. `finish_reason` is
/// `Error` whenever the request failed.
struct Completion {
    uint64_t request_id = 0;
    std::vector<uint32_t> token_ids;
    std::string text;
    FinishReason finish_reason = FinishReason::None;
    std::optional<uint32_t> stop_token_id;
    Usage usage;
    std::optional<std::string> error_message;
    std::vector<TokenLogprob> logprobs;
    /// Every sequence, `sequences[i].index == i` (at least one once the request ended).
    std::vector<Sequence> sequences;
    /// See `Event::prompt_logprobs`.
    std::vector<TokenLogprob> prompt_logprobs;
    /// How many events `collect` read, the final event included.
    size_t num_events = 0;
};

/// A request given as token ids: `llmrt_engine_submit_tokens`, the JSON-free path. The
/// fields are vLLM's, with its defaults.
struct TokensRequest {
    std::vector<uint32_t> prompt_token_ids;
    int32_t max_tokens = 16;
    float temperature = 1.0f;  ///< 0: greedy
    float top_p = 1.0f;
    int32_t top_k = -1;        ///< -1 or 0: off
    int64_t seed = -1;         ///< negative: none
    bool ignore_eos = false;           ///< LLMRT_SUBMIT_IGNORE_EOS
    bool detokenize = true;            ///< false: LLMRT_SUBMIT_NO_TEXT
    bool skip_special_tokens = true;   ///< false: LLMRT_SUBMIT_KEEP_SPECIAL_TOKENS

    uint32_t flags() const noexcept {
        return (ignore_eos ? LLMRT_SUBMIT_IGNORE_EOS : 0u) |
               (detokenize ? 0u : LLMRT_SUBMIT_NO_TEXT) |
               (skip_special_tokens ? 0u : LLMRT_SUBMIT_KEEP_SPECIAL_TOKENS);
    }
};

/// Engine options, written as the configuration JSON of `llmrt_engine_new`; unset fields
/// are left out (the library's defaults apply). `extra_json`, if not empty, is spliced in
/// as further members (e.g. `"\"scheduling_policy\": \"priority\""`).
struct Options {
    std::string model;
    std::optional<int64_t> num_threads;
    std::optional<int64_t> max_num_seqs;
    std::optional<int64_t> max_num_batched_tokens;
    std::optional<int64_t> max_model_len;
    std::optional<int64_t> block_size;
    std::optional<int64_t> num_kv_blocks;
    std::optional<bool> enable_prefix_caching;
    std::optional<bool> enable_chunked_prefill;
    std::optional<int64_t> seed;
    std::string extra_json;

    std::string to_json() const {
        std::string j = "{\"model\": " + json_string(model);
        auto num = [&j](const char* key, const std::optional<int64_t>& v) {
            if (v) j += std::string(", \"") + key + "\": " + std::to_string(*v);
        };
        auto flag = [&j](const char* key, const std::optional<bool>& v) {
            if (v) j += std::string(", \"") + key + "\": " + (*v ? "true" : "false");
        };
        num("num_threads", num_threads);
        num("max_num_seqs", max_num_seqs);
        num("max_num_batched_tokens", max_num_batched_tokens);
        num("max_model_len", max_model_len);
        num("block_size", block_size);
        num("num_kv_blocks", num_kv_blocks);
        flag("enable_prefix_caching", enable_prefix_caching);
        flag("enable_chunked_prefill", enable_chunked_prefill);
        num("seed", seed);
        if (!extra_json.empty()) j += ", " + extra_json;
        return j + "}";
    }
};

/// The load-progress callback: progress from 0 to 1 and the stage; return false to cancel
/// the load (the constructor then throws `Status::Cancelled`). It runs on the thread that
/// constructs the engine; an exception it throws cancels the load and is rethrown by the
/// constructor.
using ProgressCallback = std::function<bool(float progress, std::string_view stage)>;

/// The callback of `Engine::generate(request, on_event)`: called on the engine's poller
/// thread for each event of the request, the final one last. It must return quickly, must
/// not throw (std::terminate) and must not destroy the engine.
using EventCallback = std::function<void(const Event&)>;

class Engine;
class Stream;

namespace detail {

// The events of one request on their way from the poller to a Stream (or callback).
struct Queue {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Event> events;
    bool final_queued = false;  // the final event reached the queue
    bool closed = false;        // the poller ended before the final event came
    Status close_code = Status::Ok;
    std::string close_message;
    EventCallback callback;     // set: events go to it instead of `events`
};

// What an engine shares with its streams and poller; outlives the Engine while streams do.
struct Core {
    // The C handle: shared-locked by streams that abort their request (they may run after
    // the Engine is gone), exclusively to clear it before `llmrt_engine_free`.
    std::shared_mutex handle_mu;
    llmrt_engine* handle = nullptr;

    std::mutex mu;  // guards everything below
    std::unordered_map<uint64_t, std::shared_ptr<Queue>> queues;  // by user tag
    uint64_t next_tag = 1;
    std::thread poller;
    bool poller_started = false;
    bool poller_ended = false;

    explicit Core(llmrt_engine* h) : handle(h) {}

    // Aborts a request if the engine still exists; errors are ignored (an engine that is
    // stopped has aborted everything already).
    void abort_quietly(uint64_t request_id) noexcept {
        std::shared_lock<std::shared_mutex> lock(handle_mu);
        if (handle != nullptr) llmrt_error_free(llmrt_engine_abort(handle, request_id));
    }

    // Registers a queue and returns its tag, starting the poller on first use.
    uint64_t add(std::shared_ptr<Queue> q) {
        std::lock_guard<std::mutex> lock(mu);
        uint64_t tag = next_tag++;
        queues.emplace(tag, std::move(q));
        if (!poller_started) {
            poller = std::thread([this] { run_poller(); });
            poller_started = true;
        }
        return tag;
    }

    void remove(uint64_t tag) {
        std::lock_guard<std::mutex> lock(mu);
        queues.erase(tag);
    }

    static void deliver(Queue& q, Event&& ev) noexcept {
        if (q.callback) {
            q.callback(ev);  // noexcept context: a throwing callback terminates
            return;
        }
        {
            std::lock_guard<std::mutex> lock(q.mu);
            if (ev.is_final()) q.final_queued = true;
            q.events.push_back(std::move(ev));
        }
        q.cv.notify_all();
    }

    // The poller: one thread per engine; ends when poll fails (the engine stopped, or a
    // bug in llmrt), closing the queues that still wait.
    void run_poller() noexcept {
        llmrt_engine* h = handle;  // stable until the Engine joins this thread
        Status code = Status::Ok;
        std::string message;
        for (;;) {
            llmrt_events* raw = nullptr;
            llmrt_error* err = llmrt_engine_poll(h, 256, 500, &raw);
            if (err != nullptr) {
                code = static_cast<Status>(llmrt_error_code(err));
                message = llmrt_error_message(err);
                llmrt_error_free(err);
                break;
            }
            unique_events batch(raw);
            size_t n = llmrt_events_count(batch.get());
            for (size_t i = 0; i < n; i++) {
                Event ev = Event::from_batch(batch.get(), i);
                std::shared_ptr<Queue> q;
                {
                    std::lock_guard<std::mutex> lock(mu);
                    auto it = queues.find(ev.user_tag);
                    if (it == queues.end()) continue;  // not submitted through generate
                    q = it->second;
                    if (ev.is_final()) queues.erase(it);
                }
                deliver(*q, std::move(ev));
            }
        }
        std::unordered_map<uint64_t, std::shared_ptr<Queue>> left;
        {
            std::lock_guard<std::mutex> lock(mu);
            left.swap(queues);
            poller_ended = true;
        }
        for (auto& entry : left) {
            Queue& q = *entry.second;
            {
                std::lock_guard<std::mutex> lock(q.mu);
                q.closed = true;
                q.close_code = code;
                q.close_message = message;
            }
            q.cv.notify_all();
        }
    }
};

}  // namespace detail

// ----------------------------------------------------------------------- stream --

/// The events of one request, in order, ending after its final event. Move-only.
/// Destroying a stream whose final event has not come aborts the request. A stream may
/// outlive its engine: it then yields what was delivered (the engine's destructor gives
/// every running request a final `Abort` event).
class Stream {
public:
    /// A single-pass input iterator over the events; `for (const Event& ev : stream)`.
    class iterator {
    public:
        using iterator_category = std::input_iterator_tag;
        using value_type = Event;
        using difference_type = std::ptrdiff_t;
        using pointer = const Event*;
        using reference = const Event&;

        iterator() = default;
        reference operator*() const { return *current_; }
        pointer operator->() const { return &*current_; }
        iterator& operator++() {
            current_ = stream_->next();
            if (!current_) stream_ = nullptr;
            return *this;
        }
        void operator++(int) { ++*this; }
        friend bool operator==(const iterator& a, const iterator& b) noexcept {
            return a.stream_ == b.stream_;
        }
        friend bool operator!=(const iterator& a, const iterator& b) noexcept {
            return !(a == b);
        }

    private:
        friend class Stream;
        explicit iterator(Stream* s) : stream_(s) { ++*this; }
        Stream* stream_ = nullptr;
        std::optional<Event> current_;
    };

    Stream() = default;
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    Stream(Stream&& other) noexcept { swap(other); }
    Stream& operator=(Stream&& other) noexcept {
        if (this != &other) {
            Stream(std::move(other)).swap(*this);
        }
        return *this;
    }
    ~Stream() { abort_if_running(); }

    /// The request's id (as `llmrt_engine_submit` returned it).
    uint64_t id() const noexcept { return id_; }
    /// True once `next` has returned the final event (or the stream is empty).
    bool finished() const noexcept { return finished_ || !queue_; }

    /// The next event, waiting for it; std::nullopt after the final event. Throws Error
    /// if the engine's poller ended without this request's final event (a bug in llmrt:
    /// `Status::Internal`).
    std::optional<Event> next() {
        if (finished()) return std::nullopt;
        std::unique_lock<std::mutex> lock(queue_->mu);
        queue_->cv.wait(lock, [this] { return !queue_->events.empty() || queue_->closed; });
        return take(lock);
    }

    /// As `next`, waiting at most `timeout`: std::nullopt also when none came in time
    /// (`finished()` tells the two apart).
    template <class Rep, class Period>
    std::optional<Event> next_for(std::chrono::duration<Rep, Period> timeout) {
        if (finished()) return std::nullopt;
        std::unique_lock<std::mutex> lock(queue_->mu);
        if (!queue_->cv.wait_for(lock, timeout, [this] {
                return !queue_->events.empty() || queue_->closed;
            }))
            return std::nullopt;
        return take(lock);
    }

    /// Reads the remaining events and gathers them into a Completion, sequence by sequence.
    Completion collect() {
        Completion c;
        c.request_id = id_;
        bool failed = false;
        while (std::optional<Event> ev = next()) {
            c.num_events++;
            while (c.sequences.size() <= ev->index) {
                c.sequences.emplace_back();
                c.sequences.back().index = static_cast<uint32_t>(c.sequences.size() - 1);
            }
            Sequence& seq = c.sequences[ev->index];
            seq.token_ids.insert(seq.token_ids.end(), ev->token_ids.begin(), ev->token_ids.end());
            seq.text += ev->text;
            seq.reasoning += ev->reasoning;
            for (TokenLogprob& lp : ev->logprobs) seq.logprobs.push_back(std::move(lp));
            if (ev->cumulative_logprob) seq.cumulative_logprob = ev->cumulative_logprob;
            if (ev->tool_calls_json) {
                if (!seq.tool_calls_json) seq.tool_calls_json.emplace();
                detail::append_json_array(*seq.tool_calls_json, *ev->tool_calls_json);
            }
            if (ev->finish_reason != FinishReason::None) {
                seq.finish_reason = ev->finish_reason;
                seq.stop_token_id = ev->stop_token_id;
                seq.stop_string = ev->stop_string;
            }
            for (TokenLogprob& lp : ev->prompt_logprobs) c.prompt_logprobs.push_back(std::move(lp));
            if (ev->is_final()) {
                if (ev->usage) c.usage = *ev->usage;
                c.error_message = ev->error_message;
                failed = ev->finish_reason == FinishReason::Error;
            }
        }
        if (!c.sequences.empty()) {
            const Sequence& first = c.sequences.front();
            c.token_ids = first.token_ids;
            c.text = first.text;
            c.finish_reason = first.finish_reason;
            c.stop_token_id = first.stop_token_id;
            c.logprobs = first.logprobs;
        }
        if (failed) c.finish_reason = FinishReason::Error;
        return c;
    }

    /// Aborts the request (`llmrt_engine_abort`); its final event (`Abort`) still comes
    /// through the stream. A no-op once the request finished or the engine is gone.
    void abort() noexcept {
        if (core_) core_->abort_quietly(id_);
    }

    iterator begin() { return iterator(this); }
    iterator end() noexcept { return iterator(); }

    void swap(Stream& other) noexcept {
        std::swap(core_, other.core_);
        std::swap(queue_, other.queue_);
        std::swap(id_, other.id_);
        std::swap(finished_, other.finished_);
    }

private:
    friend class Engine;
    Stream(std::shared_ptr<detail::Core> core, std::shared_ptr<detail::Queue> queue,
           uint64_t id)
        : core_(std::move(core)), queue_(std::move(queue)), id_(id) {}

    std::optional<Event> take(std::unique_lock<std::mutex>& lock) {
        if (!queue_->events.empty()) {
            Event ev = std::move(queue_->events.front());
            queue_->events.pop_front();
            if (ev.is_final()) finished_ = true;
            return ev;
        }
        finished_ = true;  // closed without a final event
        Error error(queue_->close_code == Status::Ok ? Status::Internal : queue_->close_code,
                    "the engine's event stream ended before request " + std::to_string(id_) +
                        "'s final event: " + queue_->close_message);
        lock.unlock();
        throw error;
    }

    void abort_if_running() noexcept {
        if (!core_ || !queue_) return;
        bool running;
        {
            std::lock_guard<std::mutex> lock(queue_->mu);
            running = !queue_->final_queued && !queue_->closed;
        }
        if (running) core_->abort_quietly(id_);
    }

    std::shared_ptr<detail::Core> core_;
    std::shared_ptr<detail::Queue> queue_;
    uint64_t id_ = 0;
    bool finished_ = false;
};

// ----------------------------------------------------------------------- engine --

/// A loaded model and its scheduler (`llmrt_engine`). Move-only; any number of threads
/// may call its methods at once (not the destructor or a move, which need it alone).
class Engine {
public:
    /// Loads a model (`llmrt_engine_new`) from a configuration JSON object.
    explicit Engine(const std::string& config_json, ProgressCallback progress = nullptr) {
        open(config_json, progress);
    }
    /// Loads a model from options.
    explicit Engine(const Options& options, ProgressCallback progress = nullptr) {
        open(options.to_json(), progress);
    }

    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;
    Engine(Engine&& other) noexcept : core_(std::move(other.core_)) {}
    Engine& operator=(Engine&& other) noexcept {
        if (this != &other) {
            close();
            core_ = std::move(other.core_);
        }
        return *this;
    }

    /// Stops the engine (each running request gets its final `Abort` event, delivered to
    /// its stream), joins the poller and frees the engine. Not from an EventCallback.
    ~Engine() { close(); }

    /// False for a moved-from engine (whose calls fail with `Status::InvalidArgument`).
    bool valid() const noexcept { return core_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }
    /// The C handle, for calls this wrapper does not make; owned by the Engine.
    llmrt_engine* native_handle() const noexcept { return core_ ? core_->handle : nullptr; }

    // -- requests as streams (or callbacks) --

    /// Submits a JSON request (`llmrt_engine_submit`: `prompt`, `prompt_token_ids` or
    /// `messages`, and vLLM's sampling fields) and returns the stream of its events.
    Stream generate(const std::string& request_json) {
        auto q = std::make_shared<detail::Queue>();
        uint64_t id = submit_routed(q, [&](llmrt_engine* h, uint64_t tag, uint64_t* out) {
            return llmrt_engine_submit(h, request_json.c_str(), tag, out);
        });
        return Stream(core_, std::move(q), id);
    }

    /// Submits token ids (`llmrt_engine_submit_tokens`) and returns the stream of events.
    Stream generate(const TokensRequest& request) {
        auto q = std::make_shared<detail::Queue>();
        uint64_t id = submit_routed(q, [&](llmrt_engine* h, uint64_t tag, uint64_t* out) {
            return submit_tokens(h, request, tag, out);
        });
        return Stream(core_, std::move(q), id);
    }

    /// Submits a JSON request whose events go to `on_event` on the engine's poller thread;
    /// returns the request id (for `abort`).
    uint64_t generate(const std::string& request_json, EventCallback on_event) {
        auto q = callback_queue(std::move(on_event));
        return submit_routed(q, [&](llmrt_engine* h, uint64_t tag, uint64_t* out) {
            return llmrt_engine_submit(h, request_json.c_str(), tag, out);
        });
    }

    /// Submits token ids whose events go to `on_event` on the engine's poller thread.
    uint64_t generate(const TokensRequest& request, EventCallback on_event) {
        auto q = callback_queue(std::move(on_event));
        return submit_routed(q, [&](llmrt_engine* h, uint64_t tag, uint64_t* out) {
            return submit_tokens(h, request, tag, out);
        });
    }

    /// Aborts a request (`llmrt_engine_abort`): its final event (`Abort`) still comes.
    void abort(uint64_t request_id) {
        detail::check(llmrt_engine_abort(native_handle(), request_id));
    }

    /// Stops the engine without freeing it (`llmrt_engine_stop`): running requests get
    /// their final `Abort` event, later submits fail with `Status::EngineStopped`;
    /// utilities keep working.
    void stop() { detail::check(llmrt_engine_stop(native_handle())); }

    // -- the raw C calls, for hosts that poll themselves (not with generate) --

    /// `llmrt_engine_submit`; the events come through `poll`.
    uint64_t submit(const std::string& request_json, uint64_t user_tag = 0) {
        uint64_t id = 0;
        detail::check(llmrt_engine_submit(native_handle(), request_json.c_str(), user_tag, &id));
        return id;
    }

    /// `llmrt_engine_submit_tokens`; the events come through `poll`.
    uint64_t submit(const TokensRequest& request, uint64_t user_tag = 0) {
        uint64_t id = 0;
        detail::check(submit_tokens(native_handle(), request, user_tag, &id));
        return id;
    }

    /// `llmrt_engine_poll`: up to `max_events` events, waiting at most `timeout` for the
    /// first (negative: until one comes or the engine stops). Throws `EngineStopped` once
    /// a stopped engine has delivered everything. Throws std::logic_error on an engine
    /// whose events `generate` routes (its poller would race this one).
    std::vector<Event> poll(size_t max_events, std::chrono::milliseconds timeout) {
        if (core_) {
            std::lock_guard<std::mutex> lock(core_->mu);
            if (core_->poller_started)
                throw std::logic_error("llmrt::Engine::poll on an engine used with generate()");
        }
        auto ms = timeout.count();
        int32_t timeout_ms = ms > INT32_MAX ? INT32_MAX : ms < -1 ? -1 : static_cast<int32_t>(ms);
        llmrt_events* raw = nullptr;
        detail::check(llmrt_engine_poll(native_handle(), max_events, timeout_ms, &raw));
        detail::unique_events batch(raw);
        size_t n = llmrt_events_count(batch.get());
        std::vector<Event> out;
        out.reserve(n);
        for (size_t i = 0; i < n; i++) out.push_back(Event::from_batch(batch.get(), i));
        return out;
    }

    /// `llmrt_engine_event_fd`: readable when events may be pending (owned by the engine).
    int event_fd() {
        int32_t fd = -1;
        detail::check(llmrt_engine_event_fd(native_handle(), &fd));
        return fd;
    }

    // -- utilities --

    /// `llmrt_tokenize`.
    std::vector<uint32_t> tokenize(std::string_view text, bool add_special_tokens = true) {
        uint32_t* ids = nullptr;
        size_t n = 0;
        detail::check(llmrt_tokenize(native_handle(), text.data(), text.size(),
                                     add_special_tokens, &ids, &n));
        detail::unique_tokens owned(ids);
        return std::vector<uint32_t>(ids, ids + n);
    }

    /// `llmrt_detokenize`.
    std::string detokenize(const uint32_t* token_ids, size_t num_tokens,
                           bool skip_special_tokens = true) {
        char* text = nullptr;
        size_t len = 0;
        detail::check(llmrt_detokenize(native_handle(), token_ids, num_tokens,
                                       skip_special_tokens, &text, &len));
        detail::unique_string owned(text);
        return std::string(text, len);
    }
    std::string detokenize(const std::vector<uint32_t>& token_ids,
                           bool skip_special_tokens = true) {
        return detokenize(token_ids.data(), token_ids.size(), skip_special_tokens);
    }

    /// `llmrt_apply_chat_template`: `{"messages": [...], "add_generation_prompt": ...}`.
    std::string apply_chat_template(const std::string& chat_json) {
        char* text = nullptr;
        size_t len = 0;
        detail::check(llmrt_apply_chat_template(native_handle(), chat_json.c_str(), &text, &len));
        detail::unique_string owned(text);
        return std::string(text, len);
    }

    /// `llmrt_engine_metrics_json`.
    std::string metrics_json() { return owned_string(llmrt_engine_metrics_json); }
    /// `llmrt_engine_metrics_prometheus`.
    std::string metrics_prometheus() { return owned_string(llmrt_engine_metrics_prometheus); }
    /// `llmrt_engine_model_info`.
    std::string model_info() { return owned_string(llmrt_engine_model_info); }

private:
    struct ProgressState {
        const ProgressCallback* fn;
        std::exception_ptr exception;
    };

    static bool on_progress(void* user_data, float progress, const char* stage) noexcept {
        auto* st = static_cast<ProgressState*>(user_data);
        try {
            return (*st->fn)(progress, stage != nullptr ? stage : "");
        } catch (...) {
            st->exception = std::current_exception();
            return false;
        }
    }

    void open(const std::string& config_json, const ProgressCallback& progress) {
        llmrt_engine* h = nullptr;
        ProgressState st{&progress, nullptr};
        llmrt_error* err = llmrt_engine_new(config_json.c_str(), progress ? on_progress : nullptr,
                                            progress ? &st : nullptr, &h);
        if (st.exception) {
            llmrt_error_free(err);
            llmrt_engine_free(h);
            std::rethrow_exception(st.exception);
        }
        detail::check(err);
        try {
            core_ = std::make_shared<detail::Core>(h);
        } catch (...) {
            llmrt_engine_free(h);
            throw;
        }
    }

    void close() noexcept {
        if (!core_) return;
        std::shared_ptr<detail::Core> core = std::move(core_);
        // Stop: every running request gets its final event, the poller drains them and
        // ends on ENGINE_STOPPED. Then nothing else uses the handle but stream aborts,
        // which the exclusive lock shuts out before the free.
        llmrt_error_free(llmrt_engine_stop(core->handle));
        if (core->poller.joinable()) core->poller.join();
        llmrt_engine* h;
        {
            std::unique_lock<std::shared_mutex> lock(core->handle_mu);
            h = core->handle;
            core->handle = nullptr;
        }
        llmrt_engine_free(h);
    }

    template <class Submit>
    uint64_t submit_routed(const std::shared_ptr<detail::Queue>& q, Submit&& submit) {
        if (!core_)
            throw Error(Status::InvalidArgument, "engine: this llmrt::Engine was moved from");
        uint64_t tag = core_->add(q);  // routed before any of its events can come
        uint64_t id = 0;
        llmrt_error* err = submit(core_->handle, tag, &id);
        if (err != nullptr) {
            core_->remove(tag);
            detail::check(err);
        }
        return id;
    }

    static llmrt_error* submit_tokens(llmrt_engine* h, const TokensRequest& r, uint64_t tag,
                                      uint64_t* out) noexcept {
        return llmrt_engine_submit_tokens(h, r.prompt_token_ids.data(), r.prompt_token_ids.size(),
                                          r.max_tokens, r.temperature, r.top_p, r.top_k, r.seed,
                                          r.flags(), tag, out);
    }

    static std::shared_ptr<detail::Queue> callback_queue(EventCallback on_event) {
        if (!on_event)
            throw Error(Status::InvalidArgument, "on_event: an empty callback");
        auto q = std::make_shared<detail::Queue>();
        q->callback = std::move(on_event);
        return q;
    }

    std::string owned_string(llmrt_error* (*fn)(llmrt_engine*, char**)) {
        char* s = nullptr;
        detail::check(fn(native_handle(), &s));
        detail::unique_string owned(s);
        return std::string(s);
    }

    std::shared_ptr<detail::Core> core_;
};

}  // namespace llmrt

#endif  // LLMRT_HPP
