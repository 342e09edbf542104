//! The output stage: turns engine-core outputs into user events (token ids, text delta,
//! finish, usage) and keeps latency metrics. Runs on its own thread, so detokenising
//! step N overlaps the forward pass of step N+1. Stop strings are found here: the request's
//! final event is emitted at once and the engine is told to finish it (`take_stopped`);
//! whatever the engine produced for it after that is discarded.

use super::detokenizer::IncrementalDetokenizer;
use super::stop::StopChecker;
use crate::metrics::Metrics;
use crate::model::Tokenizer;
use crate::sample::SamplingParams;
use crate::sched::{EngineCoreOutput, FinishReason, RequestId};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: usize,
}

/// One event of one request. A request gets any number of token events and exactly one
/// final event (`finish_reason` set), which carries `usage`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub request_id: RequestId,
    pub token_ids: Vec<u32>,
    /// Text of the new tokens; always whole UTF-8.
    pub text: String,
    pub finish_reason: Option<FinishReason>,
    /// The stop token that ended the request, if one did.
    pub stop_token_id: Option<u32>,
    /// The stop string (of `SamplingParams::stop`) that ended the request, if one did.
    pub stop_string: Option<String>,
    pub usage: Option<Usage>,
    /// Set when the request failed (`finish_reason` is `Error`).
    pub error: Option<String>,
}

impl Event {
    pub fn is_final(&self) -> bool {
        self.finish_reason.is_some()
    }
}

struct RequestState {
    detok: Option<IncrementalDetokenizer>,
    stop: Option<StopChecker>,
    num_prompt_tokens: usize,
    num_output_tokens: usize,
    arrival: Instant,
    last_token: Option<Instant>,
}

pub struct OutputProcessor {
    tokenizer: Tokenizer,
    requests: HashMap<RequestId, RequestState>,
    /// Requests ended by a stop string that the engine may still be running.
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

    /// Requests that a stop string ended since the last call, which the engine must now
    /// finish (their final event has been emitted; later outputs for them are dropped).
    pub fn take_stopped(&mut self) -> Vec<RequestId> {
        std::mem::take(&mut self.stopped)
    }

    pub fn register(
        &mut self,
        id: RequestId,
        prompt: &[u32],
        params: &SamplingParams,
        arrival: Instant,
    ) {
        let detok = params
            .detokenize
            .then(|| IncrementalDetokenizer::new(prompt, params.skip_special_tokens));
        let stop = params
            .detokenize
            .then(|| StopChecker::new(&params.stop, params.include_stop_str_in_output))
            .flatten();
        self.requests.insert(
            id,
            RequestState {
                detok,
                stop,
                num_prompt_tokens: prompt.len(),
                num_output_tokens: 0,
                arrival,
                last_token: None,
            },
        );
    }

    pub fn num_active(&self) -> usize {
        self.requests.len()
    }

    /// Builds the event for one core output; None for an unknown (or already ended)
    /// request or an empty update.
    pub fn process(&mut self, mut o: EngineCoreOutput, metrics: &mut Metrics) -> Option<Event> {
        let st = self.requests.get_mut(&o.request_id)?;
        let now = Instant::now();
        let mut text = String::new();
        let mut stop_string = None;
        for (k, &t) in o.new_token_ids.iter().enumerate() {
            let Some(d) = &mut st.detok else { break };
            let delta = d.push(&self.tokenizer, t);
            match &mut st.stop {
                None => text.push_str(&delta),
                Some(stop) => {
                    if let Some(i) = stop.push(&delta, &mut text) {
                        stop_string = Some(stop.stop_str(i).to_string());
                        // Tokens after the one that completed the stop string are dropped.
                        o.new_token_ids.truncate(k + 1);
                        break;
                    }
                }
            }
        }
        if stop_string.is_none() && o.finish_reason.is_some() {
            if let Some(d) = &mut st.detok {
                let rest = d.flush(&self.tokenizer);
                match &mut st.stop {
                    None => text.push_str(&rest),
                    Some(stop) => match stop.push(&rest, &mut text) {
                        Some(i) => stop_string = Some(stop.stop_str(i).to_string()),
                        None => stop.flush(&mut text),
                    },
                }
            }
        }
        if stop_string.is_some() {
            if o.finish_reason.is_none() {
                self.stopped.push(o.request_id);
            }
            o.finish_reason = Some(FinishReason::Stop);
            o.stop_token_id = None;
        }
        for _ in &o.new_token_ids {
            match st.last_token {
                None => metrics
                    .time_to_first_token_seconds
                    .observe((now - st.arrival).as_secs_f64()),
                Some(prev) => metrics
                    .inter_token_latency_seconds
                    .observe((now - prev).as_secs_f64() / o.new_token_ids.len() as f64),
            }
            st.last_token = Some(now);
        }
        st.num_output_tokens += o.new_token_ids.len();
        metrics.generation_tokens += o.new_token_ids.len() as u64;
        if o.new_token_ids.is_empty() && o.finish_reason.is_none() {
            return None;
        }
        let usage = o.finish_reason.map(|_| Usage {
            prompt_tokens: st.num_prompt_tokens,
            completion_tokens: st.num_output_tokens,
            cached_prompt_tokens: o.num_cached_tokens,
        });
        if let Some(reason) = o.finish_reason {
            metrics
                .e2e_request_latency_seconds
                .observe((now - st.arrival).as_secs_f64());
            metrics.prompt_tokens += st.num_prompt_tokens as u64;
            match reason {
                FinishReason::Abort => metrics.requests_aborted += 1,
                _ => metrics.requests_finished += 1,
            }
            self.requests.remove(&o.request_id);
        }
        Some(Event {
            request_id: o.request_id,
            token_ids: o.new_token_ids,
            text,
            finish_reason: o.finish_reason,
            stop_token_id: o.stop_token_id,
            stop_string,
            usage,
            error: None,
        })
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
            request_id: id,
            token_ids: vec![],
            text: String::new(),
            finish_reason: Some(FinishReason::Error),
            stop_token_id: None,
            stop_string: None,
            usage: Some(Usage {
                prompt_tokens: st.num_prompt_tokens,
                completion_tokens: st.num_output_tokens,
                cached_prompt_tokens: 0,
            }),
            error: Some(message.to_string()),
        })
    }
}
