//! The engine handle and the functions that take one.

use super::events::llmrt_events;
use super::llmrt_status::*;
use super::{
    bytes_str_arg, guard, json_arg, llmrt_error, malloc_string, malloc_tokens, out_arg,
    panic_message, slice_arg, CResult, Failure,
};
use crate::engine::request_json::RequestParser;
use crate::engine::CoreRequest;
use crate::{Engine, EngineConfig, Error, Model, SamplingParams};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `llmrt_engine_submit_tokens` flag: keep generating after an end-of-sequence token
/// (vLLM's `ignore_eos`).
pub const LLMRT_SUBMIT_IGNORE_EOS: u32 = 1;
/// `llmrt_engine_submit_tokens` flag: produce token ids only, no text (vLLM's
/// `detokenize: false`); events then carry empty text.
pub const LLMRT_SUBMIT_NO_TEXT: u32 = 2;
/// `llmrt_engine_submit_tokens` flag: keep special tokens in the text (vLLM's
/// `skip_special_tokens: false`).
pub const LLMRT_SUBMIT_KEEP_SPECIAL_TOKENS: u32 = 4;

const ALL_SUBMIT_FLAGS: u32 =
    LLMRT_SUBMIT_IGNORE_EOS | LLMRT_SUBMIT_NO_TEXT | LLMRT_SUBMIT_KEEP_SPECIAL_TOKENS;

/// The longest a poller waits without looking at the engine's state; bounds how long
/// `llmrt_engine_stop` waits for pollers to let go of the engine.
const POLL_SLICE: Duration = Duration::from_millis(20);

/// The load-progress callback of `llmrt_engine_new`: called on the thread that called
/// `llmrt_engine_new`, with `progress` from 0 to 1 and a short NUL-terminated description
/// of the stage (valid during the call only). Return true to go on, false to cancel the
/// load (`llmrt_engine_new` then fails with `LLMRT_ERROR_CANCELLED`). It must not throw
/// or unwind.
pub type llmrt_progress_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, progress: f32, stage: *const c_char) -> bool,
>;

/// An engine: a loaded model, its scheduler and its threads. Created by `llmrt_engine_new`,
/// freed by `llmrt_engine_free`. Every function taking an engine may be called from any
/// number of threads at once, except `llmrt_engine_free`.
pub struct llmrt_engine {
    // Dropped first: joins the engine's threads before the event fd closes.
    engine: RwLock<Engine>,
    parser: RequestParser,
    /// User tags of the requests not yet finished, by request id.
    tags: Mutex<HashMap<u64, u64>>,
    /// Held while a poller drains the engine's queue and converts what it took.
    drain: Mutex<()>,
    stopped: AtomicBool,
    /// Set when a call on this engine panicked: it refuses further work.
    failure: Mutex<Option<String>>,
    #[cfg(target_os = "linux")]
    event_fd: Mutex<Option<Arc<EventFd>>>,
}

#[cfg(target_os = "linux")]
struct EventFd(std::os::fd::OwnedFd);

#[cfg(target_os = "linux")]
impl EventFd {
    fn new() -> std::io::Result<EventFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd has no memory arguments; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn raw(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// Makes the fd readable (adds 1 to its counter; a full counter is already readable).
    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd we own.
        unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter to 0 (the fd is non-blocking: nothing to read is fine).
    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an fd we own.
        unsafe { libc::read(self.raw(), (&mut v as *mut u64).cast(), 8) };
    }
}

impl llmrt_engine {
    fn new(engine: Engine) -> Self {
        let parser = RequestParser::for_engine(&engine);
        llmrt_engine {
            engine: RwLock::new(engine),
            parser,
            tags: Mutex::new(HashMap::new()),
            drain: Mutex::new(()),
            stopped: AtomicBool::new(false),
            failure: Mutex::new(None),
            #[cfg(target_os = "linux")]
            event_fd: Mutex::new(None),
        }
    }

