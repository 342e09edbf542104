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
use crate::sample::logprobs::LogprobsComputer;
use crate::sample::processors::{LogitsProcessors, SeqHistory};
use crate::sample::sampler::{argmax, RequestRng};
use crate::sample::{LogprobsMode, Sampler, TokenLogprobs};
use crate::sched::output::{ForkedSample, SampledTokens, ScheduledRequest};
use crate::sched::{ModelRunnerOutput, RequestId, SchedulerOutput};
use crate::structured::Matcher;
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
    /// Element type of the KV cache (resolved: no `auto` here).
    pub kv_dtype: crate::kv::KvDtype,
}

pub struct ModelRunner {
    decoder: Decoder<CpuBackend>,
    pub kv: KvCache,
    logits: Vec<f32>,
    vocab_size: usize,
    block_size: usize,
    batch: ForwardBatch,
    ctx: SampleContext,
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
        mut weights: ModelWeights,
        cfg: &RunnerConfig,
        eos_token_ids: Vec<u32>,
    ) -> Self {
        let vocab_size = spec.vocab_size;
        let kv = KvCache::with_dtype(
            spec.num_layers,
            cfg.num_kv_blocks,
            cfg.block_size,
            spec.kv_size(),
            cfg.kv_dtype,
        );
        backend.prepare_weights(&mut weights);
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
            ctx: SampleContext {
                sampler: Sampler::default(),
                processors: LogitsProcessors::default(),
                logprobs: LogprobsComputer::default(),
                seqs: HashMap::new(),
                eos_token_ids,
                seed: cfg.seed,
                raw: Vec::new(),
                processed: Vec::new(),
                matchers: HashMap::new(),
                mask_seconds: 0.0,
                mask_count: 0,
            },
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Structured-output masks computed so far and the seconds they took.
    pub fn mask_stats(&self) -> (u64, f64) {
        (self.ctx.mask_count, self.ctx.mask_seconds)
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
    pub fn execute(&mut self, sched: &mut SchedulerOutput) -> ModelRunnerOutput {
        for s in &mut sched.scheduled {
            if let Some(m) = s.matcher.take() {
                self.ctx.matchers.insert(s.request_id, m);
            }
        }
        let sched = &*sched;
        for id in &sched.finished_req_ids {
            self.ctx.seqs.remove(id);
            self.ctx.matchers.remove(id);
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
            for i in 0..s.token_ids.len() {
                let (prompt_row, sample_row) = row_kinds(s, i);
                if prompt_row || sample_row {
                    batch.logits_rows.push(first_row + i as u32);
                }
            }
        }
        let vocab = self.vocab_size;
        self.forward(&batch);
        let mut row = 0;
        for (s, o) in sched.scheduled.iter().zip(&mut out.outputs) {
            for i in 0..s.token_ids.len() {
                let (prompt_row, sample_row) = row_kinds(s, i);
                if !(prompt_row || sample_row) {
                    continue;
                }
                let r = &mut self.logits[row * vocab..(row + 1) * vocab];
                row += 1;
                let pos = s.num_computed_tokens + i;
                if prompt_row && s.return_prompt_logits {
                    o.prompt_logits.extend_from_slice(r);
                }
                if let (Some(k), Some(prompt)) = (s.params.prompt_logprobs, &s.prompt_token_ids) {
                    if wants_prompt_logprobs(s, pos) {
                        let next = prompt[pos + 1];
                        let lp = self
                            .ctx
                            .logprobs
                            .compute(r, next, k, LogprobsMode::RawLogprobs);
                        o.prompt_logprobs.push(lp);
                    }
                }
                if sample_row {
                    self.ctx.sample_first(s, r, o);
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
                || self.ctx.eos_token_ids.contains(&last)
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
            let (tok, lp) = self.ctx.sample(s, s.request_id, s.seq_index, r, false);
            let o = &mut out.outputs[idx];
            o.token_ids.push(tok);
            o.logprobs.extend(lp);
        }
        self.batch = batch;
        true
    }
}

/// Whether row `i` of a scheduled request's tokens is a prompt row whose logits or
/// logprobs are returned, and whether it is the row sampled from.
fn row_kinds(s: &ScheduledRequest, i: usize) -> (bool, bool) {
    let pos = s.num_computed_tokens + i;
    let prompt_row =
        pos < s.num_prompt_tokens && (s.return_prompt_logits || wants_prompt_logprobs(s, pos));
    let sample_row = s.sample && i + 1 == s.token_ids.len();
    (prompt_row, sample_row)
}

/// Whether the row at `pos` owes prompt logprobs (of prompt token `pos + 1`).
fn wants_prompt_logprobs(s: &ScheduledRequest, pos: usize) -> bool {
    s.prompt_logprobs_from.is_some_and(|from| pos >= from) && pos + 1 < s.num_prompt_tokens
}

/// Everything sampling needs besides the logits: kept apart from the logits buffer so a
/// row can be borrowed while sampling.
struct SampleContext {
    sampler: Sampler,
    processors: LogitsProcessors,
    logprobs: LogprobsComputer,
    /// Per-sequence sampling state, created on the first sample and dropped when the
    /// scheduler reports the sequence finished.
    seqs: HashMap<RequestId, SeqState>,
    /// Tokens that end a multi-step run early (EOS and stop tokens are re-checked by the
    /// scheduler).
    eos_token_ids: Vec<u32>,
    seed: u64,
    /// The row before processing (for raw logprobs and for forked sequences).
    raw: Vec<f32>,
    /// The processed row (processed logprobs).
    processed: Vec<f32>,
    /// Structured-output constraints handed over and not yet attached to a sequence.
    matchers: HashMap<RequestId, Matcher>,
    /// Time spent computing and applying structured-output masks.
    mask_seconds: f64,
    mask_count: u64,
}

impl SampleContext {
    /// The first sample of a step: beam candidates, or a token for this sequence and for
    /// each sequence forked from it.
    fn sample_first(&mut self, s: &ScheduledRequest, row: &mut [f32], o: &mut SampledTokens) {
        if s.beam_candidates > 0 {
            let best = argmax(row);
            let k = s.beam_candidates as i32;
            o.beam_candidates =
                Some(
                    self.logprobs
                        .compute(row, best, k, LogprobsMode::RawLogprobs),
                );
            return;
        }
        let keep_raw = !s.fork_children.is_empty();
        let mut fork_matcher = None;
        if keep_raw {
            self.raw.clear();
            self.raw.extend_from_slice(row);
            // Forks start from the constraint's state before the first token.
            fork_matcher = self.seq(s, s.request_id, s.seq_index).matcher.clone();
        }
        let (tok, lp) = self.sample(s, s.request_id, s.seq_index, row, false);
        o.token_ids.push(tok);
        o.logprobs.extend(lp);
        for &(child, index) in &s.fork_children {
            self.seq(s, child, index).matcher = fork_matcher.clone();
            row.copy_from_slice(&self.raw);
            let (token_id, logprobs) = self.sample(s, child, index, row, true);
            o.forked.push(ForkedSample {
                seq_id: child,
                token_id,
                logprobs,
            });
        }
    }

    /// The sampling state of sequence `seq_id`, created on first use (seeded from the
    /// request's seed plus the sequence index, or from the engine seed and the id).
    fn seq(&mut self, s: &ScheduledRequest, seq_id: RequestId, seq_index: u32) -> &mut SeqState {
        let p = &s.params;
        let engine_seed = self.seed;
        let matchers = &mut self.matchers;
        self.seqs.entry(seq_id).or_insert_with(|| SeqState {
            rng: RequestRng::new(match p.seed {
                Some(seed) => seed.wrapping_add(seq_index as u64),
                None => engine_seed ^ seq_id.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            }),
            hist: SeqHistory::new(p, s.prompt_token_ids.as_deref().unwrap_or(&[])),
            matcher: matchers.remove(&seq_id),
        })
    }

    /// Applies the processors and penalties to one row of sequence `seq_id`, draws,
    /// records the token; returns it with its logprobs when the request needs them.
    fn sample(
        &mut self,
        s: &ScheduledRequest,
        seq_id: RequestId,
        seq_index: u32,
        row: &mut [f32],
        forked: bool,
    ) -> (u32, Option<TokenLogprobs>) {
        let p = &s.params;
        self.seq(s, seq_id, seq_index);
        let seq = self.seqs.get_mut(&seq_id).expect("created above");
        let want = p.needs_sample_logprob();
        let mode = p.logprobs_mode;
        if want && !mode.is_processed() && !forked {
            self.raw.clear();
            self.raw.extend_from_slice(row);
        }
        self.processors
            .apply(row, p, &seq.hist, &self.eos_token_ids);
        if let Some(m) = &mut seq.matcher {
            let t0 = std::time::Instant::now();
            if m.apply_to_logits(row).is_err() {
                // The grammar failed (over its step limits): end the sequence with EOS.
                only_eos(row, &self.eos_token_ids);
            }
            self.mask_seconds += t0.elapsed().as_secs_f64();
            self.mask_count += 1;
        }
        if want && mode.is_processed() {
            self.processed.clear();
            let inv_t = if p.is_greedy() {
                1.0
            } else {
                1.0 / p.temperature
            };
            self.processed.extend(row.iter().map(|&l| l * inv_t));
        }
        let tok = self.sampler.sample(row, p, &mut seq.rng);
        seq.hist.push(tok);
        if let Some(m) = &mut seq.matcher {
            // A rejected token leaves the state unchanged; the next mask still holds.
            let _ = m.accept_token(tok);
        }
        if !want {
            return (tok, None);
        }
        let source = if mode.is_processed() {
            &self.processed
        } else {
            &self.raw
        };
        let k = p.logprobs.unwrap_or(0);
        (tok, Some(self.logprobs.compute(source, tok, k, mode)))
    }
}

/// One request's sampling state in the runner.
struct SeqState {
    rng: RequestRng,
    hist: SeqHistory,
    matcher: Option<Matcher>,
}

/// Leaves only the end-of-sequence tokens drawable.
fn only_eos(row: &mut [f32], eos_token_ids: &[u32]) {
    for (i, l) in row.iter_mut().enumerate() {
        if !eos_token_ids.contains(&(i as u32)) {
            *l = f32::NEG_INFINITY;
        }
    }
}
