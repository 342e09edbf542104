//! Event batches returned by `llmrt_engine_poll`, and their accessors.
//!
//! Accessors take the batch and an event index in `0..llmrt_events_count(batch)`. They
//! never fail: a NULL batch or an index out of range gives the documented empty value
//! (0, NULL, false). Everything they return is owned by the batch and valid until
//! `llmrt_events_free`. A batch may be read from any number of threads at once; using it
//! after `llmrt_events_free` is undefined behaviour.

use super::value_guard;
use crate::sample::{Logprob, TokenLogprobs};
use crate::{Event, FinishReason};
use std::ffi::c_char;

/// The kind of an event.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum llmrt_kind {
    /// New tokens (and their text) of a running request; with n > 1, also the end of
    /// one sequence that is not the request's last (its finish reason is set).
    LLMRT_EVENT_TOKEN = 0,
    /// The request's last event: it may carry tokens too, and has a finish reason and
    /// usage. Exactly one per request.
    LLMRT_EVENT_FINAL = 1,
}

/// Why a request finished. Fixed values; new ones may be added.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum llmrt_reason {
    /// Not finished (a token event).
    LLMRT_FINISH_NONE = 0,
    /// An end-of-sequence token, a stop token or a stop string.
    LLMRT_FINISH_STOP = 1,
    /// `max_tokens` or the model's context length reached.
    LLMRT_FINISH_LENGTH = 2,
    /// Aborted (`llmrt_engine_abort`, `llmrt_engine_stop`, `llmrt_engine_free`).
    LLMRT_FINISH_ABORT = 3,
    /// The request failed; `llmrt_event_error_message` says why.
    LLMRT_FINISH_ERROR = 4,
}

struct CEvent {
    request_id: u64,
    seq_index: u32,
    finished: bool,
    user_tag: u64,
    token_ids: Vec<u32>,
    /// UTF-8 with a NUL appended.
    text: Vec<u8>,
    finish_reason: llmrt_reason,
    stop_token_id: Option<u32>,
    usage: Option<crate::Usage>,
    /// NUL-terminated.
    error: Option<Vec<u8>>,
    /// NUL-terminated.
    stop_string: Option<Vec<u8>>,
    logprobs: Vec<TokenLogprobs>,
    prompt_logprobs: Vec<TokenLogprobs>,
    cumulative_logprob: Option<f64>,
    /// NUL-terminated.
    reasoning: Vec<u8>,
    /// NUL-terminated JSON array; None when the event has no tool-call pieces.
    tool_calls: Option<Vec<u8>>,
}

/// A batch of events from `llmrt_engine_poll`; the caller frees it with
/// `llmrt_events_free`.
pub struct llmrt_events {
    events: Vec<CEvent>,
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

impl llmrt_events {
    /// Converts polled events; `tag(id, is_final)` gives each request's user tag.
    pub(crate) fn from_events(events: Vec<Event>, mut tag: impl FnMut(u64, bool) -> u64) -> Self {
        let events = events
            .into_iter()
            .map(|e| {
                let finish_reason = match e.finish_reason {
                    None => llmrt_reason::LLMRT_FINISH_NONE,
                    Some(FinishReason::Stop) => llmrt_reason::LLMRT_FINISH_STOP,
                    Some(FinishReason::Length) => llmrt_reason::LLMRT_FINISH_LENGTH,
                    Some(FinishReason::Abort) => llmrt_reason::LLMRT_FINISH_ABORT,
                    Some(FinishReason::Error) => llmrt_reason::LLMRT_FINISH_ERROR,
                };
                CEvent {
                    request_id: e.request_id,
                    seq_index: e.index,
                    finished: e.finished,
                    user_tag: tag(e.request_id, e.finished),
                    text: nul_terminated(&e.text),
                    token_ids: e.token_ids,
                    finish_reason,
                    stop_token_id: e.stop_token_id,
                    usage: e.usage,
                    error: e.error.as_deref().map(nul_terminated),
                    stop_string: e.stop_string.as_deref().map(nul_terminated),
                    logprobs: e.logprobs,
                    prompt_logprobs: e.prompt_logprobs,
                    cumulative_logprob: e.cumulative_logprob,
                    reasoning: nul_terminated(&e.reasoning),
                    tool_calls: (!e.tool_calls.is_empty()).then(|| {
                        nul_terminated(&serde_json::to_string(&e.tool_calls).unwrap_or_default())
                    }),
                }
            })
            .collect();
        llmrt_events { events }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

unsafe fn event<'a>(events: *const llmrt_events, index: usize) -> Option<&'a CEvent> {
    events.as_ref()?.events.get(index)
}

/// The number of events in a batch (0 for NULL).
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_events_count(events: *const llmrt_events) -> usize {
    value_guard(0, || events.as_ref().map_or(0, |b| b.events.len()))
}

/// The id of the request the event belongs to (as returned by submit); 0 if out of range.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_request_id(events: *const llmrt_events, index: usize) -> u64 {
    value_guard(0, || event(events, index).map_or(0, |e| e.request_id))
}

/// The `user_tag` given when the request was submitted; 0 if out of range.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_user_tag(events: *const llmrt_events, index: usize) -> u64 {
    value_guard(0, || event(events, index).map_or(0, |e| e.user_tag))
}

/// `LLMRT_EVENT_TOKEN` or `LLMRT_EVENT_FINAL`; `LLMRT_EVENT_TOKEN` if out of range.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_kind(events: *const llmrt_events, index: usize) -> llmrt_kind {
    value_guard(llmrt_kind::LLMRT_EVENT_TOKEN, || {
        match event(events, index) {
            Some(e) if e.finished => llmrt_kind::LLMRT_EVENT_FINAL,
            _ => llmrt_kind::LLMRT_EVENT_TOKEN,
        }
    })
}