    fn signal_fd(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.event_fd.lock().as_ref() {
            fd.signal();
        }
    }

    fn drain_fd(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.event_fd.lock().as_ref() {
            fd.drain();
        }
    }

    fn submit(&self, req: CoreRequest, user_tag: u64) -> CResult<u64> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(stopped());
        }
        let engine = self.engine.read();
        // The tag is in the map before the request's first event can be polled.
        let mut tags = self.tags.lock();
        let id = engine.add_request(req)?;
        tags.insert(id, user_tag);
        Ok(id)
    }

    /// Waits for events and converts them. Draining the engine's queue and converting the
    /// events (which looks up, and on a final event removes, the user tag) happen under
    /// `drain`, so that with several pollers a final event's tag is never removed before
    /// an earlier event of the same request, drained by another poller, was converted.
    fn poll(&self, max_events: usize, timeout: Option<Duration>) -> CResult<llmrt_events> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let stopped = self.stopped.load(Ordering::Acquire);
            let engine = self.engine.read();
            let now = Instant::now();
            let slice_end = match (stopped, deadline) {
                (true, _) => now,
                (false, Some(d)) => d.min(now + POLL_SLICE),
                (false, None) => now + POLL_SLICE,
            };
            let drained = self.drain.try_lock_until(slice_end).map(|_drain| {
                // Drained before the queue is read: an event pushed later signals it again.
                self.drain_fd();
                let events = engine.poll(
                    max_events,
                    slice_end.saturating_duration_since(Instant::now()),
                );
                if engine.num_pending_events() > 0 {
                    self.signal_fd();
                }
                let mut tags = self.tags.lock();
                llmrt_events::from_events(events, |id, last| {
                    if last {
                        tags.remove(&id)
                    } else {
                        tags.get(&id).copied()
                    }
                    .unwrap_or(0)
                })
            });
            drop(engine);
            match drained {
                Some(batch) if !batch.is_empty() => return Ok(batch),
                Some(batch) if stopped => {
                    let _ = batch;
                    return Err(Failure::new(
                        LLMRT_ERROR_ENGINE_STOPPED,
                        "the engine is stopped and every event has been delivered",
                    ));
                }
                Some(batch) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(batch),
                None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Ok(llmrt_events::from_events(vec![], |_, _| 0))
                }
                _ => {}
            }
        }
    }

    fn stop(&self) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        {
            let mut engine = self.engine.write();
            if !self.stopped.load(Ordering::Acquire) {
                engine.shutdown();
                self.stopped.store(true, Ordering::Release);
            }
        }
        self.signal_fd();
    }
}

fn stopped() -> Failure {
    Failure::new(
        LLMRT_ERROR_ENGINE_STOPPED,
        "the engine is stopped (llmrt_engine_stop) and takes no more requests",
    )
}

/// Runs the body of a function on an engine: NULL and an engine that panicked before are
/// errors; a panic now marks the engine as failed.
fn with_engine(
    engine: *const llmrt_engine,
    f: impl FnOnce(&llmrt_engine) -> CResult<()>,
) -> *mut llmrt_error {
    guard(|| {
        // SAFETY: the caller passes NULL or an engine from llmrt_engine_new not yet freed.
        let eng = unsafe { engine.as_ref() }.ok_or_else(|| Failure::arg("`engine` is NULL"))?;
        if let Some(msg) = eng.failure.lock().clone() {
            return Err(Failure::new(
                LLMRT_ERROR_INTERNAL,
                format!("the engine failed earlier and refuses further work: {msg}"),
            ));
        }
        match catch_unwind(AssertUnwindSafe(|| f(eng))) {
            Ok(r) => r,
            Err(p) => {
                let msg = panic_message(&*p);
                *eng.failure.lock() = Some(msg.clone());
                Err(Failure::new(LLMRT_ERROR_INTERNAL, msg))
            }
        }
    })
}

