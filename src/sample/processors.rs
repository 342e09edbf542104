//! Logits processors and penalties, applied before temperature and truncation in vLLM's
//! order: allowed token ids, bad words, min_tokens, logit bias, then the repetition,
//! frequency and presence penalties. They work on one row of logits in place, touching
//! only the tokens concerned (no work or allocation proportional to the vocabulary, except
//! `allowed_token_ids`, which masks the whole row).

use super::SamplingParams;
use std::collections::HashMap;

/// What one sequence has produced so far, as the processors need it: its output tokens
/// (for bad words and min_tokens), their counts (for the penalties) and its prompt's
/// distinct tokens (for the repetition penalty). Kept by the model runner and updated
/// with every sampled token.
#[derive(Clone, Debug, Default)]
pub struct SeqHistory {
    output: Vec<u32>,
    /// Output token -> occurrences (only when a penalty is on).
    counts: HashMap<u32, u32>,
    /// The prompt's distinct tokens, sorted (only when the repetition penalty is on).
    prompt: Vec<u32>,
    track_counts: bool,
}

impl SeqHistory {
    /// The history of a sequence about to sample its first token after `prompt` (the
    /// prompt is kept only if `params` has a repetition penalty).
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Self {
        let mut h = SeqHistory {
            track_counts: params.has_penalties(),
            ..Default::default()
        };
        if params.repetition_penalty != 1.0 {
            h.prompt = prompt.to_vec();
            h.prompt.sort_unstable();
            h.prompt.dedup();
        }
        h
    }

    /// Records a sampled token.
    pub fn push(&mut self, tok: u32) {
        self.output.push(tok);
        if self.track_counts {
            *self.counts.entry(tok).or_insert(0) += 1;
        }
    }

    pub fn output(&self) -> &[u32] {
        &self.output
    }
}

/// Reusable buffers of the processors.
#[derive(Default)]
pub struct LogitsProcessors {
    saved: Vec<(u32, f32)>,
}

