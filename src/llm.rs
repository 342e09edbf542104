//! `Llm`: a model with its runner and a synchronous generation loop over many requests
//! (continuous batching with chunked prefill over the paged KV cache). The serving engine
//! runs the same steps on its own thread with a full scheduler.

use crate::error::{Error, Result};
use crate::kv::BlockPool;
use crate::model::arch::ArchSpec;
use crate::model::decoder::ForwardBatch;
use crate::model::{Model, Tokenizer};
use crate::runner::ModelRunner;
use crate::sample::sampler::RequestRng;
use crate::sample::{Sampler, SamplingParams};
use std::path::Path;

/// Options with vLLM's names.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// Worker threads (0: one per core).
    pub num_threads: usize,
    pub block_size: usize,
    /// KV blocks in the pool; None: enough for `max_num_seqs` sequences of `max_model_len`.
    pub num_kv_blocks: Option<usize>,
    /// Tokens per forward pass at most (also the activation workspace size).
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt + output); None: the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    pub max_num_seqs: usize,
    /// Prompt tokens one sequence may take in one step (chunked prefill).
    pub long_prefill_token_threshold: usize,
    /// Seed of requests that carry none.
    pub seed: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            num_threads: 0,
            block_size: 16,
            num_kv_blocks: None,
            max_num_batched_tokens: 512,
            max_model_len: None,
            max_num_seqs: 8,
            long_prefill_token_threshold: 512,
            seed: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token.
    Stop,
    /// `max_tokens` or `max_model_len` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_token_ids: Vec<u32>,
    pub params: SamplingParams,
    /// Also return the logits at every prompt position.
    pub return_prompt_logits: bool,
}

#[derive(Clone, Debug)]
pub struct RequestOutput {
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// `prompt_len x vocab` logits when asked: row t is the distribution after `prompt[..=t]`.
    pub prompt_logits: Option<Vec<f32>>,
}

/// One request being served.
struct Seq {
    req: GenerateRequest,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    num_computed_tokens: usize,
    blocks: Vec<u32>,
    rng: RequestRng,
    finish: Option<FinishReason>,
    prompt_logits: Vec<f32>,
}

impl Seq {
    fn prompt_len(&self) -> usize {
        self.req.prompt_token_ids.len()
    }
    fn num_output(&self) -> usize {
        self.tokens.len() - self.prompt_len()
    }
}

pub struct Llm {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub config: crate::config::ModelConfig,
    eos_token_ids: Vec<u32>,
    runner: ModelRunner,
    pool: BlockPool,
    batch: ForwardBatch,
    sampler: Sampler,
    opts: LlmConfig,
    max_model_len: usize,
}

impl Llm {
    pub fn load(path: &Path, opts: LlmConfig) -> Result<Llm> {
        Self::from_model(Model::load(path)?, opts)
    }