/// Engine-construction errors: a bad option is a configuration error.
fn config_error(e: Error) -> Failure {
    match e {
        Error::InvalidRequest(m) => Failure::new(LLMRT_ERROR_INVALID_CONFIG, m),
        e => e.into(),
    }
}

unsafe fn report(
    progress: llmrt_progress_fn,
    user_data: *mut c_void,
    fraction: f32,
    stage: &CStr,
) -> CResult<()> {
    match progress {
        Some(f) if !f(user_data, fraction, stage.as_ptr()) => Err(Failure::new(
            LLMRT_ERROR_CANCELLED,
            "loading was cancelled by the progress callback",
        )),
        _ => Ok(()),
    }
}

/// Loads a model and starts an engine on it.
///
/// `config_json`: a NUL-terminated JSON object with `model` (a Hugging Face model folder
/// or a GGUF file) and vLLM-named engine options: `max_num_seqs`, `max_num_batched_tokens`,
/// `max_model_len`, `block_size`, `num_kv_blocks`, `kv_cache_memory_bytes`,
/// `enable_prefix_caching`, `enable_chunked_prefill`, `long_prefill_token_threshold`,
/// `num_scheduler_steps`, `scheduling_policy` ("fcfs" | "priority"),
/// `prefix_caching_hash_algo` ("sha256" | "xxhash"), `num_threads` (0: one per core),
/// `seed`, `matmul_precision` ("int8", the default | "exact"), `kv_cache_dtype` ("auto",
/// the default: f16 with "int8" on quantized weights, else f32 | "f16" | "f32"). Not
/// retained after the call.
/// `progress`: optional (may be NULL) load-progress callback, called with `user_data`.
/// `engine`: receives the new engine on success (untouched on failure); the caller frees
/// it with `llmrt_engine_free`.
///
/// Returns NULL on success, else an error:
/// - `LLMRT_ERROR_INVALID_ARGUMENT`: `config_json` or `engine` is NULL, or not UTF-8;
/// - `LLMRT_ERROR_INVALID_JSON`: `config_json` does not parse;
/// - `LLMRT_ERROR_INVALID_CONFIG`: no `model`, an unknown option (named), a wrong type or
///   value;
/// - `LLMRT_ERROR_INVALID_MODEL`, `LLMRT_ERROR_UNSUPPORTED`, `LLMRT_ERROR_IO`: the model
///   cannot be loaded (missing, damaged, an architecture this build does not run);
/// - `LLMRT_ERROR_CANCELLED`: the progress callback returned false;
/// - `LLMRT_ERROR_INTERNAL`: a bug in llmrt.
///
/// Thread-safety: any thread. Blocks while the model loads.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_new(
    config_json: *const c_char,
    progress: llmrt_progress_fn,
    user_data: *mut c_void,
    engine: *mut *mut llmrt_engine,
) -> *mut llmrt_error {
    guard(|| {
        out_arg(engine, "engine")?;
        let v = json_arg(config_json, "config_json")?;
        let cfg = EngineConfig::from_json(&v).map_err(config_error)?;
        report(progress, user_data, 0.0, c"loading the model")?;
        let model = Model::load(&cfg.model).map_err(config_error)?;
        report(progress, user_data, 0.8, c"starting the engine")?;
        let e = llmrt_engine::new(Engine::from_model(model, cfg).map_err(config_error)?);
        // On a cancel here the engine is dropped, which joins its threads.
        report(progress, user_data, 1.0, c"ready")?;
        *engine = Box::into_raw(Box::new(e));
        Ok(())
    })
}

/// Stops and frees an engine: aborts every request, joins every library thread, and only
/// then returns. Events not yet polled are lost. NULL is a no-op.
///
/// Thread-safety: call it once, when no other call on this engine is running or can start
/// (stop pollers first, e.g. with `llmrt_engine_stop`); never from a callback.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_free(engine: *mut llmrt_engine) {
    if engine.is_null() {
        return;
    }
    super::value_guard((), || {
        // SAFETY: a pointer from llmrt_engine_new, freed once (the caller's contract).
        let e = Box::from_raw(engine);
        e.stop();
        drop(e);
    })
}