/// The token ids this event adds to the request's output (possibly none, e.g. in a final
/// event after an abort). Returns the array (owned by the batch; NULL when there are
/// none) and writes its length to `count` (optional, may be NULL; 0 if out of range).
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_token_ids(
    events: *const llmrt_events,
    index: usize,
    count: *mut usize,
) -> *const u32 {
    value_guard(std::ptr::null(), || {
        let ids = event(events, index).map_or(&[][..], |e| &e.token_ids[..]);
        if !count.is_null() {
            *count = ids.len();
        }
        if ids.is_empty() {
            std::ptr::null()
        } else {
            ids.as_ptr()
        }
    })
}

/// The text of this event's tokens: NUL-terminated UTF-8 owned by the batch, always whole
/// characters (a character split over tokens comes with the token that completes it), ""
/// when the request asked for no text. The texts of a request's events concatenate to the
/// decode of all its tokens. `len`: receives the length in bytes (optional, may be NULL;
/// the text may contain NUL bytes if the tokens decode to them). "" if out of range.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_text(
    events: *const llmrt_events,
    index: usize,
    len: *mut usize,
) -> *const c_char {
    value_guard(c"".as_ptr(), || {
        let text = event(events, index).map_or(&b"\0"[..], |e| &e.text[..]);
        if !len.is_null() {
            *len = text.len() - 1;
        }
        text.as_ptr().cast()
    })
}

/// Why the event's sequence finished: `LLMRT_FINISH_NONE` while it runs (and if out of
/// range). With one sequence per request this is set exactly on the final event.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_finish_reason(
    events: *const llmrt_events,
    index: usize,
) -> llmrt_reason {
    value_guard(llmrt_reason::LLMRT_FINISH_NONE, || {
        event(events, index).map_or(llmrt_reason::LLMRT_FINISH_NONE, |e| e.finish_reason)
    })
}

/// For a final event with `LLMRT_FINISH_STOP` caused by a token (EOS or one of
/// `stop_token_ids`): writes that token to `token_id` (may be NULL) and returns true.
/// Otherwise returns false and writes nothing.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_stop_token_id(
    events: *const llmrt_events,
    index: usize,
    token_id: *mut u32,
) -> bool {
    value_guard(false, || {
        match event(events, index).and_then(|e| e.stop_token_id) {
            Some(t) => {
                if !token_id.is_null() {
                    *token_id = t;
                }
                true
            }
            None => false,
        }
    })
}

/// The token counts of a finished request. For a final event: writes the prompt length,
/// the number of generated tokens and the number of prompt tokens served from the prefix
/// cache to the out-parameters that are not NULL, and returns true. Otherwise returns
/// false and writes nothing.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_usage(
    events: *const llmrt_events,
    index: usize,
    prompt_tokens: *mut u64,
    completion_tokens: *mut u64,
    cached_prompt_tokens: *mut u64,
) -> bool {
    value_guard(false, || match event(events, index).and_then(|e| e.usage) {
        Some(u) => {
            for (out, v) in [
                (prompt_tokens, u.prompt_tokens),
                (completion_tokens, u.completion_tokens),
                (cached_prompt_tokens, u.cached_prompt_tokens),
            ] {
                if !out.is_null() {
                    *out = v as u64;
                }
            }
            true
        }
        None => false,
    })
}