    pub fn from_model(model: Model, opts: LlmConfig) -> Result<Llm> {
        if opts.block_size == 0
            || opts.max_num_batched_tokens == 0
            || opts.max_num_seqs == 0
            || opts.long_prefill_token_threshold == 0
        {
            return Err(Error::InvalidRequest("block_size, max_num_batched_tokens, max_num_seqs and long_prefill_token_threshold must be positive".into()));
        }
        let eos_token_ids = model.eos_token_ids();
        let max_model_len = opts
            .max_model_len
            .unwrap_or(model.config.max_position_embeddings);
        if max_model_len == 0 || max_model_len > model.config.max_position_embeddings.max(1) * 4 {
            return Err(Error::InvalidRequest(format!(
                "max_model_len {max_model_len} is out of range for this model"
            )));
        }
        let blocks_per_seq = max_model_len.div_ceil(opts.block_size);
        let num_kv_blocks = opts
            .num_kv_blocks
            .unwrap_or(blocks_per_seq * opts.max_num_seqs);
        let spec = ArchSpec::from_config(&model.config);
        let runner = ModelRunner::new(
            spec,
            model.weights,
            opts.num_threads,
            opts.max_num_batched_tokens,
            max_model_len,
            num_kv_blocks,
            opts.block_size,
        );
        Ok(Llm {
            tokenizer: model.tokenizer,
            chat_template: model.chat_template,
            config: model.config,
            eos_token_ids,
            runner,
            pool: BlockPool::new(num_kv_blocks),
            batch: ForwardBatch::new(blocks_per_seq),
            sampler: Sampler::default(),
            opts,
            max_model_len,
        })
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    fn validate(&self, r: &GenerateRequest) -> Result<()> {
        r.params.validate()?;
        if r.prompt_token_ids.is_empty() {
            return Err(Error::InvalidRequest("the prompt is empty".into()));
        }
        let vocab = self.runner.vocab_size();
        if let Some(&bad) = r.prompt_token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidRequest(format!(
                "prompt token id {bad} is out of range (vocabulary size {vocab})"
            )));
        }
        if r.prompt_token_ids.len() >= self.max_model_len {
            return Err(Error::InvalidRequest(format!(
                "the prompt has {} tokens; max_model_len is {}",
                r.prompt_token_ids.len(),
                self.max_model_len
            )));
        }
        let need = (r.prompt_token_ids.len() + r.params.max_tokens)
            .min(self.max_model_len)
            .div_ceil(self.opts.block_size);
        if need > self.pool.num_blocks() {
            return Err(Error::InvalidRequest(format!(
                "the request needs {need} KV blocks; the cache has {}",
                self.pool.num_blocks()
            )));
        }
        Ok(())
    }

    /// Generates for every request, batching them; `on_token(request_index, token_id)` is
    /// called for each generated token as it is sampled.
    pub fn generate(
        &mut self,
        requests: Vec<GenerateRequest>,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<RequestOutput>> {
        for r in &requests {
            self.validate(r)?;
        }
        let mut seqs: Vec<Seq> = requests
            .into_iter()
            .enumerate()
            .map(|(i, req)| {
                let seed = req
                    .params
                    .seed
                    .unwrap_or(self.opts.seed.wrapping_add(i as u64));
                Seq {
                    tokens: req.prompt_token_ids.clone(),
                    rng: RequestRng::new(seed),
                    req,
                    num_computed_tokens: 0,
                    blocks: vec![],
                    finish: None,
                    prompt_logits: vec![],
                }
            })
            .collect();
        let mut scheduled = Vec::with_capacity(seqs.len());
        while seqs.iter().any(|s| s.finish.is_none()) {
            self.schedule(&mut seqs, &mut scheduled)?;
            self.run_step(&mut seqs, &scheduled, &mut on_token);
        }
        Ok(seqs.into_iter().map(|s| self.finish_output(s)).collect())
    }

    /// Picks this step's tokens: running sequences in order, each owed tokens up to the
    /// prefill chunk and the step budget, while KV blocks and `max_num_seqs` allow.
    fn schedule(&mut self, seqs: &mut [Seq], scheduled: &mut Vec<(usize, usize)>) -> Result<()> {
        let mut budget = self.opts.max_num_batched_tokens;
        scheduled.clear();
        let bs = self.opts.block_size;
        self.batch.clear();
        for (i, s) in seqs.iter_mut().enumerate() {
            if s.finish.is_some() || budget == 0 || scheduled.len() == self.opts.max_num_seqs {
                continue;
            }
            let owed = s.tokens.len() - s.num_computed_tokens;
            let n = owed.min(budget).min(self.opts.long_prefill_token_threshold);
            let need = (s.num_computed_tokens + n)
                .div_ceil(bs)
                .saturating_sub(s.blocks.len());
            if !self.pool.allocate(need, &mut s.blocks) {
                continue;
            }
            let start = s.num_computed_tokens;
            let first_row = self.batch.num_tokens() as u32;
            self.batch
                .push_seq(&s.tokens[start..start + n], start, &s.blocks, bs);
            let prompt_len = s.prompt_len();
            for pos in start..start + n {
                let prompt_row = s.req.return_prompt_logits && pos < prompt_len;
                if prompt_row || pos + 1 == s.tokens.len() {
                    self.batch
                        .logits_rows
                        .push(first_row + (pos - start) as u32);
                }
            }
            budget -= n;
            scheduled.push((i, n));
        }
        if scheduled.is_empty() {
            return Err(Error::InvalidRequest(
                "the KV cache is too small for the running requests".into(),
            ));
        }
        Ok(())
    }

    fn run_step(
        &mut self,
        seqs: &mut [Seq],
        scheduled: &[(usize, usize)],
        on_token: &mut impl FnMut(usize, u32),
    ) {
        let vocab = self.runner.vocab_size();
        let logits = self.runner.execute(&self.batch);
        let mut row = 0;
        for &(i, n) in scheduled {
            let s = &mut seqs[i];
            let start = s.num_computed_tokens;
            s.num_computed_tokens += n;
            let prompt_len = s.prompt_len();
            for pos in start..start + n {
                let is_prompt_row = s.req.return_prompt_logits && pos < prompt_len;
                let is_last = pos + 1 == s.tokens.len();
                if !(is_prompt_row || is_last) {
                    continue;
                }
                let r = &mut logits[row * vocab..(row + 1) * vocab];
                row += 1;
                if is_prompt_row {
                    s.prompt_logits.extend_from_slice(r);
                }
                if is_last {
                    let tok = self.sampler.sample(r, &s.req.params, &mut s.rng);
                    s.tokens.push(tok);
                    on_token(i, tok);
                    s.finish = check_stop(s, tok, &self.eos_token_ids, self.max_model_len);
                }
            }
            if s.finish.is_some() {
                self.pool.free(s.blocks.drain(..).rev());
            }
        }
    }

    fn finish_output(&self, s: Seq) -> RequestOutput {
        let token_ids = s.tokens[s.prompt_len()..].to_vec();
        let text = self.tokenizer.decode(&token_ids, true).unwrap_or_default();
        RequestOutput {
            prompt_token_ids: s.req.prompt_token_ids,
            token_ids,
            text,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
            prompt_logits: s.req.return_prompt_logits.then_some(s.prompt_logits),
        }
    }
}

fn check_stop(s: &Seq, tok: u32, eos: &[u32], max_model_len: usize) -> Option<FinishReason> {
    if (!s.req.params.ignore_eos && eos.contains(&tok))
        || s.req.params.stop_token_ids.contains(&tok)
    {
        Some(FinishReason::Stop)
    } else if s.num_output() >= s.req.params.max_tokens || s.tokens.len() >= max_model_len {
        Some(FinishReason::Length)
    } else {
        None
    }
}