/// Stops an engine without freeing it: every request still running is aborted and gets
/// its final event (`LLMRT_FINISH_ABORT`), the engine's threads are joined, and then:
/// submits fail with `LLMRT_ERROR_ENGINE_STOPPED`; `llmrt_engine_poll` delivers the events
/// still pending, without waiting, and then fails with `LLMRT_ERROR_ENGINE_STOPPED`, which
/// tells polling threads to finish; the event fd (if any) becomes readable. Utilities
/// (tokenize, metrics, ...) keep working. Calling it again is a no-op.
///
/// Returns NULL, or `LLMRT_ERROR_INVALID_ARGUMENT` (NULL engine) or
/// `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with other calls on the engine (it waits up to
/// a few tens of milliseconds for running polls to let go). Not from a callback.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_stop(engine: *mut llmrt_engine) -> *mut llmrt_error {
    guard(|| {
        let eng = engine
            .as_ref()
            .ok_or_else(|| Failure::arg("`engine` is NULL"))?;
        eng.stop();
        Ok(())
    })
}

/// Submits a request given as JSON.
///
/// `request_json`: a NUL-terminated JSON object with exactly one of
/// `"prompt": "text"` (tokenized with the tokenizer's special tokens, e.g. BOS),
/// `"prompt_token_ids": [ids]`, or `"messages": [{"role": ..., "content": ...}, ...]`
/// (a chat, rendered with the model's chat template; with it optionally
/// `"add_generation_prompt"` (default true), `"chat_template_kwargs": {...}`,
/// `"tools": [...]`); optionally `"priority"` (integer; lower runs first under the
/// `priority` scheduling policy), `"cache_salt"` (string; isolates the request's
/// prefix-cache blocks from other tenants'); and vLLM's sampling fields at the top level:
/// `max_tokens` (default 16), `temperature` (default 1; 0 is greedy), `top_p`, `top_k`,
/// `min_p`, `seed`, `presence_penalty`, `frequency_penalty`, `repetition_penalty`,
/// `logit_bias` (`{"token id": bias}`), `allowed_token_ids`, `bad_words`, `min_tokens`,
/// `ignore_eos`, `stop` (strings: the text ends before them, or after them with
/// `include_stop_str_in_output`; the final event's reason is then `LLMRT_FINISH_STOP`
/// with no stop token), `stop_token_ids`, `skip_special_tokens`,
/// `spaces_between_special_tokens` (accepted, no effect), `detokenize`. Not retained
/// after the call.
/// `user_tag`: any value; every event of the request carries it back.
/// `request_id`: receives the request's id on success (ids are unique per engine).
///
/// The request's events arrive through `llmrt_engine_poll`: any number of token events
/// and exactly one final event.
///
/// Returns NULL on success, else an error:
/// - `LLMRT_ERROR_INVALID_ARGUMENT`: `engine`, `request_json` or `request_id` is NULL, or
///   `request_json` is not UTF-8;
/// - `LLMRT_ERROR_INVALID_JSON`: `request_json` does not parse;
/// - `LLMRT_ERROR_INVALID_REQUEST`: not an object, an unknown field (named), a wrong type,
///   a value out of range (e.g. negative `max_tokens`), no or several prompts, an empty
///   prompt, a prompt too long for the model or the cache, a token id out of the
///   vocabulary, a chat for a model without a chat template;
/// - `LLMRT_ERROR_TEMPLATE`: the chat template failed on these messages;
/// - `LLMRT_ERROR_TOKENIZER`: the tokenizer failed on the prompt;
/// - `LLMRT_ERROR_ENGINE_STOPPED`: the engine is stopped;
/// - `LLMRT_ERROR_INTERNAL`: a bug in llmrt; the engine refuses further work.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_submit(
    engine: *mut llmrt_engine,
    request_json: *const c_char,
    user_tag: u64,
    request_id: *mut u64,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(request_id, "request_id")?;
        let v = json_arg(request_json, "request_json")?;
        let req = {
            let e = eng.engine.read();
            eng.parser.parse(e.tokenizer(), &v)?
        };
        let id = eng.submit(req, user_tag)?;
        *request_id = id;
        Ok(())
    })
}

