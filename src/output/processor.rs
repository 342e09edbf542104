//! The output stage: turns engine-core outputs into user events (token ids, text delta,
//! finish, usage) and keeps latency metrics. Runs on its own thread, so detokenising
//! step N overlaps the forward pass of step N+1. Stop strings are found here: the request's
//! final event is emitted at once and the engine is told to finish it (`take_stopped`);
//! whatever the engine produced for it after that is discarded.

use super::detokenizer::IncrementalDetokenizer;
use super::parsers::{ReasoningParser, ToolCallChunk, ToolCallParser};
use super::stop::StopChecker;
use crate::metrics::Metrics;
use crate::model::Tokenizer;
use crate::sample::{SamplingParams, TokenLogprobs};
use crate::sched::{EngineCoreOutput, FinishReason, RequestId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: usize,
}

/// One event of one sequence of a request. A request gets any number of events and
/// exactly one final event (`finished`), which carries `usage`. With n > 1, best_of or
/// beam search, each sequence (`index`) ends with its own `finish_reason`; the last of
/// them is the final event. best_of > n and beam search return only the chosen sequences,
/// each in one event, when all are done.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub request_id: RequestId,
    /// Which sequence of the request (0..n).
    pub index: u32,
    pub token_ids: Vec<u32>,
    /// Text of the new tokens; always whole UTF-8.
    pub text: String,
    /// Set when this sequence ended.
    pub finish_reason: Option<FinishReason>,
    /// The stop token that ended the sequence, if one did.
    pub stop_token_id: Option<u32>,
    /// The stop string (of `SamplingParams::stop`) that ended the sequence, if one did.
    pub stop_string: Option<String>,
    /// One per token of `token_ids` when the request asked for `logprobs`.
    pub logprobs: Vec<TokenLogprobs>,
    /// With `prompt_logprobs`, on the request's first event: one per prompt token after the
    /// first (entry `i` is about prompt token `i + 1`).
    pub prompt_logprobs: Vec<TokenLogprobs>,
    /// Sum of the sequence's token logprobs so far, when they are computed (logprobs,
    /// best_of, beam search).
    pub cumulative_logprob: Option<f64>,
    /// With a reasoning parser: the reasoning text of the new tokens (`text` is then the
    /// content only).
    pub reasoning: String,
    /// With a tool-call parser: tool-call pieces found in the new text (`text` keeps what
    /// is outside tool calls). A call's first piece has its id and name; its arguments
    /// are the concatenation of its pieces' `arguments`.
    pub tool_calls: Vec<ToolCallChunk>,
    /// The request's last event.
    pub finished: bool,
    pub usage: Option<Usage>,
    /// Set when the request failed (`finish_reason` is `Error`).
    pub error: Option<String>,
}

impl Event {
    pub fn is_final(&self) -> bool {
        self.finished
    }

    fn new(request_id: RequestId, index: u32) -> Event {
        Event {
            request_id,
            index,
            token_ids: vec![],
            text: String::new(),
            finish_reason: None,
            stop_token_id: None,
            stop_string: None,
            logprobs: vec![],
            prompt_logprobs: vec![],
            cumulative_logprob: None,
            reasoning: String::new(),
            tool_calls: vec![],
            finished: false,
            usage: None,
            error: None,
        }
    }
}

/// One sequence's output state.
#[derive(Clone)]
struct SeqState {
    detok: Option<IncrementalDetokenizer>,
    stop: Option<StopChecker>,
    num_output_tokens: usize,
    cumulative_logprob: Option<f64>,
    finished: bool,
    /// best_of > n: the whole sequence, returned at the end if it ranks.
    held: Option<Event>,
    reasoning: Option<ReasoningParser>,
    tools: Option<ToolCallParser>,
}

struct RequestState {
    params: Arc<SamplingParams>,
    /// The state every sequence starts from.
    template: SeqState,
    seqs: Vec<SeqState>,
    /// Sequences to wait for before the request ends.
    num_expected: usize,
    num_prompt_tokens: usize,
    num_cached_tokens: usize,
    prompt_logprobs: Vec<TokenLogprobs>,
    arrival: Instant,
    last_token: Option<Instant>,
}

