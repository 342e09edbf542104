//! Plain data passed between the scheduler, the model runner and the output stage.

use super::request::{FinishReason, RequestId};
use crate::sample::{SamplingParams, TokenLogprobs};
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
    /// Prompt logprobs are owed for the rows of positions from here on (None: none).
    pub prompt_logprobs_from: Option<usize>,
    /// The prompt, when the repetition penalty or prompt logprobs need it (shared, not
    /// copied per step).
    pub prompt_token_ids: Option<Arc<[u32]>>,
    /// Which of its request's sequences this is (0 for the first); seeds derive from it.
    pub seq_index: u32,
    /// n/best_of: the sequences to fork from this one's first sampled row, each sampling
    /// its own first token there: (sequence id, sequence index).
    pub fork_children: Vec<(RequestId, u32)>,
    /// Beam search: report this many most likely next tokens instead of sampling.
    pub beam_candidates: usize,
    /// The sequence's structured-output constraint, handed to the runner once (it keeps
    /// the state from then on).
    pub matcher: Option<crate::structured::Matcher>,
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
    /// One per sampled token when the request needs logprobs (or the cumulative logprob).
    pub logprobs: Vec<TokenLogprobs>,
    /// Logits of the prompt positions computed this step, `n x vocab` (when asked).
    pub prompt_logits: Vec<f32>,
    /// Logprobs of the prompt tokens whose predicting rows were computed this step.
    pub prompt_logprobs: Vec<TokenLogprobs>,
    /// First tokens of the sequences forked from this one (`fork_children` order).
    pub forked: Vec<ForkedSample>,
    /// Beam search: the most likely next tokens (in `top`), most likely first.
    pub beam_candidates: Option<TokenLogprobs>,
}

/// The first token of a forked sequence.
#[derive(Clone, Debug, Default)]
pub struct ForkedSample {
    pub seq_id: RequestId,
    pub token_id: u32,
    pub logprobs: Option<TokenLogprobs>,
}

#[derive(Clone, Debug, Default)]
pub struct ModelRunnerOutput {
    pub outputs: Vec<SampledTokens>,
}

/// What the engine core hands to the output stage for one sequence after a step.
#[derive(Clone, Debug, Default)]
pub struct EngineCoreOutput {
    /// The request's id as its submitter knows it.
    pub request_id: RequestId,
    /// The sequence's own id inside the core (equals `request_id` for sequence 0).
    pub seq_id: RequestId,
    /// Which of the request's sequences (n, best_of, beams) this is.
    pub seq_index: u32,
    pub new_token_ids: Vec<u32>,
    pub finish_reason: Option<FinishReason>,
    /// The stop token that finished it, if any.
    pub stop_token_id: Option<u32>,
    pub num_prompt_tokens: usize,
    pub num_cached_tokens: usize,
    pub prompt_logits: Vec<f32>,
    /// Per new token, when the request needs logprobs.
    pub logprobs: Vec<TokenLogprobs>,
    pub prompt_logprobs: Vec<TokenLogprobs>,
    /// Beam search: the finished beam's cumulative logprob (the output stage sums it
    /// from `logprobs` otherwise).
    pub cumulative_logprob: Option<f64>,
    /// This sequence finished and no other sequence of the request remains.
    pub request_finished: bool,
}
