//! The output stage: turns engine-core outputs into user events (token ids, text delta,
//! finish, usage) and keeps latency metrics. Runs on its own thread, so detokenising
//! step N overlaps the forward pass of step N+1.

use super::detokenizer::IncrementalDetokenizer;
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
    num_prompt_tokens: usize,
    num_output_tokens: usize,
    arrival: Instant,
    last_token: Option<Instant>,
}

pub struct OutputProcessor {
    tokenizer: Tokenizer,
    requests: HashMap<RequestId, RequestState>,
}

impl OutputProcessor {
    pub fn new(tokenizer: Tokenizer) -> Self {
        OutputProcessor {
            tokenizer,
            requests: HashMap::new(),
        }
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
        self.requests.insert(
            id,
            RequestState {
                detok,
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

    /// Builds the event for one core output; None for an unknown request or an empty update.
    pub fn process(&mut self, o: EngineCoreOutput, metrics: &mut Metrics) -> Option<Event> {
        let st = self.requests.get_mut(&o.request_id)?;
        let now = Instant::now();
        let mut text = String::new();
        for &t in &o.new_token_ids {
            if let Some(d) = &mut st.detok {
                text.push_str(&d.push(&self.tokenizer, t));
            }
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
        if o.finish_reason.is_some() {
            if let Some(d) = &mut st.detok {
                text.push_str(&d.flush(&self.tokenizer));
            }
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
            usage: Some(Usage {
                prompt_tokens: st.num_prompt_tokens,
                completion_tokens: st.num_output_tokens,
                cached_prompt_tokens: 0,
            }),
            error: Some(message.to_string()),
        })
    }
}