impl RequestState {
    /// best_of > n: sequences are held and the best returned at the end.
    fn holds(&self) -> bool {
        !self.params.is_beam_search() && self.params.num_sequences() > self.params.n
    }

    fn num_finished(&self) -> usize {
        self.seqs.iter().filter(|s| s.finished).count()
    }
}

pub struct OutputProcessor {
    tokenizer: Tokenizer,
    requests: HashMap<RequestId, RequestState>,
    /// Sequences ended by a stop string that the engine may still be running.
    stopped: Vec<RequestId>,
}

impl OutputProcessor {
    pub fn new(tokenizer: Tokenizer) -> Self {
        OutputProcessor {
            tokenizer,
            requests: HashMap::new(),
            stopped: Vec::new(),
        }
    }

    /// Sequences (`EngineCoreOutput::seq_id`) that a stop string ended since the last call,
    /// which the engine must now finish (their events have been emitted; later outputs for
    /// them are dropped).
    pub fn take_stopped(&mut self) -> Vec<RequestId> {
        std::mem::take(&mut self.stopped)
    }

    pub fn register(
        &mut self,
        id: RequestId,
        prompt: &[u32],
        params: &Arc<SamplingParams>,
        arrival: Instant,
    ) {
        let detok = params
            .detokenize
            .then(|| IncrementalDetokenizer::new(prompt, params.skip_special_tokens));
        let stop = params
            .detokenize
            .then(|| StopChecker::new(&params.stop, params.include_stop_str_in_output))
            .flatten();
        let num_expected = if params.is_beam_search() {
            params.n
        } else {
            params.num_sequences()
        };
        self.requests.insert(
            id,
            RequestState {
                params: params.clone(),
                template: SeqState {
                    detok,
                    stop,
                    num_output_tokens: 0,
                    cumulative_logprob: None,
                    finished: false,
                    held: None,
                    reasoning: params
                        .reasoning_parser
                        .as_deref()
                        .and_then(|n| ReasoningParser::new(n).ok()),
                    tools: params
                        .tool_call_parser
                        .as_deref()
                        .and_then(|n| ToolCallParser::new(n).ok()),
                },
                seqs: Vec::new(),
                num_expected,
                num_prompt_tokens: prompt.len(),
                num_cached_tokens: 0,
                prompt_logprobs: Vec::new(),
                arrival,
                last_token: None,
            },
        );
    }

    pub fn num_active(&self) -> usize {
        self.requests.len()
    }

    /// Builds the events of one core output (none for an unknown or ended request or an
    /// empty update).
    pub fn process(&mut self, mut o: EngineCoreOutput, metrics: &mut Metrics) -> Vec<Event> {
        let Some(st) = self.requests.get_mut(&o.request_id) else {
            return vec![];
        };
        let now = Instant::now();
        st.prompt_logprobs.append(&mut o.prompt_logprobs);
        st.num_cached_tokens = o.num_cached_tokens;
        let i = o.seq_index as usize;
        while st.seqs.len() <= i {
            let mut seq = st.template.clone();
            // Unpredictable tool-call ids, distinct per sequence.
            seq.tools = seq.tools.map(|t| t.with_id_seed(rand::random()));
            st.seqs.push(seq);
        }
        let mut events = Vec::new();
        if !st.seqs[i].finished {
            if let Some(e) = seq_event(&self.tokenizer, st, &mut o) {
                if e.stop_string.is_some() && o.finish_reason.is_none() {
                    self.stopped.push(o.seq_id);
                }
                observe_latency(st, &e, now, metrics);
                metrics.generation_tokens += e.token_ids.len() as u64;
                if st.holds() {
                    hold(&mut st.seqs[i], e);
                } else {
                    events.push(e);
                }
            }
        }
        let done = o.request_finished || st.num_finished() >= st.num_expected;
        // The request's prompt logprobs ride on its first event (closing makes one).
        let prompt_logprobs = if done || !events.is_empty() {
            std::mem::take(&mut st.prompt_logprobs)
        } else {
            vec![]
        };
        if done {
            let reason = o.finish_reason.unwrap_or(FinishReason::Abort);
            let st = self.requests.remove(&o.request_id).expect("request state");
            close_request(o.request_id, st, reason, now, metrics, &mut events);
        }
        if let Some(e) = events.first_mut() {
            e.prompt_logprobs = prompt_logprobs;
        }
        events
    }