impl LogitsProcessors {
    /// Applies every processor and penalty `params` asks for to one row of logits, in
    /// vLLM's order. `stop_ids` are the tokens banned until `min_tokens` outputs exist
    /// (end-of-sequence tokens unless `ignore_eos`, and `stop_token_ids`).
    pub fn apply(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        hist: &SeqHistory,
        eos_token_ids: &[u32],
    ) {
        if let Some(allowed) = &params.allowed_token_ids {
            self.allowed_token_ids(logits, allowed);
        }
        bad_words(logits, &params.bad_words_token_ids, hist.output());
        if hist.output().len() < params.min_tokens {
            let eos = if params.ignore_eos {
                &[][..]
            } else {
                eos_token_ids
            };
            for &t in eos.iter().chain(&params.stop_token_ids) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for &(t, b) in &params.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        penalties(logits, params, hist);
    }

    /// Every token but `allowed` gets -inf.
    fn allowed_token_ids(&mut self, logits: &mut [f32], allowed: &[u32]) {
        self.saved.clear();
        self.saved.extend(
            allowed
                .iter()
                .filter_map(|&t| logits.get(t as usize).map(|&l| (t, l))),
        );
        logits.fill(f32::NEG_INFINITY);
        for &(t, l) in &self.saved {
            logits[t as usize] = l;
        }
    }
}

/// Bans the last token of every sequence whose other tokens end the output (vLLM's
/// `apply_bad_words`; a one-token sequence is always banned).
pub fn bad_words(logits: &mut [f32], seqs: &[Vec<u32>], output: &[u32]) {
    for seq in seqs {
        let Some((&last, prefix)) = seq.split_last() else {
            continue;
        };
        if output.ends_with(prefix) {
            if let Some(l) = logits.get_mut(last as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// vLLM's `apply_penalties`: the repetition penalty over prompt and output tokens (a
/// positive logit is divided by it, a negative one multiplied), then the frequency
/// penalty times each output token's count and the presence penalty once per distinct
/// output token, subtracted.
pub fn penalties(logits: &mut [f32], p: &SamplingParams, hist: &SeqHistory) {
    if !p.has_penalties() {
        return;
    }
    let rep = p.repetition_penalty;
    let repeat = |l: &mut f32| {
        *l *= if *l > 0.0 { 1.0 / rep } else { rep };
    };
    if rep != 1.0 {
        for &t in &hist.prompt {
            if let Some(l) = logits.get_mut(t as usize) {
                repeat(l);
            }
        }
    }
    for (&t, &n) in &hist.counts {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if rep != 1.0 && hist.prompt.binary_search(&t).is_err() {
            repeat(l);
        }
        *l -= p.frequency_penalty * n as f32;
        *l -= p.presence_penalty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    fn logits() -> Vec<f32> {
        vec![1.5, -0.5, 2.0, 0.25, -3.0, 0.0, 4.0, -1.25]
    }

    fn run(params: &SamplingParams, prompt: &[u32], output: &[u32], eos: &[u32]) -> Vec<f32> {
        let mut h = SeqHistory::new(params, prompt);
        for &t in output {
            h.push(t);
        }
        let mut l = logits();
        LogitsProcessors::default().apply(&mut l, params, &h, eos);
        l
    }

    /// An independent reference: each processor as a plain loop over the whole row.
    #[allow(clippy::needless_range_loop)]
    fn reference(p: &SamplingParams, prompt: &[u32], output: &[u32], eos: &[u32]) -> Vec<f32> {
        let mut l = logits();
        let v = l.len();
        if let Some(a) = &p.allowed_token_ids {
            for (i, x) in l.iter_mut().enumerate() {
                if !a.contains(&(i as u32)) {
                    *x = NEG;
                }
            }
        }
        for w in &p.bad_words_token_ids {
            let n = w.len() - 1;
            if output.len() >= n && output[output.len() - n..] == w[..n] {
                l[w[n] as usize] = NEG;
            }
        }
        if output.len() < p.min_tokens {
            for t in 0..v as u32 {
                if (!p.ignore_eos && eos.contains(&t)) || p.stop_token_ids.contains(&t) {
                    l[t as usize] = NEG;
                }
            }
        }
        for &(t, b) in &p.logit_bias {
            l[t as usize] += b;
        }
        for t in 0..v {
            let seen = prompt.contains(&(t as u32)) || output.contains(&(t as u32));
            if seen {
                if l[t] > 0.0 {
                    l[t] *= 1.0 / p.repetition_penalty;
                } else {
                    l[t] *= p.repetition_penalty;
                }
            }
            let count = output.iter().filter(|&&o| o as usize == t).count();
            l[t] -= p.frequency_penalty * count as f32;
            if count > 0 {
                l[t] -= p.presence_penalty;
            }
        }
        l
    }

    fn check(p: &SamplingParams, prompt: &[u32], output: &[u32], eos: &[u32]) -> Vec<f32> {
        let got = run(p, prompt, output, eos);
        let want = reference(p, prompt, output, eos);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w || (g - w).abs() < 1e-6,
                "token {i}: got {g}, reference {w} ({p:?})"
            );
        }
        got
    }

    #[test]
    fn allowed_token_ids_mask_the_rest() {
        let p = SamplingParams {
            allowed_token_ids: Some(vec![1, 4, 7]),
            ..Default::default()
        };
        let l = check(&p, &[], &[], &[]);
        assert_eq!(l.iter().filter(|x| x.is_finite()).count(), 3);
        assert_eq!(l[1], -0.5);
    }

    #[test]
    fn bad_words_ban_the_completing_token() {
        let p = SamplingParams {
            bad_words_token_ids: vec![vec![6], vec![3, 2], vec![5, 3, 0], vec![1, 7]],
            ..Default::default()
        };
        // Output ends with 3: bans 6 (single) and 2 (after 3); 0 needs 5, 3; 7 needs 1.
        let l = check(&p, &[], &[4, 3], &[]);
        assert_eq!((l[6], l[2], l[0], l[7]), (NEG, NEG, 1.5, -1.25));
        let l = check(&p, &[], &[5, 3], &[]);
        assert_eq!(l[0], NEG);
        let l = check(&p, &[], &[], &[]);
        assert_eq!((l[6], l[2]), (NEG, 2.0));
    }

    #[test]
    fn min_tokens_bans_eos_and_stop_tokens_until_reached() {
        let mut p = SamplingParams {
            min_tokens: 2,
            stop_token_ids: vec![3],
            ..Default::default()
        };
        let l = check(&p, &[], &[0], &[6]);
        assert_eq!((l[6], l[3]), (NEG, NEG));
        let l = check(&p, &[], &[0, 1], &[6]);
        assert_eq!((l[6], l[3]), (4.0, 0.25));
        p.ignore_eos = true;
        let l = check(&p, &[], &[0], &[6]);
        assert_eq!((l[6], l[3]), (4.0, NEG));
    }

    #[test]
    fn logit_bias_adds() {
        let p = SamplingParams {
            logit_bias: vec![(4, 100.0), (0, -1.5)],
            ..Default::default()
        };
        let l = check(&p, &[], &[], &[]);
        assert_eq!((l[4], l[0]), (97.0, 0.0));
    }

    #[test]
    fn penalties_follow_the_definitions() {
        for (rep, freq, pres) in [
            (1.3, 0.0, 0.0),
            (0.7, 0.0, 0.0),
            (1.0, 0.5, 0.0),
            (1.0, 0.0, -0.8),
            (1.8, 1.1, 0.4),
        ] {
            let p = SamplingParams {
                repetition_penalty: rep,
                frequency_penalty: freq,
                presence_penalty: pres,
                ..Default::default()
            };
            // Prompt tokens 0, 1, 4 (repetition only); output 2 twice, 1, 6.
            check(&p, &[0, 1, 4, 0], &[2, 1, 2, 6], &[]);
        }
        // Frequency and presence look at the output only.
        let p = SamplingParams {
            frequency_penalty: 1.0,
            presence_penalty: 1.0,
            ..Default::default()
        };
        let l = check(&p, &[0, 3], &[2, 2], &[]);
        assert_eq!((l[0], l[3], l[2]), (1.5, 0.25, -1.0));
    }

    #[test]
    fn processors_apply_in_vllm_order() {
        // Everything at once equals the plain reference, which applies in vLLM's order;
        // the order shows: the bias is added before the repetition penalty divides
        // (token 3: (0.25 + 1.75) / 2 = 1, not 0.125 + 1.75), and a banned token stays
        // banned whatever the bias.
        let p = SamplingParams {
            allowed_token_ids: Some(vec![0, 2, 3, 5, 6]),
            bad_words_token_ids: vec![vec![2, 5]],
            min_tokens: 5,
            stop_token_ids: vec![0],
            logit_bias: vec![(3, 1.75), (5, 50.0), (1, 9.0)],
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        let l = check(&p, &[3], &[6, 2], &[6]);
        assert_eq!(l[3], 1.0);
        assert_eq!((l[5], l[1], l[0], l[6]), (NEG, NEG, NEG, NEG));
        // Token 2 (in the output once): 2.0 / 2 - 0.5 - 0.25.
        assert_eq!(l[2], 0.25);
    }
}
