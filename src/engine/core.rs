//! EngineCore: the scheduler and the model runner, stepped together. The threaded
//! `Engine` and the synchronous `Llm` both drive one of these.

use crate::config::{EngineConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::kv::block_hash::ExtraKeys;
use crate::kv::KvCache;
use crate::model::arch::ArchSpec;
use crate::model::{Model, Tokenizer};
use crate::runner::{ModelRunner, RunnerConfig};
use crate::sample::SamplingParams;
use crate::sched::{
    EngineCoreOutput, FinishReason, Request, RequestId, Scheduler, SchedulerConfig, SchedulerStats,
};
use crate::structured::LazyCompiler;
use std::sync::Arc;

/// A request as submitted to the core.
#[derive(Clone, Debug, Default)]
pub struct CoreRequest {
    pub prompt_token_ids: Vec<u32>,
    pub params: SamplingParams,
    pub priority: i32,
    /// Isolates this request's prefix-cache blocks from other tenants'.
    pub cache_salt: Option<String>,
    pub return_prompt_logits: bool,
    /// The compiled `structured_outputs` constraint (compiled by `add_request` when the
    /// submitter has not done it on its own thread).
    pub matcher: Option<crate::structured::Matcher>,
}

/// What a request must fit: checked at submission, on the caller's thread.
#[derive(Clone, Debug)]
pub struct Limits {
    pub vocab_size: usize,
    pub max_model_len: usize,
    pub num_kv_blocks: usize,
    pub block_size: usize,
    pub num_scheduler_steps: usize,
    pub enable_chunked_prefill: bool,
    pub max_num_batched_tokens: usize,
}

impl Limits {
    /// Checks a request against the model and the cache; the error names the problem.
    pub fn validate(&self, r: &CoreRequest) -> Result<()> {
        r.params.validate()?;
        r.params.validate_token_ids(self.vocab_size)?;
        let n = r.prompt_token_ids.len();
        if n == 0 {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        if let Some(&bad) = r
            .prompt_token_ids
            .iter()
            .find(|&&t| t as usize >= self.vocab_size)
        {
            return Err(Error::InvalidRequest(format!(
                "prompt token id {bad} is out of range (vocabulary size {})",
                self.vocab_size
            )));
        }
        if n >= self.max_model_len {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {n} tokens; max_model_len is {} (prompt plus at least one generated token must fit)",
                self.max_model_len
            )));
        }
        let total = (n + r.params.max_tokens).min(self.max_model_len);
        let first = (total + self.num_scheduler_steps).div_ceil(self.block_size);
        // Further sequences (n, best_of, beams) share the prompt's full blocks and need
        // their own for the rest, plus one copied partial block.
        let seqs = if r.params.is_beam_search() {
            r.params.beam_width
        } else {
            r.params.num_sequences()
        };
        let own = (total - n + self.num_scheduler_steps).div_ceil(self.block_size) + 1;
        let need = first.saturating_add((seqs - 1).saturating_mul(own));
        if need > self.num_kv_blocks {
            return Err(Error::InvalidRequest(format!(
                "the request needs {need} KV blocks of {} tokens (prompt {n} + max_tokens {}); the cache has {}",
                self.block_size, r.params.max_tokens, self.num_kv_blocks
            )));
        }
        if !self.enable_chunked_prefill && n > self.max_num_batched_tokens {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {n} tokens, more than max_num_batched_tokens {} with chunked prefill disabled",
                self.max_num_batched_tokens
            )));
        }
        Ok(())
    }
}

pub struct EngineCore {
    structured: Arc<LazyCompiler>,
    scheduler: Scheduler,
    runner: ModelRunner,
    limits: Limits,
    cfg: EngineConfig,
    next_arrival: u64,
}

/// Everything of a loaded model but its weights, which the core takes.
pub struct ModelInfo {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub eos_token_ids: Vec<u32>,
}