    /// Final error events for every request still open (the engine failed).
    pub fn fail_all(&mut self, message: &str) -> Vec<Event> {
        let mut ids: Vec<RequestId> = self.requests.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.fail_one(id, message))
            .collect()
    }

    /// The final error event of one open request.
    pub fn fail_one(&mut self, id: RequestId, message: &str) -> Option<Event> {
        let st = self.requests.remove(&id)?;
        Some(Event {
            finish_reason: Some(FinishReason::Error),
            finished: true,
            usage: Some(Usage {
                prompt_tokens: st.num_prompt_tokens,
                completion_tokens: st.seqs.iter().map(|s| s.num_output_tokens).sum(),
                cached_prompt_tokens: 0,
            }),
            error: Some(message.to_string()),
            ..Event::new(id, 0)
        })
    }
}

/// Detokenises one sequence's new tokens, finds stop strings; None for an empty update.
fn seq_event(
    tokenizer: &Tokenizer,
    st: &mut RequestState,
    o: &mut EngineCoreOutput,
) -> Option<Event> {
    let want_logprobs = st.params.logprobs.is_some();
    let seq = &mut st.seqs[o.seq_index as usize];
    let mut e = Event::new(o.request_id, o.seq_index);
    for (k, &t) in o.new_token_ids.iter().enumerate() {
        let Some(d) = &mut seq.detok else { break };
        let delta = d.push(tokenizer, t);
        match &mut seq.stop {
            None => e.text.push_str(&delta),
            Some(stop) => {
                if let Some(j) = stop.push(&delta, &mut e.text) {
                    e.stop_string = Some(stop.stop_str(j).to_string());
                    // Tokens after the one that completed the stop string are dropped.
                    o.new_token_ids.truncate(k + 1);
                    o.logprobs.truncate(k + 1);
                    break;
                }
            }
        }
    }
    if e.stop_string.is_none() && o.finish_reason.is_some() {
        if let Some(d) = &mut seq.detok {
            let rest = d.flush(tokenizer);
            match &mut seq.stop {
                None => e.text.push_str(&rest),
                Some(stop) => match stop.push(&rest, &mut e.text) {
                    Some(j) => e.stop_string = Some(stop.stop_str(j).to_string()),
                    None => stop.flush(&mut e.text),
                },
            }
        }
    }
    e.finish_reason = o.finish_reason;
    e.stop_token_id = o.stop_token_id;
    if e.stop_string.is_some() {
        e.finish_reason = Some(FinishReason::Stop);
        e.stop_token_id = None;
    }
    parse_text(seq, &mut e);
    match o.cumulative_logprob {
        Some(c) => seq.cumulative_logprob = Some(c),
        None if !o.logprobs.is_empty() => {
            let sum: f64 = o.logprobs.iter().map(|l| l.value() as f64).sum();
            seq.cumulative_logprob = Some(seq.cumulative_logprob.unwrap_or(0.0) + sum);
        }
        None => {}
    }
    e.cumulative_logprob = seq.cumulative_logprob;
    if want_logprobs {
        e.logprobs = std::mem::take(&mut o.logprobs);
    }
    seq.num_output_tokens += o.new_token_ids.len();
    seq.finished |= e.finish_reason.is_some();
    e.token_ids = std::mem::take(&mut o.new_token_ids);
    (!e.token_ids.is_empty() || e.finish_reason.is_some()).then_some(e)
}