/// For a final event with `LLMRT_FINISH_ERROR`: why the request failed, NUL-terminated
/// UTF-8 owned by the batch. NULL otherwise.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_error_message(
    events: *const llmrt_events,
    index: usize,
) -> *const c_char {
    value_guard(std::ptr::null(), || {
        event(events, index)
            .and_then(|e| e.error.as_ref())
            .map_or(std::ptr::null(), |m| m.as_ptr().cast())
    })
}

/// Writes a logprob entry to the out-parameters that are not NULL.
unsafe fn write_logprob(
    l: Option<Logprob>,
    token_id: *mut u32,
    logprob: *mut f32,
    rank: *mut u32,
) -> bool {
    let Some(l) = l else { return false };
    if !token_id.is_null() {
        *token_id = l.token_id;
    }
    if !logprob.is_null() {
        *logprob = l.logprob;
    }
    if !rank.is_null() {
        *rank = l.rank;
    }
    true
}

/// The number of alternatives recorded at `position` of a list (0 when none).
fn top_count(list: &[TokenLogprobs], position: usize) -> usize {
    list.get(position).map_or(0, |p| p.top.len())
}

/// Entry `position` of a list, or its `k`-th alternative.
fn entry(list: &[TokenLogprobs], position: usize, k: Option<usize>) -> Option<Logprob> {
    let p = list.get(position)?;
    match k {
        None => p.token,
        Some(k) => p.top.get(k).copied(),
    }
}

/// Which sequence of its request the event belongs to: 0 unless the request asked for
/// n > 1, best_of or beam search (then 0..n; best_of and beam search number the returned
/// sequences best first). 0 if out of range.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_index(events: *const llmrt_events, index: usize) -> u32 {
    value_guard(0, || event(events, index).map_or(0, |e| e.seq_index))
}

/// For an event whose sequence a stop string ended: that string, NUL-terminated UTF-8
/// owned by the batch. NULL otherwise.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_stop_string(
    events: *const llmrt_events,
    index: usize,
) -> *const c_char {
    value_guard(std::ptr::null(), || {
        event(events, index)
            .and_then(|e| e.stop_string.as_ref())
            .map_or(std::ptr::null(), |m| m.as_ptr().cast())
    })
}

/// With a `reasoning_parser`: the reasoning text of this event's tokens (the event's text
/// is then the content only), NUL-terminated UTF-8 owned by the batch; "" when none (and
/// NULL if out of range).
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_reasoning_text(
    events: *const llmrt_events,
    index: usize,
) -> *const c_char {
    value_guard(std::ptr::null(), || {
        event(events, index).map_or(std::ptr::null(), |e| e.reasoning.as_ptr().cast())
    })
}

/// With a `tool_call_parser`: the tool-call pieces found in this event's text (the
/// event's text keeps what is outside tool calls), as a NUL-terminated JSON array owned by
/// the batch: `[{"index": 0, "id": "call_...", "name": "f", "arguments": "{\"a\": 1}"}]`.
/// A call's first piece carries its id and name (null in later pieces); its arguments are
/// the concatenation of its pieces' `arguments`. NULL when the event has none.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_tool_calls_json(
    events: *const llmrt_events,
    index: usize,
) -> *const c_char {
    value_guard(std::ptr::null(), || {
        event(events, index)
            .and_then(|e| e.tool_calls.as_ref())
            .map_or(std::ptr::null(), |m| m.as_ptr().cast())
    })
}

/// The sum of the logprobs of the sequence's tokens so far, when they are computed (the
/// request asked for logprobs, best_of > n or beam search): writes it to `value` (may be
/// NULL) and returns true. Otherwise returns false and writes nothing.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_cumulative_logprob(
    events: *const llmrt_events,
    index: usize,
    value: *mut f64,
) -> bool {
    value_guard(false, || {
        match event(events, index).and_then(|e| e.cumulative_logprob) {
            Some(v) => {
                if !value.is_null() {
                    *value = v;
                }
                true
            }
            None => false,
        }
    })
}