impl EngineCore {
    /// Builds the core over a loaded model; returns the model's remaining parts.
    pub fn new(model: Model, cfg: EngineConfig) -> Result<(EngineCore, ModelInfo)> {
        cfg.validate()?;
        let mc = &model.config;
        let max_model_len = cfg.max_model_len.unwrap_or(mc.max_position_embeddings);
        if max_model_len > mc.max_position_embeddings.max(1) * 8 || max_model_len > 1 << 22 {
            return Err(Error::InvalidRequest(format!(
                "max_model_len {max_model_len} is too large for this model (max_position_embeddings {})",
                mc.max_position_embeddings
            )));
        }
        let spec = ArchSpec::from_config(mc);
        // Quantized and 16-bit weights leave exact f32 arithmetic under `int8` (8-bit or
        // bf16 activations); f32 weights stay exact there.
        let quantized = model
            .weights
            .layers
            .first()
            .is_some_and(|l| l.q.dtype != crate::tensor::DType::F32);
        let kv_dtype = cfg.kv_cache_dtype.resolve(cfg.matmul_precision, quantized);
        let num_kv_blocks = match cfg.num_kv_blocks {
            Some(n) => n,
            None => {
                let per_block = KvCache::bytes_per_block(
                    spec.num_layers,
                    cfg.block_size,
                    spec.kv_size(),
                    kv_dtype,
                );
                let wanted = (max_model_len.div_ceil(cfg.block_size)) * cfg.max_num_seqs;
                (cfg.kv_cache_memory_bytes / per_block).clamp(1, wanted.max(1))
            }
        };
        let eos_token_ids = model.eos_token_ids();
        let runner_cfg = RunnerConfig {
            num_threads: cfg.num_threads,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_model_len,
            num_kv_blocks,
            block_size: cfg.block_size,
            seed: cfg.seed,
            matmul_precision: cfg.matmul_precision,
            kv_dtype,
        };
        let sched_cfg = SchedulerConfig {
            max_num_seqs: cfg.max_num_seqs,
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_model_len,
            block_size: cfg.block_size,
            num_kv_blocks,
            enable_prefix_caching: cfg.enable_prefix_caching,
            enable_chunked_prefill: cfg.enable_chunked_prefill,
            long_prefill_token_threshold: cfg.long_prefill_token_threshold,
            num_scheduler_steps: cfg.num_scheduler_steps,
            policy: cfg.scheduling_policy,
            hash_algo: cfg.prefix_caching_hash_algo,
        };
        let vocab_size = mc.vocab_size;
        let runner = ModelRunner::new(spec, model.weights, &runner_cfg, eos_token_ids.clone());
        let structured = Arc::new(LazyCompiler::new(
            model.tokenizer.clone_handle(),
            eos_token_ids.clone(),
            vocab_size,
        ));
        let core = EngineCore {
            structured,
            scheduler: Scheduler::new(sched_cfg, eos_token_ids.clone()),
            runner,
            limits: Limits {
                vocab_size,
                max_model_len,
                num_kv_blocks,
                block_size: cfg.block_size,
                num_scheduler_steps: cfg.num_scheduler_steps,
                enable_chunked_prefill: cfg.enable_chunked_prefill,
                max_num_batched_tokens: cfg.max_num_batched_tokens,
            },
            cfg,
            next_arrival: 0,
        };
        let info = ModelInfo {
            config: model.config,
            tokenizer: model.tokenizer,
            chat_template: model.chat_template,
            eos_token_ids,
        };
        Ok((core, info))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn max_model_len(&self) -> usize {
        self.limits.max_model_len
    }

    pub fn num_kv_blocks(&self) -> usize {
        self.limits.num_kv_blocks
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn validate(&self, r: &CoreRequest) -> Result<()> {
        self.limits.validate(r)
    }

    /// The compiler of `structured_outputs` constraints, for submitting threads.
    pub fn structured_compiler(&self) -> Arc<LazyCompiler> {
        self.structured.clone()
    }

    /// Validates and queues a request under the given id.
    pub fn add_request(&mut self, id: RequestId, r: CoreRequest) -> Result<()> {
        self.validate(&r)?;
        let matcher = match (&r.params.structured_outputs, r.matcher) {
            (Some(spec), None) => Some(self.structured.compile(spec)?),
            (_, m) => m,
        };
        let extra = ExtraKeys {
            cache_salt: r.cache_salt,
            ..Default::default()
        };
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let mut req = Request::new(
            id,
            r.prompt_token_ids,
            r.params,
            r.priority,
            arrival,
            extra,
            r.return_prompt_logits,
        );
        req.matcher = matcher;
        self.scheduler.add_request(req);
        Ok(())
    }

    /// Ends every sequence of a request now; returns their final outputs (empty if unknown
    /// or already finished).
    pub fn finish_request(&mut self, id: RequestId, reason: FinishReason) -> Vec<EngineCoreOutput> {
        self.scheduler.finish_request(id, reason)
    }

    /// Ends one sequence (by `EngineCoreOutput::seq_id`), e.g. at a stop string.
    pub fn finish_sequence(
        &mut self,
        seq_id: RequestId,
        reason: FinishReason,
    ) -> Option<EngineCoreOutput> {
        self.scheduler.finish_sequence(seq_id, reason)
    }

    /// Ends every request (shutdown); returns their final outputs.
    pub fn finish_all(&mut self, reason: FinishReason) -> Vec<EngineCoreOutput> {
        self.scheduler
            .request_ids()
            .into_iter()
            .flat_map(|id| self.scheduler.finish_request(id, reason))
            .collect()
    }

    /// Where a request stands (None once finished or unknown).
    pub fn request_status(&self, id: RequestId) -> Option<crate::sched::RequestStatus> {
        self.scheduler.request_status(id)
    }

    pub fn has_unfinished(&self) -> bool {
        self.scheduler.has_unfinished()
    }

    pub fn stats(&self) -> SchedulerStats {
        let (structured_masks, structured_mask_seconds) = self.runner.mask_stats();
        SchedulerStats {
            structured_masks,
            structured_mask_seconds,
            ..self.scheduler.stats()
        }
    }

    /// One scheduling decision: schedule, run, update. Returns the outputs of the
    /// scheduled requests (empty when nothing could run).
    pub fn step(&mut self) -> Vec<EngineCoreOutput> {
        let sched = self.scheduler.schedule();
        if sched.is_empty() {
            // Still let the runner drop finished requests' state.
            self.scheduler.reclaim_finished_ids(sched);
            return vec![];
        }
        let mut sched = sched;
        let mut result = self.runner.execute(&mut sched);
        self.scheduler.update_from_output(&sched, &mut result)
    }
}