/// Runs the new text through the sequence's reasoning and tool-call parsers (flushing
/// them when the sequence ends).
fn parse_text(seq: &mut SeqState, e: &mut Event) {
    let finishing = e.finish_reason.is_some();
    let mut text = std::mem::take(&mut e.text);
    if let Some(r) = &mut seq.reasoning {
        let mut d = r.push(&text);
        if finishing {
            let f = r.finish();
            d.reasoning.push_str(&f.reasoning);
            d.content.push_str(&f.content);
        }
        e.reasoning = d.reasoning;
        text = d.content;
    }
    if let Some(t) = &mut seq.tools {
        let mut d = t.push(&text);
        if finishing {
            let f = t.finish();
            d.content.push_str(&f.content);
            d.tool_calls.extend(f.tool_calls);
        }
        e.tool_calls = d.tool_calls;
        text = d.content;
    }
    e.text = text;
}

/// best_of > n: accumulates a sequence's events into one.
fn hold(seq: &mut SeqState, e: Event) {
    match &mut seq.held {
        None => seq.held = Some(e),
        Some(h) => {
            h.token_ids.extend(e.token_ids);
            h.text.push_str(&e.text);
            h.reasoning.push_str(&e.reasoning);
            h.tool_calls.extend(e.tool_calls);
            h.logprobs.extend(e.logprobs);
            h.finish_reason = e.finish_reason;
            h.stop_token_id = e.stop_token_id;
            h.stop_string = e.stop_string;
            h.cumulative_logprob = e.cumulative_logprob;
        }
    }
}

fn observe_latency(st: &mut RequestState, e: &Event, now: Instant, metrics: &mut Metrics) {
    if e.token_ids.is_empty() {
        return;
    }
    match st.last_token {
        None => metrics
            .time_to_first_token_seconds
            .observe((now - st.arrival).as_secs_f64()),
        Some(prev) => metrics
            .inter_token_latency_seconds
            .observe((now - prev).as_secs_f64()),
    }
    st.last_token = Some(now);
}

/// The request ends: held best_of sequences are ranked, sequences still open end with
/// `reason`, and the last event carries `finished` and `usage`.
fn close_request(
    id: RequestId,
    mut st: RequestState,
    reason: FinishReason,
    now: Instant,
    metrics: &mut Metrics,
    events: &mut Vec<Event>,
) {
    if st.holds() {
        let mut held: Vec<Event> = st.seqs.iter_mut().filter_map(|s| s.held.take()).collect();
        // Highest cumulative logprob first; the sort is stable, so ties keep index order.
        held.sort_by(|a, b| {
            let key = |e: &Event| e.cumulative_logprob.unwrap_or(f64::NEG_INFINITY);
            key(b).total_cmp(&key(a))
        });
        held.truncate(st.params.n);
        for (k, mut e) in held.into_iter().enumerate() {
            e.index = k as u32;
            e.finish_reason.get_or_insert(reason);
            events.push(e);
        }
    } else {
        let num_seqs = st.num_expected.max(st.seqs.len());
        for i in 0..num_seqs {
            if st.seqs.get(i).is_none_or(|s| !s.finished) {
                events.push(Event {
                    finish_reason: Some(reason),
                    ..Event::new(id, i as u32)
                });
            }
        }
    }
    if events.is_empty() {
        events.push(Event {
            finish_reason: Some(reason),
            ..Event::new(id, 0)
        });
    }
    let completion_tokens = st.seqs.iter().map(|s| s.num_output_tokens).sum();
    let last = events.last_mut().expect("at least one event");
    last.finished = true;
    last.usage = Some(Usage {
        prompt_tokens: st.num_prompt_tokens,
        completion_tokens,
        cached_prompt_tokens: st.num_cached_tokens,
    });
    metrics
        .e2e_request_latency_seconds
        .observe((now - st.arrival).as_secs_f64());
    metrics.prompt_tokens += st.num_prompt_tokens as u64;
    match reason {
        FinishReason::Abort => metrics.requests_aborted += 1,
        _ => metrics.requests_finished += 1,
    }
}
