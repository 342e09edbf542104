//! Logprobs of one position: the chosen token's logprob and rank, plus the `k` most likely
//! tokens, from one row of logits (raw or processed, as `logprobs_mode` says).

use super::params::LogprobsMode;

/// One token's log probability (or logit, in the `*_logits` modes) and its 1-based rank
/// (1 + the number of tokens strictly more likely).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Logprob {
    pub token_id: u32,
    pub logprob: f32,
    pub rank: u32,
}

/// The logprobs of one position: the token that was sampled (or, for prompt logprobs,
/// the prompt's next token) and the top alternatives, most likely first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenLogprobs {
    pub token: Option<Logprob>,
    pub top: Vec<Logprob>,
}

impl TokenLogprobs {
    /// The chosen token's logprob (NaN when none was recorded).
    pub fn value(&self) -> f32 {
        self.token.map_or(f32::NAN, |t| t.logprob)
    }
}

/// Reusable buffers (no allocation per position once warm, except the result's `top`).
#[derive(Default)]
pub struct LogprobsComputer {
    order: Vec<u32>,
}

impl LogprobsComputer {
    /// Logprobs of `row` for `token` with the top `k` (-1: the whole vocabulary).
    pub fn compute(
        &mut self,
        row: &[f32],
        token: u32,
        k: i32,
        mode: LogprobsMode,
    ) -> TokenLogprobs {
        let shift = if mode.is_logits() {
            0.0
        } else {
            log_sum_exp(row)
        };
        let value = |i: u32| row[i as usize] - shift;
        let rank_of = |v: f32| 1 + row.iter().filter(|&&x| x > v).count() as u32;
        let chosen = row[token as usize];
        let k = if k < 0 {
            row.len()
        } else {
            (k as usize).min(row.len())
        };
        let top = self.top_k(row, k);
        let mut result = TokenLogprobs {
            token: Some(Logprob {
                token_id: token,
                logprob: value(token),
                rank: rank_of(chosen),
            }),
            top: Vec::with_capacity(top.len()),
        };
        // Ranks in the top list: equal values share the rank of the first of them.
        let mut rank = 0;
        let mut prev = f32::NAN;
        for (i, &id) in top.iter().enumerate() {
            let v = row[id as usize];
            if v != prev {
                rank = i as u32 + 1;
                prev = v;
            }
            result.top.push(Logprob {
                token_id: id,
                logprob: value(id),
                rank,
            });
        }
        result
    }

    /// Ids of the `k` largest values, largest first (lower id first on ties).
    fn top_k(&mut self, row: &[f32], k: usize) -> &[u32] {
        self.order.clear();
        if k == 0 {
            return &self.order;
        }
        self.order.extend(0..row.len() as u32);
        let by_value =
            |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
        if k < self.order.len() {
            self.order.select_nth_unstable_by(k - 1, by_value);
            self.order.truncate(k);
        }
        self.order.sort_unstable_by(by_value);
        &self.order
    }
}

/// log(sum(exp(row))), accumulated in f64; -inf entries (masked tokens) contribute nothing.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    (max as f64 + sum.ln()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(row: &[f32]) -> Vec<f64> {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        row.iter().map(|&x| x as f64 - m - z.ln()).collect()
    }

    #[test]
    fn values_ranks_and_top_k_follow_the_definition() {
        let row = [0.5f32, 2.0, -1.0, 2.0, 3.5, f32::NEG_INFINITY];
        let lp = reference(&row);
        let mut c = LogprobsComputer::default();
        let r = c.compute(&row, 3, 3, LogprobsMode::RawLogprobs);
        let t = r.token.unwrap();
        assert_eq!((t.token_id, t.rank), (3, 2));
        assert!((t.logprob as f64 - lp[3]).abs() < 1e-6);
        let ids: Vec<u32> = r.top.iter().map(|l| l.token_id).collect();
        assert_eq!(ids, [4, 1, 3]);
        let ranks: Vec<u32> = r.top.iter().map(|l| l.rank).collect();
        assert_eq!(ranks, [1, 2, 2]);
        for l in &r.top {
            assert!((l.logprob as f64 - lp[l.token_id as usize]).abs() < 1e-6);
        }
        let probs: f64 = lp.iter().map(|x| x.exp()).sum();
        assert!((probs - 1.0).abs() < 1e-9);
        // A masked token has logprob -inf and the last rank.
        let m = c.compute(&row, 5, 0, LogprobsMode::RawLogprobs);
        assert_eq!(m.token.unwrap().logprob, f32::NEG_INFINITY);
        assert_eq!(m.token.unwrap().rank, 6);
        assert!(m.top.is_empty());
    }

    #[test]
    fn whole_vocabulary_and_logits_mode() {
        let row = [1.0f32, -2.0, 0.25];
        let mut c = LogprobsComputer::default();
        let all = c.compute(&row, 0, -1, LogprobsMode::RawLogprobs);
        assert_eq!(all.top.len(), 3);
        let logits = c.compute(&row, 2, 2, LogprobsMode::RawLogits);
        assert_eq!(logits.token.unwrap().logprob, 0.25);
        assert_eq!(logits.top[0].logprob, 1.0);
    }
}
