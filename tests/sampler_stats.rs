//! Statistical tests of the sampler on a fixed logits vector: the frequencies of 40,000
//! draws fit each setting's definition (Pearson chi-square, significance 0.001, critical
//! value from the Wilson-Hilferty approximation), and excluded tokens are never drawn.

use llmrt::sample::sampler::RequestRng;
use llmrt::sample::{Sampler, SamplingParams};

const LOGITS: [f32; 8] = [2.0, 1.5, 1.2, 0.3, 0.0, -0.5, -1.0, -3.0];
const DRAWS: usize = 40_000;

fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

/// Keeps `keep[i]` tokens of `p` and renormalises.
fn restrict(p: &[f64], keep: impl Fn(usize) -> bool) -> Vec<f64> {
    let kept: Vec<f64> = p
        .iter()
        .enumerate()
        .map(|(i, &x)| if keep(i) { x } else { 0.0 })
        .collect();
    let z: f64 = kept.iter().sum();
    kept.iter().map(|x| x / z).collect()
}

/// Chi-square quantile at significance 0.001 (z = 3.0902), Wilson-Hilferty.
fn critical(df: usize) -> f64 {
    let d = df as f64;
    let k = 2.0 / (9.0 * d);
    d * (1.0 - k + 3.0902 * k.sqrt()).powi(3)
}

fn check(name: &str, params: SamplingParams, expected: &[f64]) {
    let mut sampler = Sampler::default();
    let mut rng = RequestRng::new(0x5eed);
    let mut counts = vec![0usize; LOGITS.len()];
    for _ in 0..DRAWS {
        let mut row = LOGITS.to_vec();
        counts[sampler.sample(&mut row, &params, &mut rng) as usize] += 1;
    }
    let mut chi2 = 0.0;
    let mut df = 0;
    for (i, (&c, &p)) in counts.iter().zip(expected).enumerate() {
        if p == 0.0 {
            assert_eq!(
                c, 0,
                "{name}: token {i} is excluded but was drawn {c} times"
            );
            continue;
        }
        let e = p * DRAWS as f64;
        chi2 += (c as f64 - e).powi(2) / e;
        df += 1;
    }
    if df == 1 {
        return; // one token left: the zero counts above are the whole check
    }
    let limit = critical(df - 1);
    assert!(
        chi2 < limit,
        "{name}: chi-square {chi2:.2} >= {limit:.2} (df {}), counts {counts:?}, expected {expected:?}",
        df - 1
    );
}

fn base(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        ..Default::default()
    }
}

fn scaled(t: f64) -> Vec<f64> {
    softmax(&LOGITS.iter().map(|&l| l as f64 / t).collect::<Vec<_>>())
}

#[test]
fn temperature_scales_the_logits() {
    for t in [1.0, 0.6, 1.8] {
        check(&format!("temperature {t}"), base(t as f32), &scaled(t));
    }
}

#[test]
fn top_k_keeps_the_k_most_likely() {
    let p = scaled(1.0);
    for k in [1, 3, 5] {
        let params = SamplingParams {
            top_k: k,
            ..base(1.0)
        };
        check(
            &format!("top_k {k}"),
            params,
            &restrict(&p, |i| i < k as usize),
        );
    }
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    let p = scaled(1.0); // LOGITS are sorted, so the nucleus is a prefix
    for top_p in [0.5, 0.8, 0.95] {
        let mut cum = 0.0;
        let mut n = 0;
        while cum < top_p {
            cum += p[n];
            n += 1;
        }
        let params = SamplingParams {
            top_p: top_p as f32,
            ..base(1.0)
        };
        check(&format!("top_p {top_p}"), params, &restrict(&p, |i| i < n));
    }
}

#[test]
fn min_p_drops_tokens_below_a_share_of_the_top() {
    let p = scaled(1.0);
    for min_p in [0.05, 0.2, 0.5] {
        let params = SamplingParams {
            min_p: min_p as f32,
            ..base(1.0)
        };
        check(
            &format!("min_p {min_p}"),
            params,
            &restrict(&p, |i| p[i] >= min_p * p[0]),
        );
    }
}

#[test]
fn temperature_then_top_k_then_top_p_combine_in_vllm_order() {
    let p = scaled(0.7);
    let top3 = restrict(&p, |i| i < 3);
    // top_p 0.9 over the top-3 distribution.
    let mut cum = 0.0;
    let mut n = 0;
    while cum < 0.9 {
        cum += top3[n];
        n += 1;
    }
    let params = SamplingParams {
        top_k: 3,
        top_p: 0.9,
        ..base(0.7)
    };
    check(
        "temperature 0.7, top_k 3, top_p 0.9",
        params,
        &restrict(&top3, |i| i < n),
    );
}
