//! Shared helpers for the fidelity tests: reading transformers' reference outputs and
//! comparing our logits with them under the fixtures README's tolerances.
#![allow(dead_code)]

use llmrt::{EngineConfig, GenerateRequest, Llm, SamplingParams};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// log-softmax in f64 of one row of logits.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

/// Checks one position's top-5 against the reference: every listed id's logprob within
/// `tol`; the set where the 5th/6th gap is at least 2e-3; the order where adjacent gaps are.
pub fn check_top5(
    what: &str,
    logprobs: &[f64],
    ref_ids: &[u32],
    ref_lp: &[f64],
    sixth: f64,
    tol: f64,
) {
    for (&id, &lp) in ref_ids.iter().zip(ref_lp) {
        let ours = logprobs[id as usize];
        assert!(
            (ours - lp).abs() <= tol,
            "{what}: logprob of token {id} is {ours}, reference {lp}"
        );
    }
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]));
    let ours_top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
    if ref_lp[4] - sixth >= 2e-3 {
        let mut a = ours_top5.clone();
        let mut b = ref_ids.to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{what}: top-5 set differs");
    }
    for i in 0..4 {
        let gaps_clear = (0..=i).all(|j| ref_lp[j] - ref_lp[j + 1] >= 2e-3);
        if gaps_clear {
            assert_eq!(ours_top5[i], ref_ids[i], "{what}: rank {i} differs");
        }
    }
}

/// How a fidelity run batches and pages the prompts.
#[derive(Clone, Copy, Debug)]
pub struct RunShape {
    pub all_in_one_batch: bool,
    pub prefill_chunk: usize,
    pub block_size: usize,
}

pub struct RunResult {
    pub prompt_logits: Vec<Vec<f32>>,
    pub greedy: Vec<Vec<u32>>,
}

/// Runs every prompt with greedy decoding for `steps` tokens (EOS ignored) and collects
/// the prompt logits, in the given batching shape.
pub fn run_prompts(model: &Path, prompts: &[Vec<u32>], steps: usize, shape: RunShape) -> RunResult {
    let opts = EngineConfig {
        num_threads: 2,
        block_size: shape.block_size,
        max_num_batched_tokens: 512,
        long_prefill_token_threshold: shape.prefill_chunk,
        max_num_seqs: prompts.len(),
        max_model_len: Some(512),
        matmul_precision: llmrt::backend::cpu::MatmulPrecision::Exact,
        ..Default::default()
    };
    let mut llm = Llm::load(model, opts).expect("model loads");
    let request = |p: &Vec<u32>| GenerateRequest {
        prompt_token_ids: p.clone(),
        params: SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(steps)
        },
        return_prompt_logits: true,
    };
    let outputs = if shape.all_in_one_batch {
        llm.generate(prompts.iter().map(request).collect(), |_, _| {})
            .unwrap()
    } else {
        prompts
            .iter()
            .flat_map(|p| llm.generate(vec![request(p)], |_, _| {}).unwrap())
            .collect()
    };
    let vocab = llm.config.vocab_size;
    RunResult {
        prompt_logits: outputs
            .iter()
            .flat_map(|o| {
                let l = o.prompt_logits.as_ref().unwrap();
                assert_eq!(l.len(), o.prompt_token_ids.len() * vocab);
                Some(l.clone())
            })
            .collect(),
        greedy: outputs.into_iter().map(|o| o.token_ids).collect(),
    }
}
