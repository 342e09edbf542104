//! Beam search as vLLM's `BeamSearchParams` define it. Each round every live beam reports
//! its `2 * beam_width` most likely next tokens; every (beam, token) pair becomes a
//! candidate with cumulative logprob `beam + logprob`; candidates ending in EOS (unless
//! `ignore_eos`) are set aside as completed, the rest are ranked by score and the best
//! `beam_width` become the next round's beams. After `max_tokens` rounds the completed and
//! live beams are ranked together. Score = cumulative logprob / length^length_penalty, the
//! length counting prompt and output tokens but not a final EOS.
//!
//! This file holds the group's bookkeeping and the selection; the scheduler forks the
//! chosen beams' KV blocks (shared by reference count) and frees the dropped ones.

use super::request::RequestId;
#[cfg(test)]
use crate::sample::Logprob;
use crate::sample::TokenLogprobs;

/// One beam: its sequence in the core, output tokens and score inputs.
#[derive(Clone, Debug, Default)]
pub struct Beam {
    pub seq_id: RequestId,
    pub output_token_ids: Vec<u32>,
    pub cumulative_logprob: f64,
    /// Per output token: its logprob, rank and the alternatives reported with it.
    pub logprobs: Vec<TokenLogprobs>,
}

/// A chosen continuation: beam `parent` (index into the live beams) extended by `token`.
#[derive(Clone, Debug)]
pub struct Expansion {
    pub parent: usize,
    pub beam: Beam,
}

pub struct BeamGroup {
    pub beam_width: usize,
    /// Beams returned at the end.
    pub n: usize,
    pub length_penalty: f32,
    pub max_tokens: usize,
    pub ignore_eos: bool,
    pub num_prompt_tokens: usize,
    /// Alternatives recorded per token (the request's `logprobs`, capped to those known).
    pub num_logprobs: usize,
    pub rounds_done: usize,
    pub live: Vec<Beam>,
    /// This round's reports, by live index.
    pub reports: Vec<Option<TokenLogprobs>>,
    pub completed: Vec<Beam>,
}

impl BeamGroup {
    /// Candidates reported per beam.
    pub fn num_candidates(&self) -> usize {
        2 * self.beam_width
    }

    /// Records a live beam's candidates; false if the beam is not live or has reported
    /// already (a recomputed beam reports twice).
    pub fn report(&mut self, seq_id: RequestId, candidates: TokenLogprobs) -> bool {
        let Some(i) = self.live.iter().position(|b| b.seq_id == seq_id) else {
            return false;
        };
        if self.reports[i].is_some() {
            return false;
        }
        self.reports[i] = Some(candidates);
        true
    }

    pub fn round_complete(&self) -> bool {
        self.reports.iter().all(Option::is_some)
    }

    /// The score vLLM ranks beams by.
    pub fn score(&self, beam: &Beam, eos_token_ids: &[u32]) -> f64 {
        let mut len = self.num_prompt_tokens + beam.output_token_ids.len();
        if beam
            .output_token_ids
            .last()
            .is_some_and(|t| eos_token_ids.contains(t))
        {
            len -= 1;
        }
        beam.cumulative_logprob / (len as f64).powf(self.length_penalty as f64)
    }

    /// Ends the round: completed candidates are set aside, the best `beam_width` others
    /// returned (best first; their `seq_id` is still the parent's). Reports are cleared.
    pub fn select(&mut self, eos_token_ids: &[u32]) -> Vec<Expansion> {
        let reports = std::mem::take(&mut self.reports);
        let mut next = Vec::new();
        for (parent, (beam, report)) in self.live.iter().zip(reports).enumerate() {
            let report = report.expect("round complete");
            for cand in report.top.iter().take(self.num_candidates()) {
                let mut b = beam.clone();
                b.output_token_ids.push(cand.token_id);
                b.cumulative_logprob += cand.logprob as f64;
                b.logprobs.push(TokenLogprobs {
                    token: Some(*cand),
                    top: report.top[..self.num_logprobs.min(report.top.len())].to_vec(),
                });
                if !self.ignore_eos && eos_token_ids.contains(&cand.token_id) {
                    self.completed.push(b);
                } else {
                    next.push(Expansion { parent, beam: b });
                }
            }
        }
        // A stable sort keeps candidate order on equal scores, as vLLM's sorted() does.
        next.sort_by(|a, b| {
            self.score(&b.beam, eos_token_ids)
                .total_cmp(&self.score(&a.beam, eos_token_ids))
        });
        next.truncate(self.beam_width);
        self.rounds_done += 1;
        next
    }

    /// The `n` best of the completed and the given live beams, best first.
    pub fn finish(&mut self, live: Vec<Beam>, eos_token_ids: &[u32]) -> Vec<Beam> {
        let mut all = std::mem::take(&mut self.completed);
        all.extend(live);
        all.sort_by(|a, b| {
            self.score(b, eos_token_ids)
                .total_cmp(&self.score(a, eos_token_ids))
        });
        all.truncate(self.n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(list: &[(u32, f32)]) -> TokenLogprobs {
        TokenLogprobs {
            token: None,
            top: list
                .iter()
                .enumerate()
                .map(|(i, &(token_id, logprob))| Logprob {
                    token_id,
                    logprob,
                    rank: i as u32 + 1,
                })
                .collect(),
        }
    }

    fn group(width: usize, live: usize) -> BeamGroup {
        BeamGroup {
            beam_width: width,
            n: width,
            length_penalty: 1.0,
            max_tokens: 4,
            ignore_eos: false,
            num_prompt_tokens: 3,
            num_logprobs: 0,
            rounds_done: 0,
            live: (0..live)
                .map(|i| Beam {
                    seq_id: i as u64,
                    ..Default::default()
                })
                .collect(),
            reports: vec![None; live],
            completed: vec![],
        }
    }

    #[test]
    fn selection_ranks_all_candidates_and_sets_eos_aside() {
        let mut g = group(2, 2);
        g.live[1].cumulative_logprob = -1.0;
        assert!(g.report(0, cands(&[(5, -0.5), (9, -0.6), (7, -2.0), (8, -3.0)])));
        assert!(!g.round_complete());
        assert!(
            !g.report(0, cands(&[(1, -0.1)])),
            "a second report is ignored"
        );
        assert!(g.report(1, cands(&[(6, -0.1), (5, -0.2), (4, -0.3), (3, -0.4)])));
        let next = g.select(&[9]);
        // Beam 0 + 5 (-0.5) and beam 1 + 6 (-1.1) beat beam 1 + 5 (-1.2); 9 is EOS.
        let got: Vec<(usize, u32)> = next
            .iter()
            .map(|e| (e.parent, *e.beam.output_token_ids.last().unwrap()))
            .collect();
        assert_eq!(got, [(0, 5), (1, 6)]);
        assert_eq!(g.completed.len(), 1);
        assert_eq!(g.completed[0].output_token_ids, [9]);
        assert_eq!(g.rounds_done, 1);
        // Length excludes the final EOS: -0.6 / 3 tokens (prompt only).
        assert!((g.score(&g.completed[0], &[9]) - (-0.6 / 3.0)).abs() < 1e-6);
    }
}
