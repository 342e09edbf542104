//! Greedy and random sampling (temperature, min-p, top-k, top-p) with a per-request
//! generator. The logits processors and penalties (`super::processors`) come before.

use super::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random generator of one request, seeded from its own seed.
pub struct RequestRng(ChaCha8Rng);

impl RequestRng {
    pub fn new(seed: u64) -> Self {
        RequestRng(ChaCha8Rng::seed_from_u64(seed))
    }
}

/// Reusable buffers for sampling (no allocation per step once warm).
#[derive(Default)]
pub struct Sampler {
    order: Vec<u32>,
    probs: Vec<f32>,
}

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    /// Draws the next token from one row of logits (processors and penalties already
    /// applied). The row may be modified.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        rng: &mut RequestRng,
    ) -> u32 {
        if params.is_greedy() {
            return argmax(logits);
        }
        let k = if params.top_k > 0 {
            params.top_k as usize
        } else {
            logits.len()
        };
        let inv_t = 1.0 / params.temperature;
        logits.iter_mut().for_each(|l| *l *= inv_t);
        // min_p: p_i < min_p * p_max  <=>  l_i < l_max + ln(min_p).
        let floor = if params.min_p > 0.0 {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            max + params.min_p.ln()
        } else {
            f32::NEG_INFINITY
        };
        // Candidates sorted by logit, descending; masked (-inf) tokens are never drawn.
        self.order.clear();
        self.order
            .extend((0..logits.len() as u32).filter(|&i| {
                logits[i as usize] > f32::NEG_INFINITY && logits[i as usize] >= floor
            }));
        if self.order.is_empty() {
            // Everything masked: nothing sensible to draw; take the argmax as greedy would.
            return argmax(logits);
        }
        let k = k.min(self.order.len());
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < self.order.len() {
            self.order.select_nth_unstable_by(k - 1, by_logit);
            self.order.truncate(k);
        }
        self.order.sort_unstable_by(by_logit);
        // Softmax over the candidates, then cut the tail beyond top_p.
        let max = logits[self.order[0] as usize];
        self.probs.clear();
        self.probs
            .extend(self.order.iter().map(|&i| (logits[i as usize] - max).exp()));
        let sum: f32 = self.probs.iter().sum();
        self.probs.iter_mut().for_each(|p| *p /= sum);
        let mut keep = self.probs.len();
        if params.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in self.probs.iter().enumerate() {
                cum += p;
                if cum >= params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.probs[..keep].iter().sum();
        let mut u = rng.0.random::<f32>() * total;
        for i in 0..keep {
            u -= self.probs[i];
            if u <= 0.0 {
                return self.order[i];
            }
        }
        self.order[keep - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        };
        let mut s = Sampler::default();
        let mut rng = RequestRng::new(7);
        for _ in 0..20 {
            let mut l = vec![0.5, 2.0, 1.9, -3.0];
            assert_eq!(s.sample(&mut l, &params, &mut rng), 1);
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probabilities ~ [0.67, 0.24, 0.09]: top_p 0.5 keeps only the first.
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = Sampler::default();
        let mut rng = RequestRng::new(1);
        for _ in 0..50 {
            let mut l = vec![1.0, 2.0, 3.0];
            assert_eq!(s.sample(&mut l, &params, &mut rng), 2);
        }
    }

    #[test]
    fn sampling_follows_the_distribution_and_seed() {
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let mut s = Sampler::default();
        let draw = |seed| {
            let mut rng = RequestRng::new(seed);
            let mut s = Sampler::default();
            (0..64)
                .map(|_| s.sample(&mut logits.clone(), &params, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        let mut rng = RequestRng::new(3);
        let ones = (0..4000)
            .filter(|_| s.sample(&mut logits.clone(), &params, &mut rng) == 1)
            .count();
        let frac = ones as f64 / 4000.0;
        assert!((frac - 0.75).abs() < 0.03, "fraction {frac}");
    }

    #[test]
    fn min_p_drops_tokens_below_its_share_of_the_top() {
        // p = [0.5, 0.3, 0.15, 0.05]; min_p 0.25 keeps p >= 0.125: the first three, with
        // probabilities renormalised to [0.5, 0.3, 0.15] / 0.95.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.15f32.ln(), 0.05f32.ln()];
        let params = SamplingParams {
            temperature: 1.0,
            min_p: 0.25,
            ..Default::default()
        };
        let mut s = Sampler::default();
        let mut rng = RequestRng::new(11);
        let mut counts = [0usize; 4];
        let n = 6000;
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), &params, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for (i, p) in [0.5, 0.3, 0.15].iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            assert!((f - p / 0.95).abs() < 0.03, "token {i}: {f}");
        }
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::default();
        let mut rng = RequestRng::new(5);
        for _ in 0..500 {
            let mut l = vec![f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, -30.0];
            let t = s.sample(&mut l, &params, &mut rng);
            assert!(t == 1 || t == 3, "drew {t}");
        }
    }
}
