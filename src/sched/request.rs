//! A request as the scheduler sees it: its tokens, how many are computed, its blocks' hashes.

use crate::kv::block_hash::{compute_block_hashes, BlockHash, ExtraKeys, HashAlgo};
use crate::sample::SamplingParams;
use std::sync::Arc;
use std::time::Instant;

pub type RequestId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    Waiting,
    Running,
    /// Blocks freed to make room; waiting to be recomputed.
    Preempted,
    Finished,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` or `max_model_len` reached.
    Length,
    /// Aborted by the caller.
    Abort,
    /// The engine failed while serving it.
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

pub struct Request {
    pub request_id: RequestId,
    pub num_prompt_tokens: usize,
    /// Prompt followed by the generated tokens.
    pub all_token_ids: Vec<u32>,
    /// Tokens whose KV is in the cache.
    pub num_computed_tokens: usize,
    /// Prompt tokens found in the prefix cache when first admitted.
    pub num_cached_tokens: Option<usize>,
    pub params: Arc<SamplingParams>,
    /// Lower runs first (priority policy).
    pub priority: i32,
    /// Submission order, for FCFS and ties.
    pub arrival_order: u64,
    pub arrival_time: Instant,
    pub status: RequestStatus,
    /// Hashes of the full blocks of `all_token_ids`, chained.
    pub block_hashes: Vec<BlockHash>,
    pub extra_keys: ExtraKeys,
    pub num_preemptions: u32,
    /// Return the logits of every prompt position (computed even past prefix-cache hits).
    pub return_prompt_logits: bool,
    /// The prompt, kept for the runner when the repetition penalty or prompt logprobs
    /// need it.
    pub shared_prompt_token_ids: Option<Arc<[u32]>>,
    /// The id the submitter knows (the first sequence's id).
    pub external_id: RequestId,
    /// Which of the request's sequences this is.
    pub seq_index: u32,
    /// n/best_of: sequences to fork at the first sample (id, index); emptied then.
    pub pending_forks: Vec<(RequestId, u32)>,
    /// With prompt logprobs: the first prompt position whose logprobs are still owed (a
    /// recomputation after preemption does not send them again). None: not asked.
    pub prompt_logprobs_from: Option<usize>,
    /// The compiled structured-output constraint, until the runner takes it.
    pub matcher: Option<crate::structured::Matcher>,
}

impl Request {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        request_id: RequestId,
        prompt_token_ids: Vec<u32>,
        params: SamplingParams,
        priority: i32,
        arrival_order: u64,
        extra_keys: ExtraKeys,
        return_prompt_logits: bool,
    ) -> Self {
        let params_prompt_logprobs = params.prompt_logprobs.is_some();
        let shared_prompt_token_ids = (params.repetition_penalty != 1.0
            || params.prompt_logprobs.is_some())
        .then(|| Arc::from(prompt_token_ids.as_slice()));
        Request {
            request_id,
            num_prompt_tokens: prompt_token_ids.len(),
            all_token_ids: prompt_token_ids,
            num_computed_tokens: 0,
            num_cached_tokens: None,
            params: Arc::new(params),
            priority,
            arrival_order,
            arrival_time: Instant::now(),
            status: RequestStatus::Waiting,
            block_hashes: vec![],
            extra_keys,
            num_preemptions: 0,
            return_prompt_logits,
            shared_prompt_token_ids,
            external_id: request_id,
            seq_index: 0,
            pending_forks: vec![],
            prompt_logprobs_from: params_prompt_logprobs.then_some(0),
            matcher: None,
        }
    }

    /// A sequence forked from `self`: its first `keep` tokens (whose KV the caller shares
    /// with it) followed by `next_token`, not computed yet.
    pub fn fork(
        &self,
        seq_id: RequestId,
        seq_index: u32,
        keep: usize,
        next_token: u32,
        block_size: usize,
    ) -> Request {
        let mut all_token_ids = self.all_token_ids[..keep].to_vec();
        all_token_ids.push(next_token);
        let num_hashed = (keep / block_size).min(self.block_hashes.len());
        Request {
            request_id: seq_id,
            num_prompt_tokens: self.num_prompt_tokens,
            all_token_ids,
            num_computed_tokens: keep,
            num_cached_tokens: self.num_cached_tokens,
            params: self.params.clone(),
            priority: self.priority,
            arrival_order: self.arrival_order,
            arrival_time: self.arrival_time,
            status: RequestStatus::Running,
            block_hashes: self.block_hashes[..num_hashed].to_vec(),
            extra_keys: self.extra_keys.clone(),
            num_preemptions: 0,
            return_prompt_logits: false,
            shared_prompt_token_ids: self.shared_prompt_token_ids.clone(),
            external_id: self.external_id,
            seq_index,
            pending_forks: vec![],
            prompt_logprobs_from: None,
            matcher: None,
        }
    }

    /// Prompt logits or logprobs are returned: every prompt row is computed (a prefix-cache
    /// hit is not taken) and multi-step does not apply until the prompt is done.
    pub fn computes_prompt_rows(&self) -> bool {
        self.return_prompt_logits
            || self
                .prompt_logprobs_from
                .is_some_and(|p| p + 1 < self.num_prompt_tokens)
    }

    pub fn num_tokens(&self) -> usize {
        self.all_token_ids.len()
    }

    pub fn num_output_tokens(&self) -> usize {
        self.all_token_ids.len() - self.num_prompt_tokens
    }

    pub fn prompt_token_ids(&self) -> &[u32] {
        &self.all_token_ids[..self.num_prompt_tokens]
    }

    pub fn output_token_ids(&self) -> &[u32] {
        &self.all_token_ids[self.num_prompt_tokens..]
    }

    /// Extends `block_hashes` over blocks that became full.
    pub fn update_block_hashes(&mut self, algo: HashAlgo, block_size: usize) {
        compute_block_hashes(
            algo,
            &self.all_token_ids,
            block_size,
            &self.extra_keys,
            &mut self.block_hashes,
        );
    }

    pub fn is_finished(&self) -> bool {
        self.status == RequestStatus::Finished
    }
}
