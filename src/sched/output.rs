//! Plain data passed between the scheduler, the model runner and the output stage.

use super::request::{FinishReason, RequestId};
use crate::sample::SamplingParams;
use std::sync::Arc;

/// One request's share of a step.
#[derive(Clone, Debug)]
pub struct ScheduledRequest {
    pub request_id: RequestId,
    /// Tokens already in the KV cache; this step's tokens start at this position.
    pub num_computed_tokens: usize,
    /// The tokens computed this step.
    pub token_ids: Vec<u32>,
    /// The request's whole block table.
    pub block_ids: Vec<u32>,
    /// The step completes the known tokens, so a new token is sampled.
    pub sample: bool,
    /// Multi-step: how many tokens this request may sample in this scheduling decision.
    pub max_sampled_tokens: usize,
    pub num_prompt_tokens: usize,
    pub params: Arc<SamplingParams>,
    pub return_prompt_logits: bool,
    /// The prompt, when the repetition penalty needs it (shared, not copied per step).
    pub penalty_prompt_token_ids: Option<Arc<[u32]>>,
}

#[derive(Clone, Debug, Default)]
pub struct SchedulerOutput {
    pub scheduled: Vec<ScheduledRequest>,
    pub total_num_scheduled_tokens: usize,
    /// Forward steps to run for a decode-only batch (multi-step scheduling); 1 otherwise.
    pub num_steps: usize,
    /// Requests that finished or were aborted since the last step: the runner drops their state.
    pub finished_req_ids: Vec<RequestId>,
    /// Block copies (src, dst) to make before the step (copy-on-write).
    pub blocks_to_copy: Vec<(u32, u32)>,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }
}

/// What one request got from a step.
#[derive(Clone, Debug, Default)]
pub struct SampledTokens {
    pub request_id: RequestId,
    pub token_ids: Vec<u32>,
    /// Logits of the prompt positions computed this step, `n x vocab` (when asked).
    pub prompt_logits: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
pub struct ModelRunnerOutput {
    pub outputs: Vec<SampledTokens>,
}

/// What the engine core hands to the output stage for one request after a step.
#[derive(Clone, Debug)]
pub struct EngineCoreOutput {
    pub request_id: RequestId,
    pub new_token_ids: Vec<u32>,
    pub finish_reason: Option<FinishReason>,
    /// The stop token that finished it, if any.
    pub stop_token_id: Option<u32>,
    pub num_prompt_tokens: usize,
    pub num_cached_tokens: usize,
    pub prompt_logits: Vec<f32>,
}
