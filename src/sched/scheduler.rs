//! The token-centric scheduler (vLLM V1): every request owes `num_tokens -
//! num_computed_tokens` tokens; each step grants tokens to running requests first, then
//! admits waiting ones, within `max_num_batched_tokens` and `max_num_seqs`. A long prompt
//! is computed in chunks across steps while others decode. When the KV pool runs dry the
//! lowest-priority, latest-arrived running request is preempted and later recomputed.

use super::beam::{Beam, BeamGroup};
use super::output::{
    EngineCoreOutput, ForkedSample, ModelRunnerOutput, ScheduledRequest, SchedulerOutput,
};
use super::request::{FinishReason, Request, RequestId, RequestStatus};
use crate::kv::block_hash::HashAlgo;
use crate::kv::{KvCacheManager, TailCow};
use std::collections::{HashMap, VecDeque};

/// Ids of forked sequences start here, far above the ids callers use.
const FIRST_FORKED_SEQ_ID: RequestId = 1 << 62;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SchedulePolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lower `priority` first, FCFS within a level.
    Priority,
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub max_model_len: usize,
    pub block_size: usize,
    pub num_kv_blocks: usize,
    pub enable_prefix_caching: bool,
    pub enable_chunked_prefill: bool,
    /// Prompt tokens one request may take per step (0: no limit beyond the budget).
    pub long_prefill_token_threshold: usize,
    pub num_scheduler_steps: usize,
    pub policy: SchedulePolicy,
    pub hash_algo: HashAlgo,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SchedulerStats {
    pub num_running: usize,
    pub num_waiting: usize,
    pub num_preemptions: u64,
    pub kv_cache_usage: f64,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_free_blocks: usize,
    pub num_blocks: usize,
    /// Structured-output masks computed and their total time (filled by the engine core
    /// from the runner).
    pub structured_masks: u64,
    pub structured_mask_seconds: f64,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvCacheManager,
    requests: HashMap<RequestId, Request>,
    waiting: VecDeque<RequestId>,
    running: Vec<RequestId>,
    eos_token_ids: Vec<u32>,
    finished_req_ids: Vec<RequestId>,
    num_preemptions: u64,
    /// Live sequences per request (by the id the caller knows).
    live: HashMap<RequestId, usize>,
    /// Beam-search requests' groups, by the id the caller knows.
    beams: HashMap<RequestId, BeamGroup>,
    next_seq_id: RequestId,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, eos_token_ids: Vec<u32>) -> Self {
        let kv = KvCacheManager::new(
            cfg.num_kv_blocks,
            cfg.block_size,
            cfg.enable_prefix_caching,
            cfg.hash_algo,
        );
        Scheduler {
            cfg,
            kv,
            requests: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            eos_token_ids,
            finished_req_ids: Vec::new(),
            num_preemptions: 0,
            live: HashMap::new(),
            beams: HashMap::new(),
            next_seq_id: FIRST_FORKED_SEQ_ID,
        }
    }

    fn alloc_seq_id(&mut self) -> RequestId {
        self.next_seq_id += 1;
        self.next_seq_id
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn add_request(&mut self, mut req: Request) {
        req.update_block_hashes(self.cfg.hash_algo, self.cfg.block_size);
        let p = req.params.clone();
        if p.is_beam_search() {
            let num_logprobs = p.logprobs.map_or(0, |k| k.max(0) as usize);
            self.beams.insert(
                req.request_id,
                BeamGroup {
                    beam_width: p.beam_width,
                    n: p.n,
                    length_penalty: p.length_penalty,
                    max_tokens: p.max_tokens,
                    ignore_eos: p.ignore_eos,
                    num_prompt_tokens: req.num_prompt_tokens,
                    num_logprobs: num_logprobs.min(2 * p.beam_width),
                    rounds_done: 0,
                    live: vec![Beam {
                        seq_id: req.request_id,
                        ..Default::default()
                    }],
                    reports: vec![None],
                    completed: vec![],
                },
            );
        } else {
            req.pending_forks = (1..p.num_sequences() as u32)
                .map(|i| (self.alloc_seq_id(), i))
                .collect();
        }
        self.live.insert(req.request_id, 1);
        self.waiting.push_back(req.request_id);
        self.requests.insert(req.request_id, req);
    }

    /// Ids (as callers know them) of every unfinished request.
    pub fn request_ids(&self) -> Vec<RequestId> {
        let mut ids: Vec<RequestId> = self.live.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// A sequence by its id (a request's first sequence has the request's id).
    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
    }

    /// Where a request stands: its first sequence's status, or Running for a beam search
    /// or n > 1 request whose first sequence is gone. None once finished or unknown.
    pub fn request_status(&self, id: RequestId) -> Option<RequestStatus> {
        match self.requests.get(&id) {
            Some(r) => Some(r.status),
            None => self
                .live
                .contains_key(&id)
                .then_some(RequestStatus::Running),
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        let pc = self.kv.metrics();
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            num_preemptions: self.num_preemptions,
            kv_cache_usage: self.kv.usage(),
            prefix_cache_queries: pc.queries,
            prefix_cache_hits: pc.hits,
            num_free_blocks: self.kv.num_free_blocks(),
            num_blocks: self.kv.num_blocks(),
            ..Default::default()
        }
    }

    /// Finishes every sequence of a request early (abort, shutdown). Returns their final
    /// outputs (the last one has `request_finished`); empty if unknown or finished.
    pub fn finish_request(&mut self, id: RequestId, reason: FinishReason) -> Vec<EngineCoreOutput> {
        if let Some(g) = self.beams.remove(&id) {
            for b in &g.live {
                self.drop_seq(b.seq_id);
            }
            self.live.remove(&id);
            return vec![EngineCoreOutput {
                request_id: id,
                seq_id: id,
                finish_reason: Some(reason),
                num_prompt_tokens: g.num_prompt_tokens,
                request_finished: true,
                ..Default::default()
            }];
        }
        let mut seqs: Vec<RequestId> = self
            .requests
            .values()
            .filter(|r| r.external_id == id)
            .map(|r| r.request_id)
            .collect();
        seqs.sort_unstable();
        seqs.into_iter()
            .filter_map(|s| self.finish_sequence(s, reason))
            .collect()
    }

    /// Finishes one sequence early (a stop string found in its text). None if unknown.
    pub fn finish_sequence(
        &mut self,
        seq_id: RequestId,
        reason: FinishReason,
    ) -> Option<EngineCoreOutput> {
        if self.requests.get(&seq_id)?.params.is_beam_search() {
            return None;
        }
        let req = self.drop_seq(seq_id)?;
        let request_finished = self.retire(req.external_id);
        Some(EngineCoreOutput {
            finish_reason: Some(reason),
            request_finished,
            ..core_output(&req)
        })
    }

    /// Removes a sequence and frees its blocks (its runner state goes at the next step).
    fn drop_seq(&mut self, seq_id: RequestId) -> Option<Request> {
        let req = self.requests.remove(&seq_id)?;
        self.waiting.retain(|&r| r != seq_id);
        self.running.retain(|&r| r != seq_id);
        self.kv.free(seq_id);
        self.finished_req_ids.push(seq_id);
        Some(req)
    }

    /// One sequence of request `id` ended; true when it was the last.
    fn retire(&mut self, id: RequestId) -> bool {
        let Some(n) = self.live.get_mut(&id) else {
            return true;
        };
        *n -= 1;
        if *n == 0 {
            self.live.remove(&id);
            return true;
        }
        false
    }

    /// Gives back the finished ids of an empty step so the next step reports them.
    pub fn reclaim_finished_ids(&mut self, out: SchedulerOutput) {
        let mut ids = out.finished_req_ids;
        ids.append(&mut self.finished_req_ids);
        self.finished_req_ids = ids;
    }

    /// Tokens a request is owed this step, before the budget.
    fn owed(&self, req: &Request) -> usize {
        let mut n = req.num_tokens() - req.num_computed_tokens;
        if self.cfg.long_prefill_token_threshold > 0 {
            n = n.min(self.cfg.long_prefill_token_threshold);
        }
        n
    }

    /// The running request to preempt: lowest priority (highest value), latest arrival.
    fn pick_victim(&self) -> Option<usize> {
        let key = |id: &RequestId| {
            let r = &self.requests[id];
            match self.cfg.policy {
                SchedulePolicy::Priority => (r.priority, r.arrival_order),
                SchedulePolicy::Fcfs => (0, r.arrival_order),
            }
        };
        (0..self.running.len()).max_by_key(|&i| key(&self.running[i]))
    }

    fn preempt(&mut self, idx: usize) -> RequestId {
        let id = self.running.remove(idx);
        self.kv.free(id);
        let req = self.requests.get_mut(&id).expect("running request exists");
        req.status = RequestStatus::Preempted;
        req.num_computed_tokens = 0;
        req.num_preemptions += 1;
        self.num_preemptions += 1;
        self.waiting.push_front(id);
        id
    }

    /// Index in `waiting` of the next request to admit.
    fn next_waiting(&self) -> Option<usize> {
        match self.cfg.policy {
            SchedulePolicy::Fcfs => (!self.waiting.is_empty()).then_some(0),
            SchedulePolicy::Priority => (0..self.waiting.len()).min_by_key(|&i| {
                let r = &self.requests[&self.waiting[i]];
                (r.priority, r.arrival_order)
            }),
        }
    }

    /// Multi-step applies to a decode-only batch with nothing waiting.
    fn lookahead_steps(&self) -> usize {
        let k = self.cfg.num_scheduler_steps.max(1);
        let decode_only = self.waiting.is_empty()
            && self.running.iter().all(|id| {
                let r = &self.requests[id];
                r.num_tokens() - r.num_computed_tokens == 1
                    && !r.computes_prompt_rows()
                    && r.pending_forks.is_empty()
                    && !r.params.is_beam_search()
            });
        if k > 1 && decode_only {
            k
        } else {
            1
        }
    }

    /// Tokens this request may still sample (max_tokens and max_model_len).
    fn remaining_samples(&self, r: &Request) -> usize {
        let by_tokens = r.params.max_tokens.saturating_sub(r.num_output_tokens());
        let by_len = self.cfg.max_model_len.saturating_sub(r.num_tokens());
        by_tokens.min(by_len).max(1)
    }

    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput {
            num_steps: self.lookahead_steps(),
            finished_req_ids: std::mem::take(&mut self.finished_req_ids),
            ..Default::default()
        };
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut preempted_any = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let req = &self.requests[&id];
            let n = self.owed(req).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let steps = out.num_steps.min(self.remaining_samples(req));
            let need = req.num_computed_tokens + n + steps - 1;
            let scheduled = loop {
                if self.reserve(id, need, &mut out) {
                    break true;
                }
                let victim = self.pick_victim().expect("running is not empty");
                preempted_any = true;
                let victim_id = self.preempt(victim);
                if victim_id == id {
                    break false;
                }
                if victim < i {
                    // Already scheduled this step: take its tokens back.
                    i -= 1;
                    if let Some(pos) = out.scheduled.iter().position(|s| s.request_id == victim_id)
                    {
                        let s = out.scheduled.remove(pos);
                        if let Some(m) = s.matcher {
                            // Not handed over after all: the victim keeps its constraint.
                            if let Some(r) = self.requests.get_mut(&victim_id) {
                                r.matcher = Some(m);
                            }
                        }
                        budget += s.token_ids.len();
                        out.total_num_scheduled_tokens -= s.token_ids.len();
                    }
                }
            };
            if !scheduled {
                continue;
            }
            self.push_scheduled(&mut out, id, n, steps);
            budget -= n;
            i += 1;
        }
        if !preempted_any {
            self.admit_waiting(&mut out, &mut budget);
        }
        out
    }

    /// Gives a running sequence blocks for `need` tokens, first copying a partial last
    /// block it shares with a forked sequence. False when the pool is short.
    fn reserve(&mut self, id: RequestId, need: usize, out: &mut SchedulerOutput) -> bool {
        let computed = self.requests[&id].num_computed_tokens;
        match self.kv.copy_on_write_tail(id, computed) {
            TailCow::Exclusive => {}
            TailCow::Copied { src, dst } => out.blocks_to_copy.push((src, dst)),
            TailCow::NoFreeBlock => return false,
        }
        let hashes = &self.requests[&id].block_hashes;
        self.kv.allocate_slots(id, need, &[], hashes).is_some()
    }

    fn admit_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(w) = self.next_waiting() else { break };
            let id = self.waiting[w];
            let req = &self.requests[&id];
            let (hit_blocks, num_hit) = if req.computes_prompt_rows() {
                (vec![], 0)
            } else {
                let (tokens, hashes) = (&req.all_token_ids, &req.block_hashes);
                self.kv.get_computed_blocks(id, tokens, hashes)
            };
            let owed = req.num_tokens() - num_hit;
            if !self.cfg.enable_chunked_prefill && owed > *budget {
                break;
            }
            let mut n = owed.min(*budget);
            if self.cfg.long_prefill_token_threshold > 0 {
                n = n.min(self.cfg.long_prefill_token_threshold);
            }
            let hashes = &self.requests[&id].block_hashes;
            if self
                .kv
                .allocate_slots(id, num_hit + n, &hit_blocks, hashes)
                .is_none()
            {
                break;
            }
            self.waiting.remove(w);
            self.running.push(id);
            let req = self.requests.get_mut(&id).expect("waiting request exists");
            req.status = RequestStatus::Running;
            req.num_computed_tokens = num_hit;
            req.num_cached_tokens.get_or_insert(num_hit);
            self.push_scheduled(out, id, n, 1);
            *budget -= n;
        }
    }

    fn push_scheduled(&mut self, out: &mut SchedulerOutput, id: RequestId, n: usize, steps: usize) {
        let matcher = self.requests.get_mut(&id).and_then(|r| r.matcher.take());
        let req = &self.requests[&id];
        let start = req.num_computed_tokens;
        let sample = start + n == req.num_tokens();
        let beam_candidates = match self.beams.get(&req.external_id) {
            Some(g) => g
                .num_candidates()
                .max(req.params.logprobs.unwrap_or(0).max(0) as usize),
            None => 0,
        };
        out.scheduled.push(ScheduledRequest {
            request_id: id,
            num_computed_tokens: start,
            token_ids: req.all_token_ids[start..start + n].to_vec(),
            block_ids: self.kv.block_ids(id).to_vec(),
            sample,
            max_sampled_tokens: steps,
            num_prompt_tokens: req.num_prompt_tokens,
            params: req.params.clone(),
            return_prompt_logits: req.return_prompt_logits,
            prompt_logprobs_from: req.prompt_logprobs_from,
            prompt_token_ids: req.shared_prompt_token_ids.clone(),
            seq_index: req.seq_index,
            fork_children: if sample {
                req.pending_forks.clone()
            } else {
                vec![]
            },
            beam_candidates,
            matcher,
        });
        out.total_num_scheduled_tokens += n;
    }

    /// Applies a step's results: advances computed tokens, appends sampled tokens, checks
    /// stop conditions (surplus multi-step tokens after a stop are discarded), forks n/best_of
    /// sequences, advances beam groups, frees finished sequences. Returns one output per
    /// sequence that has news.
    pub fn update_from_output(
        &mut self,
        sched: &SchedulerOutput,
        result: &mut ModelRunnerOutput,
    ) -> Vec<EngineCoreOutput> {
        let mut outputs = Vec::with_capacity(sched.scheduled.len());
        let mut sampled: HashMap<RequestId, usize> = HashMap::with_capacity(result.outputs.len());
        for (i, o) in result.outputs.iter().enumerate() {
            sampled.insert(o.request_id, i);
        }
        let mut beam_rounds = Vec::new();
        for s in &sched.scheduled {
            let Some(req) = self.requests.get_mut(&s.request_id) else {
                continue;
            };
            if req.is_finished() || req.status != RequestStatus::Running {
                continue;
            }
            req.num_computed_tokens = s.num_computed_tokens + s.token_ids.len();
            if let Some(from) = &mut req.prompt_logprobs_from {
                *from = (*from).max(req.num_computed_tokens);
            }
            let mut o = match sampled.get(&s.request_id) {
                Some(&i) => std::mem::take(&mut result.outputs[i]),
                None => Default::default(),
            };
            if let Some(g) = self.beams.get_mut(&req.external_id) {
                if !o.prompt_logprobs.is_empty() {
                    outputs.push(EngineCoreOutput {
                        prompt_logprobs: std::mem::take(&mut o.prompt_logprobs),
                        ..core_output(req)
                    });
                }
                if let Some(c) = o.beam_candidates.take() {
                    if g.report(s.request_id, c) && g.round_complete() {
                        beam_rounds.push(req.external_id);
                    }
                }
                continue;
            }
            let mut out = EngineCoreOutput {
                prompt_logits: std::mem::take(&mut o.prompt_logits),
                prompt_logprobs: std::mem::take(&mut o.prompt_logprobs),
                ..core_output(req)
            };
            let finished = self.append_tokens(s.request_id, o.token_ids, o.logprobs, &mut out);
            let forked = std::mem::take(&mut o.forked);
            outputs.push(out);
            if !forked.is_empty() {
                self.fork_sequences(s.request_id, forked, &mut outputs);
            }
            if finished {
                self.end_sequence(s.request_id, &mut outputs);
            }
        }
        for id in beam_rounds {
            self.advance_beams(id, &mut outputs);
        }
        outputs
    }

    /// Appends a sequence's sampled tokens up to the first stop; true if it finished.
    fn append_tokens(
        &mut self,
        seq_id: RequestId,
        mut new_tokens: Vec<u32>,
        mut logprobs: Vec<crate::sample::TokenLogprobs>,
        out: &mut EngineCoreOutput,
    ) -> bool {
        let req = self.requests.get_mut(&seq_id).expect("scheduled sequence");
        let mut finish = None;
        for (k, &tok) in new_tokens.iter().enumerate() {
            if k > 0 {
                // Multi-step: the previous sampled token was fed back and computed.
                req.num_computed_tokens += 1;
            }
            req.all_token_ids.push(tok);
            if let Some(reason) = stop_reason(req, tok, &self.eos_token_ids, self.cfg.max_model_len)
            {
                finish = Some(reason);
                if reason == FinishReason::Stop {
                    out.stop_token_id = Some(tok);
                }
                new_tokens.truncate(k + 1);
                logprobs.truncate(k + 1);
                break;
            }
        }
        req.update_block_hashes(self.cfg.hash_algo, self.cfg.block_size);
        out.new_token_ids = new_tokens;
        out.logprobs = logprobs;
        out.finish_reason = finish;
        finish.is_some()
    }

    /// A sequence finished: frees it and marks its (last pushed) output.
    fn end_sequence(&mut self, seq_id: RequestId, outputs: &mut [EngineCoreOutput]) {
        if let Some(req) = self.drop_seq(seq_id) {
            let last = self.retire(req.external_id);
            if let Some(o) = outputs.iter_mut().rev().find(|o| o.seq_id == seq_id) {
                o.request_finished = last;
            }
        }
    }

    /// n/best_of: the sequences sampled from `parent_id`'s first row join, sharing its
    /// prompt blocks.
    fn fork_sequences(
        &mut self,
        parent_id: RequestId,
        forked: Vec<ForkedSample>,
        outputs: &mut Vec<EngineCoreOutput>,
    ) {
        let parent = self.requests.get_mut(&parent_id).expect("forking parent");
        let forks = std::mem::take(&mut parent.pending_forks);
        let keep = parent.num_prompt_tokens;
        let external = parent.external_id;
        *self.live.entry(external).or_default() += forked.len();
        for (f, &(seq_id, index)) in forked.into_iter().zip(&forks) {
            debug_assert_eq!(f.seq_id, seq_id);
            let parent = &self.requests[&parent_id];
            let mut child = parent.fork(seq_id, index, keep, f.token_id, self.cfg.block_size);
            child.all_token_ids.pop();
            self.kv.fork(parent_id, seq_id, keep);
            self.requests.insert(seq_id, child);
            self.running.push(seq_id);
            let mut out = core_output(&self.requests[&seq_id]);
            let finished = self.append_tokens(
                seq_id,
                vec![f.token_id],
                f.logprobs.into_iter().collect(),
                &mut out,
            );
            outputs.push(out);
            if finished {
                self.end_sequence(seq_id, outputs);
            }
        }
    }

    /// A beam group's round is complete: forks the chosen beams (sharing their parents'
    /// blocks), drops the rest, or ends the search.
    fn advance_beams(&mut self, id: RequestId, outputs: &mut Vec<EngineCoreOutput>) {
        let Some(mut g) = self.beams.remove(&id) else {
            return;
        };
        let next = g.select(&self.eos_token_ids);
        let old: Vec<RequestId> = g.live.iter().map(|b| b.seq_id).collect();
        let at_len_limit = g.num_prompt_tokens + g.rounds_done >= self.cfg.max_model_len;
        if g.rounds_done >= g.max_tokens || next.is_empty() || at_len_limit {
            for seq in old {
                self.drop_seq(seq);
            }
            self.live.remove(&id);
            let best = g.finish(
                next.into_iter().map(|e| e.beam).collect(),
                &self.eos_token_ids,
            );
            self.emit_beams(id, &g, best, outputs);
            return;
        }
        let mut live = Vec::with_capacity(next.len());
        for e in next {
            let parent_id = g.live[e.parent].seq_id;
            let seq_id = self.alloc_seq_id();
            let parent = &self.requests[&parent_id];
            let keep = parent.num_tokens();
            let tok = *e.beam.output_token_ids.last().expect("expanded beam");
            let mut child = parent.fork(seq_id, 0, keep, tok, self.cfg.block_size);
            child.update_block_hashes(self.cfg.hash_algo, self.cfg.block_size);
            if self.kv.fork(parent_id, seq_id, keep) && parent.status == RequestStatus::Running {
                self.running.push(seq_id);
            } else {
                // The parent was preempted after reporting: recompute this beam.
                child.status = RequestStatus::Preempted;
                child.num_computed_tokens = 0;
                self.waiting.push_front(seq_id);
            }
            self.requests.insert(seq_id, child);
            live.push(Beam { seq_id, ..e.beam });
        }
        for seq in old {
            self.drop_seq(seq);
        }
        g.reports = vec![None; live.len()];
        g.live = live;
        self.beams.insert(id, g);
    }

    fn emit_beams(
        &self,
        id: RequestId,
        g: &BeamGroup,
        best: Vec<Beam>,
        outputs: &mut Vec<EngineCoreOutput>,
    ) {
        let count = best.len().max(1);
        for i in 0..count {
            let b = best.get(i).cloned().unwrap_or_default();
            let ends_in_eos = !g.ignore_eos
                && b.output_token_ids
                    .last()
                    .is_some_and(|t| self.eos_token_ids.contains(t));
            outputs.push(EngineCoreOutput {
                request_id: id,
                seq_id: b.seq_id,
                seq_index: i as u32,
                finish_reason: Some(if ends_in_eos {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                }),
                stop_token_id: if ends_in_eos {
                    b.output_token_ids.last().copied()
                } else {
                    None
                },
                new_token_ids: b.output_token_ids,
                logprobs: b.logprobs,
                cumulative_logprob: Some(b.cumulative_logprob),
                num_prompt_tokens: g.num_prompt_tokens,
                request_finished: i + 1 == count,
                ..Default::default()
            });
        }
    }
}

/// An output naming the sequence, with nothing new yet.
fn core_output(req: &Request) -> EngineCoreOutput {
    EngineCoreOutput {
        request_id: req.external_id,
        seq_id: req.request_id,
        seq_index: req.seq_index,
        num_prompt_tokens: req.num_prompt_tokens,
        num_cached_tokens: req.num_cached_tokens.unwrap_or(0),
        ..Default::default()
    }
}

fn stop_reason(req: &Request, tok: u32, eos: &[u32], max_model_len: usize) -> Option<FinishReason> {
    let p = &req.params;
    let is_stop_token = (!p.ignore_eos && eos.contains(&tok)) || p.stop_token_ids.contains(&tok);
    if is_stop_token && req.num_output_tokens() >= p.min_tokens {
        return Some(FinishReason::Stop);
    }
    if req.num_output_tokens() >= p.max_tokens || req.num_tokens() >= max_model_len {
        return Some(FinishReason::Length);
    }
    None
}