/// Submits a request given as token ids, without JSON: the fast path.
///
/// `prompt_token_ids`, `num_tokens`: the prompt (copied; not retained).
/// `max_tokens`: tokens to generate at most (at least 1).
/// `temperature`: 0 for greedy; `top_p`: in (0, 1], 1 is off; `top_k`: -1 or 0 is off.
/// `seed`: the request's own seed (the same seed gives the same tokens whatever else
/// runs), or negative for none.
/// `flags`: 0 or a bitwise OR of `LLMRT_SUBMIT_*`.
/// `user_tag`, `request_id`: as for `llmrt_engine_submit`.
///
/// Returns NULL on success, else an error:
/// - `LLMRT_ERROR_INVALID_ARGUMENT`: `engine` or `request_id` is NULL,
///   `prompt_token_ids` is NULL with `num_tokens` > 0, an unknown flag;
/// - `LLMRT_ERROR_INVALID_REQUEST`: a sampling value out of range (`max_tokens` < 1,
///   negative or non-finite `temperature`, ...), an empty prompt, a prompt too long, a
///   token id out of the vocabulary;
/// - `LLMRT_ERROR_ENGINE_STOPPED`, `LLMRT_ERROR_INTERNAL`: as for `llmrt_engine_submit`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_submit_tokens(
    engine: *mut llmrt_engine,
    prompt_token_ids: *const u32,
    num_tokens: usize,
    max_tokens: i32,
    temperature: f32,
    top_p: f32,
    top_k: i32,
    seed: i64,
    flags: u32,
    user_tag: u64,
    request_id: *mut u64,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(request_id, "request_id")?;
        let ids = slice_arg(prompt_token_ids, num_tokens, "prompt_token_ids")?;
        if flags & !ALL_SUBMIT_FLAGS != 0 {
            return Err(Failure::arg(format!(
                "unknown flags {:#x} in `flags`",
                flags & !ALL_SUBMIT_FLAGS
            )));
        }
        if max_tokens < 1 {
            return Err(Failure::new(
                LLMRT_ERROR_INVALID_REQUEST,
                format!("max_tokens must be at least 1, got {max_tokens}"),
            ));
        }
        let params = SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: u64::try_from(seed).ok(),
            max_tokens: max_tokens as usize,
            ignore_eos: flags & LLMRT_SUBMIT_IGNORE_EOS != 0,
            detokenize: flags & LLMRT_SUBMIT_NO_TEXT == 0,
            skip_special_tokens: flags & LLMRT_SUBMIT_KEEP_SPECIAL_TOKENS == 0,
            ..Default::default()
        };
        params.validate()?;
        let req = CoreRequest {
            prompt_token_ids: ids.to_vec(),
            params,
            ..Default::default()
        };
        let id = eng.submit(req, user_tag)?;
        *request_id = id;
        Ok(())
    })
}

/// Aborts a request. Its final event (`LLMRT_FINISH_ABORT`) arrives through
/// `llmrt_engine_poll`, unless the request had already finished. An unknown or finished
/// id is not an error.
///
/// Returns NULL on success, or `LLMRT_ERROR_INVALID_ARGUMENT` (NULL engine),
/// `LLMRT_ERROR_ENGINE_STOPPED` (stopped: every request was aborted already) or
/// `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_abort(
    engine: *mut llmrt_engine,
    request_id: u64,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        if eng.stopped.load(Ordering::Acquire) {
            return Err(stopped());
        }
        eng.engine.read().abort(request_id)?;
        Ok(())
    })
}

