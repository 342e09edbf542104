//! The token-centric scheduler (vLLM V1): every request owes `num_tokens -
//! num_computed_tokens` tokens; each step grants tokens to running requests first, then
//! admits waiting ones, within `max_num_batched_tokens` and `max_num_seqs`. A long prompt
//! is computed in chunks across steps while others decode. When the KV pool runs dry the
//! lowest-priority, latest-arrived running request is preempted and later recomputed.

use super::output::{EngineCoreOutput, ModelRunnerOutput, ScheduledRequest, SchedulerOutput};
use super::request::{FinishReason, Request, RequestId, RequestStatus};
use crate::kv::block_hash::HashAlgo;
use crate::kv::KvCacheManager;
use std::collections::{HashMap, VecDeque};

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
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn add_request(&mut self, mut req: Request) {
        req.update_block_hashes(self.cfg.hash_algo, self.cfg.block_size);
        self.waiting.push_back(req.request_id);
        self.requests.insert(req.request_id, req);
    }

    /// Ids of every unfinished request, waiting and running.
    pub fn request_ids(&self) -> Vec<RequestId> {
        self.running.iter().chain(&self.waiting).copied().collect()
    }

    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
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
        }
    }

    /// Finishes a request early (abort, stop string). Returns its final output, or None
    /// if it is unknown or already finished.
    pub fn finish_request(
        &mut self,
        id: RequestId,
        reason: FinishReason,
    ) -> Option<EngineCoreOutput> {
        let req = self.requests.get(&id)?;
        if req.is_finished() {
            return None;
        }
        self.waiting.retain(|&r| r != id);
        self.running.retain(|&r| r != id);
        self.kv.free(id);
        self.finished_req_ids.push(id);
        let req = self.requests.remove(&id)?;
        Some(EngineCoreOutput {
            request_id: id,
            new_token_ids: vec![],
            finish_reason: Some(reason),
            stop_token_id: None,
            num_prompt_tokens: req.num_prompt_tokens,
            num_cached_tokens: req.num_cached_tokens.unwrap_or(0),
            prompt_logits: vec![],
        })
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
                r.num_tokens() - r.num_computed_tokens == 1 && !r.return_prompt_logits
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
                let hashes = &self.requests[&id].block_hashes;
                if self.kv.allocate_slots(id, need, &[], hashes).is_some() {
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

    fn admit_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(w) = self.next_waiting() else { break };
            let id = self.waiting[w];
            let req = &self.requests[&id];
            let (hit_blocks, num_hit) = if req.return_prompt_logits {
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

    fn push_scheduled(&self, out: &mut SchedulerOutput, id: RequestId, n: usize, steps: usize) {
        let req = &self.requests[&id];
        let start = req.num_computed_tokens;
        out.scheduled.push(ScheduledRequest {
            request_id: id,
            num_computed_tokens: start,
            token_ids: req.all_token_ids[start..start + n].to_vec(),
            block_ids: self.kv.block_ids(id).to_vec(),
            sample: start + n == req.num_tokens(),
            max_sampled_tokens: steps,
            num_prompt_tokens: req.num_prompt_tokens,
            params: req.params.clone(),
            return_prompt_logits: req.return_prompt_logits,
            penalty_prompt_token_ids: req.penalty_prompt_token_ids.clone(),
        });
        out.total_num_scheduled_tokens += n;
    }

    /// Applies a step's results: advances computed tokens, appends sampled tokens, checks
    /// stop conditions (surplus multi-step tokens after a stop are discarded), frees
    /// finished requests. Returns one output per scheduled request.
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
        for s in &sched.scheduled {
            let Some(req) = self.requests.get_mut(&s.request_id) else {
                continue;
            };
            if req.is_finished() || req.status != RequestStatus::Running {
                continue;
            }
            req.num_computed_tokens = s.num_computed_tokens + s.token_ids.len();
            let (mut new_tokens, prompt_logits) = match sampled.get(&s.request_id) {
                Some(&i) => {
                    let o = &mut result.outputs[i];
                    (
                        std::mem::take(&mut o.token_ids),
                        std::mem::take(&mut o.prompt_logits),
                    )
                }
                None => (vec![], vec![]),
            };
            let mut finish = None;
            let mut stop_token_id = None;
            for (k, &tok) in new_tokens.iter().enumerate() {
                if k > 0 {
                    // Multi-step: the previous sampled token was fed back and computed.
                    req.num_computed_tokens += 1;
                }
                req.all_token_ids.push(tok);
                if let Some(reason) =
                    stop_reason(req, tok, &self.eos_token_ids, self.cfg.max_model_len)
                {
                    finish = Some(reason);
                    if reason == FinishReason::Stop {
                        stop_token_id = Some(tok);
                    }
                    new_tokens.truncate(k + 1);
                    break;
                }
            }
            req.update_block_hashes(self.cfg.hash_algo, self.cfg.block_size);
            outputs.push(EngineCoreOutput {
                request_id: s.request_id,
                new_token_ids: new_tokens,
                finish_reason: finish,
                stop_token_id,
                num_prompt_tokens: req.num_prompt_tokens,
                num_cached_tokens: req.num_cached_tokens.unwrap_or(0),
                prompt_logits,
            });
            if finish.is_some() {
                req.status = RequestStatus::Finished;
                self.running.retain(|&r| r != s.request_id);
                self.kv.free(s.request_id);
                self.finished_req_ids.push(s.request_id);
                self.requests.remove(&s.request_id);
            }
        }
        outputs
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
