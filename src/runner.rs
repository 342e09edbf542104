//! ModelRunner: turns a `SchedulerOutput` into a `ForwardBatch`, runs the decoder over the
//! KV cache, samples the sequences that complete their known tokens, and returns the
//! sampled tokens as a `ModelRunnerOutput`. Multi-step batches loop here, feeding each
//! sampled token back, so the scheduler is consulted once per `num_steps` tokens.

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::kv::KvCache;
use crate::model::arch::ArchSpec;
use crate::model::decoder::{Decoder, ForwardBatch};
use crate::model::ModelWeights;
use crate::sample::processors::{LogitsProcessors, SeqHistory};
use crate::sample::sampler::RequestRng;
use crate::sample::Sampler;
use crate::sched::output::SampledTokens;
use crate::sched::{ModelRunnerOutput, RequestId, SchedulerOutput};
use std::collections::HashMap;

/// Shapes the runner is built for.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub num_threads: usize,
    pub max_num_batched_tokens: usize,
    pub max_model_len: usize,
    pub num_kv_blocks: usize,
    pub block_size: usize,
    /// Seed of requests that carry none (combined with the request id).
    pub seed: u64,
    pub matmul_precision: crate::backend::cpu::MatmulPrecision,
}

pub struct ModelRunner {
    decoder: Decoder<CpuBackend>,
    pub kv: KvCache,
    logits: Vec<f32>,
    vocab_size: usize,
    block_size: usize,
    batch: ForwardBatch,
    sampler: Sampler,
    processors: LogitsProcessors,
    /// Per-request sampling state, created on the first sample and dropped when the
    /// scheduler reports the request finished.
    seqs: HashMap<RequestId, SeqState>,
    /// Tokens that end a multi-step run early (EOS and stop tokens are re-checked by the scheduler).
    eos_token_ids: Vec<u32>,
    seed: u64,
}

impl ModelRunner {
    pub fn new(
        spec: ArchSpec,
        weights: ModelWeights,
        cfg: &RunnerConfig,
        eos_token_ids: Vec<u32>,
    ) -> Self {
        Self::with_backend(
            CpuBackend::with_precision(cfg.num_threads, cfg.matmul_precision),
            spec,
            weights,
            cfg,
            eos_token_ids,
        )
    }