/// Takes up to `max_events` events, waiting at most `timeout_ms` milliseconds for the
/// first one (0: do not wait; negative: wait until an event comes or the engine stops).
/// Events of one request come in order; each request gets exactly one final event.
///
/// `events`: receives a batch on success (possibly empty, never NULL), which the caller
/// frees with `llmrt_events_free`; untouched on failure.
///
/// Returns NULL on success, else an error:
/// - `LLMRT_ERROR_INVALID_ARGUMENT`: `engine` or `events` is NULL, `max_events` is 0;
/// - `LLMRT_ERROR_ENGINE_STOPPED`: the engine is stopped and every event was delivered
///   (a polling thread's signal to finish);
/// - `LLMRT_ERROR_INTERNAL`: a bug in llmrt; the engine refuses further work.
///
/// Thread-safety: any thread; several threads may poll at once (each event goes to one
/// of them). Never blocks past its timeout; returns at once when the engine stops.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_poll(
    engine: *mut llmrt_engine,
    max_events: usize,
    timeout_ms: i32,
    events: *mut *mut llmrt_events,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(events, "events")?;
        if max_events == 0 {
            return Err(Failure::arg("`max_events` must be at least 1"));
        }
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let batch = eng.poll(max_events, timeout)?;
        *events = Box::into_raw(Box::new(batch));
        Ok(())
    })
}

/// A Linux eventfd that becomes readable when events may be pending, so a host can wait
/// in epoll/poll/select, asio or Go's netpoller instead of blocking in
/// `llmrt_engine_poll`. Created on the first call (later calls return the same fd).
///
/// Semantics: the fd is readable whenever an event was queued since the last
/// `llmrt_engine_poll` began; each `llmrt_engine_poll` resets it, and sets it again if it
/// leaves events behind (more than `max_events` were pending). After waking, call
/// `llmrt_engine_poll` with timeout 0 until it returns an empty batch. Wake-ups may be
/// spurious (an empty batch); none is lost. It also becomes readable when the engine stops.
/// The fd is non-blocking and close-on-exec; the engine owns it: do not close it (reading
/// it is allowed but not needed). It is closed by `llmrt_engine_free`.
///
/// `fd`: receives the file descriptor on success.
///
/// Returns NULL on success, else `LLMRT_ERROR_INVALID_ARGUMENT` (NULL `engine` or `fd`),
/// `LLMRT_ERROR_UNSUPPORTED` (not Linux), `LLMRT_ERROR_IO` (eventfd failed, e.g. out of
/// file descriptors) or `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_event_fd(
    engine: *mut llmrt_engine,
    fd: *mut i32,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(fd, "fd")?;
        #[cfg(target_os = "linux")]
        {
            // Lock order, as in poll: the engine, then the fd slot.
            let engine = eng.engine.read();
            let mut slot = eng.event_fd.lock();
            let efd = match slot.as_ref() {
                Some(efd) => efd.clone(),
                None => {
                    let efd = Arc::new(EventFd::new().map_err(|e| {
                        Failure::new(LLMRT_ERROR_IO, format!("eventfd failed: {e}"))
                    })?);
                    let hook = efd.clone();
                    engine.set_notify(Some(Arc::new(move || hook.signal())));
                    if engine.num_pending_events() > 0 || eng.stopped.load(Ordering::Acquire) {
                        efd.signal();
                    }
                    *slot = Some(efd.clone());
                    efd
                }
            };
            *fd = efd.raw();
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = eng;
            Err(Failure::new(
                LLMRT_ERROR_UNSUPPORTED,
                "llmrt_engine_event_fd needs Linux's eventfd",
            ))
        }
    })
}

/// Writes a library-owned string to `out` (and its length to `len` when not NULL).
unsafe fn give_string(s: &[u8], out: *mut *mut c_char, len: *mut usize) -> CResult<()> {
    let p = malloc_string(s)?;
    *out = p;
    if !len.is_null() {
        *len = s.len();
    }
    Ok(())
}

