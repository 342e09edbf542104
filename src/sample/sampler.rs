//! Greedy and random sampling (temperature, top-k, top-p) with a per-request generator.

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
    /// Draws the next token from one row of logits. The row may be modified.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        rng: &mut RequestRng,
    ) -> u32 {
        if params.is_greedy() {
            return argmax(logits);
        }
        let inv_t = 1.0 / params.temperature;
        logits.iter_mut().for_each(|l| *l *= inv_t);
        // Candidates sorted by logit, descending.
        self.order.clear();
        self.order.extend(0..logits.len() as u32);
        let k = if params.top_k > 0 {
            (params.top_k as usize).min(logits.len())
        } else {
            logits.len()
        };
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
}