    pub fn with_backend(
        backend: CpuBackend,
        spec: ArchSpec,
        weights: ModelWeights,
        cfg: &RunnerConfig,
        eos_token_ids: Vec<u32>,
    ) -> Self {
        let vocab_size = spec.vocab_size;
        let kv = KvCache::new(
            spec.num_layers,
            cfg.num_kv_blocks,
            cfg.block_size,
            spec.kv_size(),
        );
        let decoder = Decoder::new(
            backend,
            spec,
            weights,
            cfg.max_num_batched_tokens,
            cfg.max_model_len,
        );
        ModelRunner {
            decoder,
            kv,
            logits: Vec::new(),
            vocab_size,
            block_size: cfg.block_size,
            batch: ForwardBatch::new(cfg.max_model_len.div_ceil(cfg.block_size)),
            sampler: Sampler::default(),
            processors: LogitsProcessors::default(),
            seqs: HashMap::new(),
            eos_token_ids,
            seed: cfg.seed,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn spec(&self) -> &ArchSpec {
        &self.decoder.spec
    }

    /// Runs one raw batch. Returns `batch.logits_rows.len() x vocab_size` logits.
    pub fn forward(&mut self, batch: &ForwardBatch) -> &mut [f32] {
        let n = batch.logits_rows.len() * self.vocab_size;
        if self.logits.len() < n {
            self.logits.resize(n, 0.0);
        }
        self.decoder
            .forward(batch, &mut self.kv, &mut self.logits[..n]);
        &mut self.logits[..n]
    }

    /// Runs the scheduled step (all `num_steps` of it) and samples.
    pub fn execute(&mut self, sched: &SchedulerOutput) -> ModelRunnerOutput {
        for id in &sched.finished_req_ids {
            self.seqs.remove(id);
        }
        if !sched.blocks_to_copy.is_empty() {
            self.decoder
                .backend
                .copy_blocks(&mut self.kv, &sched.blocks_to_copy);
        }
        let mut out = ModelRunnerOutput {
            outputs: sched
                .scheduled
                .iter()
                .map(|s| SampledTokens {
                    request_id: s.request_id,
                    ..Default::default()
                })
                .collect(),
        };
        self.first_step(sched, &mut out);
        for step in 1..sched.num_steps.max(1) {
            if !self.next_step(sched, &mut out, step) {
                break;
            }
        }
        out
    }

    fn first_step(&mut self, sched: &SchedulerOutput, out: &mut ModelRunnerOutput) {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        for s in &sched.scheduled {
            let first_row = batch.num_tokens() as u32;
            batch.push_seq(
                &s.token_ids,
                s.num_computed_tokens,
                &s.block_ids,
                self.block_size,
            );
            for (i, _) in s.token_ids.iter().enumerate() {
                let pos = s.num_computed_tokens + i;
                let prompt_row = s.return_prompt_logits && pos < s.num_prompt_tokens;
                if prompt_row || (s.sample && i + 1 == s.token_ids.len()) {
                    batch.logits_rows.push(first_row + i as u32);
                }
            }
        }
        let vocab = self.vocab_size;
        self.forward(&batch);
        let mut row = 0;
        for (s, o) in sched.scheduled.iter().zip(&mut out.outputs) {
            for (i, _) in s.token_ids.iter().enumerate() {
                let pos = s.num_computed_tokens + i;
                let prompt_row = s.return_prompt_logits && pos < s.num_prompt_tokens;
                let sample_row = s.sample && i + 1 == s.token_ids.len();
                if !(prompt_row || sample_row) {
                    continue;
                }
                let r = &mut self.logits[row * vocab..(row + 1) * vocab];
                row += 1;
                if prompt_row {
                    o.prompt_logits.extend_from_slice(r);
                }
                if sample_row {
                    let seed = s
                        .params
                        .seed
                        .unwrap_or(self.seed ^ s.request_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let seq = self.seqs.entry(s.request_id).or_insert_with(|| SeqState {
                        rng: RequestRng::new(seed),
                        hist: SeqHistory::new(
                            &s.params,
                            s.penalty_prompt_token_ids.as_deref().unwrap_or(&[]),
                        ),
                    });
                    let tok = sample_one(
                        &mut self.sampler,
                        &mut self.processors,
                        &self.eos_token_ids,
                        seq,
                        r,
                        &s.params,
                    );
                    o.token_ids.push(tok);
                }
            }
        }
        self.batch = batch;
    }

    /// Multi-step: feeds each request's last sampled token back. False when no request
    /// continues.
    fn next_step(
        &mut self,
        sched: &SchedulerOutput,
        out: &mut ModelRunnerOutput,
        step: usize,
    ) -> bool {
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        let mut active = Vec::with_capacity(sched.scheduled.len());
        for (idx, (s, o)) in sched.scheduled.iter().zip(&out.outputs).enumerate() {
            let Some(&last) = o.token_ids.last() else {
                continue;
            };
            if o.token_ids.len() != step
                || step >= s.max_sampled_tokens
                || self.eos_token_ids.contains(&last)
                || s.params.stop_token_ids.contains(&last)
            {
                continue;
            }
            let pos = s.num_computed_tokens + s.token_ids.len() + step - 1;
            batch.logits_rows.push(batch.num_tokens() as u32);
            batch.push_seq(&[last], pos, &s.block_ids, self.block_size);
            active.push(idx);
        }
        if active.is_empty() {
            self.batch = batch;
            return false;
        }
        let vocab = self.vocab_size;
        self.forward(&batch);
        for (row, &idx) in active.iter().enumerate() {
            let s = &sched.scheduled[idx];
            let r = &mut self.logits[row * vocab..(row + 1) * vocab];
            let seq = self
                .seqs
                .get_mut(&s.request_id)
                .expect("sampled in the first step");
            let tok = sample_one(
                &mut self.sampler,
                &mut self.processors,
                &self.eos_token_ids,
                seq,
                r,
                &s.params,
            );
            out.outputs[idx].token_ids.push(tok);
        }
        self.batch = batch;
        true
    }
}

/// One request's sampling state in the runner.
struct SeqState {
    rng: RequestRng,
    hist: SeqHistory,
}

/// Applies the processors and penalties to one row, draws, records the token.
fn sample_one(
    sampler: &mut Sampler,
    processors: &mut LogitsProcessors,
    eos_token_ids: &[u32],
    seq: &mut SeqState,
    row: &mut [f32],
    params: &crate::sample::SamplingParams,
) -> u32 {
    processors.apply(row, params, &seq.hist, eos_token_ids);
    let tok = sampler.sample(row, params, &mut seq.rng);
    seq.hist.push(tok);
    tok
}