/// The engine's metrics as a JSON object (vLLM's metric names: `num_requests_running`,
/// `num_requests_waiting`, `kv_cache_usage_ratio`, `prefix_cache_queries`,
/// `prefix_cache_hits`, `num_preemptions`, `prompt_tokens`, `generation_tokens`, latency
/// histograms, ...).
///
/// `json`: receives a NUL-terminated string on success, freed with `llmrt_string_free`.
///
/// Returns NULL on success, else `LLMRT_ERROR_INVALID_ARGUMENT` (NULL `engine` or `json`)
/// or `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_metrics_json(
    engine: *mut llmrt_engine,
    json: *mut *mut c_char,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(json, "json")?;
        let s = eng.engine.read().metrics().to_json().to_string();
        give_string(s.as_bytes(), json, std::ptr::null_mut())
    })
}

/// The engine's metrics in Prometheus' text exposition format, names prefixed `llmrt_`.
///
/// `text`: receives a NUL-terminated string on success, freed with `llmrt_string_free`.
///
/// Returns NULL on success, else `LLMRT_ERROR_INVALID_ARGUMENT` (NULL `engine` or `text`)
/// or `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_metrics_prometheus(
    engine: *mut llmrt_engine,
    text: *mut *mut c_char,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(text, "text")?;
        let s = eng.engine.read().metrics().to_prometheus();
        give_string(s.as_bytes(), text, std::ptr::null_mut())
    })
}

/// Facts about the engine's model and limits as a JSON object: `architecture`,
/// `vocab_size`, `hidden_size`, `num_hidden_layers`, `max_model_len`, `block_size`,
/// `num_kv_blocks`, `eos_token_ids`, `bos_token`, `eos_token` (strings or null),
/// `has_chat_template`. New keys may appear in later versions.
///
/// `json`: receives a NUL-terminated string on success, freed with `llmrt_string_free`.
///
/// Returns NULL on success, else `LLMRT_ERROR_INVALID_ARGUMENT` (NULL `engine` or `json`)
/// or `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_engine_model_info(
    engine: *mut llmrt_engine,
    json: *mut *mut c_char,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(json, "json")?;
        let e = eng.engine.read();
        let info = e.model_info();
        let limits = e.limits();
        let s = serde_json::json!({
            "architecture": info.config.architecture,
            "vocab_size": info.config.vocab_size,
            "hidden_size": info.config.hidden_size,
            "num_hidden_layers": info.config.num_hidden_layers,
            "max_model_len": limits.max_model_len,
            "block_size": limits.block_size,
            "num_kv_blocks": limits.num_kv_blocks,
            "eos_token_ids": info.eos_token_ids,
            "bos_token": info.tokenizer.bos_token(),
            "eos_token": info.tokenizer.eos_token(),
            "has_chat_template": info.chat_template.is_some(),
        })
        .to_string();
        give_string(s.as_bytes(), json, std::ptr::null_mut())
    })
}

/// Tokenizes UTF-8 text with the engine's tokenizer.
///
/// `text`, `text_len`: the text (bytes, not NUL-terminated; NULL allowed when `text_len`
/// is 0). Not retained.
/// `add_special_tokens`: apply the tokenizer's post-processor (e.g. add BOS), as a
/// `"prompt"` request does.
/// `token_ids`, `num_tokens`: receive the ids on success: an array (never NULL) freed with
/// `llmrt_tokens_free`, and its length.
///
/// Returns NULL on success, else `LLMRT_ERROR_INVALID_ARGUMENT` (NULL `engine`,
/// `token_ids` or `num_tokens`, NULL `text` with a length, text not UTF-8),
/// `LLMRT_ERROR_TOKENIZER` or `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_tokenize(
    engine: *mut llmrt_engine,
    text: *const c_char,
    text_len: usize,
    add_special_tokens: bool,
    token_ids: *mut *mut u32,
    num_tokens: *mut usize,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(token_ids, "token_ids")?;
        out_arg(num_tokens, "num_tokens")?;
        let text = bytes_str_arg(text, text_len, "text")?;
        let ids = eng
            .engine
            .read()
            .tokenizer()
            .encode(text, add_special_tokens)?;
        *token_ids = malloc_tokens(&ids)?;
        *num_tokens = ids.len();
        Ok(())
    })
}