/// The number of this event's tokens that carry logprobs: the number of token ids when
/// the request asked for `logprobs`, else 0.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_logprobs_count(
    events: *const llmrt_events,
    index: usize,
) -> usize {
    value_guard(0, || event(events, index).map_or(0, |e| e.logprobs.len()))
}

/// The logprob of the token at `position` (in `0..llmrt_event_logprobs_count`) of this
/// event: writes the token id, its log-probability (of the distribution `logprobs_mode`
/// names) and its rank (1 = most likely) to the out-parameters that are not NULL and
/// returns true; returns false and writes nothing when there is no such entry.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_logprob(
    events: *const llmrt_events,
    index: usize,
    position: usize,
    token_id: *mut u32,
    logprob: *mut f32,
    rank: *mut u32,
) -> bool {
    value_guard(false, || {
        let e = event(events, index).and_then(|e| entry(&e.logprobs, position, None));
        write_logprob(e, token_id, logprob, rank)
    })
}

/// The number of top alternatives (vLLM's `logprobs: k`) recorded at `position` of this
/// event; 0 when none.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_top_logprobs_count(
    events: *const llmrt_events,
    index: usize,
    position: usize,
) -> usize {
    value_guard(0, || {
        event(events, index).map_or(0, |e| top_count(&e.logprobs, position))
    })
}

/// The `k`-th most likely alternative (k in `0..llmrt_event_top_logprobs_count`) at
/// `position` of this event: writes its token id, log-probability and rank to the
/// out-parameters that are not NULL and returns true; returns false and writes nothing
/// when there is no such entry.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_top_logprob(
    events: *const llmrt_events,
    index: usize,
    position: usize,
    k: usize,
    token_id: *mut u32,
    logprob: *mut f32,
    rank: *mut u32,
) -> bool {
    value_guard(false, || {
        let e = event(events, index).and_then(|e| entry(&e.logprobs, position, Some(k)));
        write_logprob(e, token_id, logprob, rank)
    })
}

/// The number of prompt-logprob entries on this event: with `prompt_logprobs`, the
/// request's first event carries one per prompt token after the first; 0 otherwise.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_prompt_logprobs_count(
    events: *const llmrt_events,
    index: usize,
) -> usize {
    value_guard(0, || {
        event(events, index).map_or(0, |e| e.prompt_logprobs.len())
    })
}

/// Prompt token `position + 1`: writes its id, its log-probability given the tokens
/// before it, and its rank to the out-parameters that are not NULL and returns true;
/// false (nothing written) when there is no such entry.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_prompt_logprob(
    events: *const llmrt_events,
    index: usize,
    position: usize,
    token_id: *mut u32,
    logprob: *mut f32,
    rank: *mut u32,
) -> bool {
    value_guard(false, || {
        let e = event(events, index).and_then(|e| entry(&e.prompt_logprobs, position, None));
        write_logprob(e, token_id, logprob, rank)
    })
}

/// The number of top alternatives recorded for prompt entry `position`; 0 when none.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_prompt_top_logprobs_count(
    events: *const llmrt_events,
    index: usize,
    position: usize,
) -> usize {
    value_guard(0, || {
        event(events, index).map_or(0, |e| top_count(&e.prompt_logprobs, position))
    })
}

/// The `k`-th most likely token at prompt entry `position`: writes its id,
/// log-probability and rank to the out-parameters that are not NULL and returns true;
/// false (nothing written) when there is no such entry.
///
/// Thread-safety: any thread, on a batch not being freed. Never fails.
#[no_mangle]
pub unsafe extern "C" fn llmrt_event_prompt_top_logprob(
    events: *const llmrt_events,
    index: usize,
    position: usize,
    k: usize,
    token_id: *mut u32,
    logprob: *mut f32,
    rank: *mut u32,
) -> bool {
    value_guard(false, || {
        let e = event(events, index).and_then(|e| entry(&e.prompt_logprobs, position, Some(k)));
        write_logprob(e, token_id, logprob, rank)
    })
}

/// Frees a batch and everything its accessors returned. NULL is a no-op. Using the batch
/// afterwards is undefined behaviour.
///
/// Thread-safety: any thread; a batch is freed once, when no thread reads it.
#[no_mangle]
pub unsafe extern "C" fn llmrt_events_free(events: *mut llmrt_events) {
    if !events.is_null() {
        value_guard((), || drop(Box::from_raw(events)))
    }
}