/// Turns token ids back into text with the engine's tokenizer.
///
/// `token_ids`, `num_tokens`: the ids (NULL allowed when `num_tokens` is 0). Not retained.
/// `skip_special_tokens`: leave special tokens (BOS, EOS, ...) out of the text.
/// `text`: receives a NUL-terminated UTF-8 string on success, freed with
/// `llmrt_string_free`. `text_len`: receives its length in bytes (optional, may be NULL;
/// the text may contain NUL bytes if the tokens decode to them).
///
/// Returns NULL on success, else `LLMRT_ERROR_INVALID_ARGUMENT` (NULL `engine` or `text`,
/// NULL `token_ids` with a length), `LLMRT_ERROR_INVALID_REQUEST` (a token id outside the
/// vocabulary), `LLMRT_ERROR_TOKENIZER` or `LLMRT_ERROR_INTERNAL`.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_detokenize(
    engine: *mut llmrt_engine,
    token_ids: *const u32,
    num_tokens: usize,
    skip_special_tokens: bool,
    text: *mut *mut c_char,
    text_len: *mut usize,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(text, "text")?;
        let ids = slice_arg(token_ids, num_tokens, "token_ids")?;
        let e = eng.engine.read();
        let tok = e.tokenizer();
        let vocab = tok.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Failure::new(
                LLMRT_ERROR_INVALID_REQUEST,
                format!("token id {bad} is out of range (vocabulary size {vocab})"),
            ));
        }
        let s = tok.decode(ids, skip_special_tokens)?;
        give_string(s.as_bytes(), text, text_len)
    })
}

/// Renders a chat with the model's chat template, as a `"messages"` request would before
/// tokenizing (tokenize the result with `add_special_tokens` false).
///
/// `chat_json`: a NUL-terminated JSON object: `{"messages": [{"role": ..., "content":
/// ...}, ...], "add_generation_prompt": bool (default true), "tools": [...],
/// "chat_template_kwargs": {...}}`. Not retained.
/// `text`: receives the rendered prompt on success, NUL-terminated UTF-8 freed with
/// `llmrt_string_free`. `text_len`: receives its length in bytes (optional, may be NULL).
///
/// Returns NULL on success, else an error:
/// - `LLMRT_ERROR_INVALID_ARGUMENT`: NULL `engine`, `chat_json` or `text`, not UTF-8;
/// - `LLMRT_ERROR_INVALID_JSON`: `chat_json` does not parse;
/// - `LLMRT_ERROR_INVALID_REQUEST`: no `messages`, an unknown field (named), a wrong type,
///   a model without a chat template;
/// - `LLMRT_ERROR_TEMPLATE`: the template failed (e.g. it raised an exception);
/// - `LLMRT_ERROR_INTERNAL`: a bug in llmrt.
///
/// Thread-safety: any thread, concurrently with every call but `llmrt_engine_free`.
#[no_mangle]
pub unsafe extern "C" fn llmrt_apply_chat_template(
    engine: *mut llmrt_engine,
    chat_json: *const c_char,
    text: *mut *mut c_char,
    text_len: *mut usize,
) -> *mut llmrt_error {
    with_engine(engine, |eng| {
        out_arg(text, "text")?;
        let v = json_arg(chat_json, "chat_json")?;
        let s = eng.parser.render_chat(&v)?;
        give_string(s.as_bytes(), text, text_len)
    })
}

// Engines are shared between threads by contract.
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<llmrt_engine>();
};
