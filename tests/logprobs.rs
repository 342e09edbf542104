//! Logprobs and prompt logprobs against transformers' top-5 (the fixtures' expected.json)
//! on every tiny model: in one batch, prefilled in chunks of 7, and after a prefix-cache
//! hit on the same prompt; plus logprobs_mode.

mod common;

use common::{fixtures, ids, read_json};
use llmrt::backend::cpu::MatmulPrecision;
use llmrt::sample::TokenLogprobs;
use llmrt::{EngineConfig, GenerateRequest, Llm, LogprobsMode, SamplingParams};
use serde_json::Value;

const MODELS: [&str; 5] = ["llama", "qwen2", "qwen3", "mixtral", "qwen2moe"];
const TOL: f64 = 2e-3;

fn load(name: &str, chunk: usize) -> (Llm, Value) {
    let dir = fixtures().join("models").join(name);
    let opts = EngineConfig {
        num_threads: 2,
        max_model_len: Some(512),
        long_prefill_token_threshold: chunk,
        matmul_precision: MatmulPrecision::Exact,
        ..Default::default()
    };
    (
        Llm::load(&dir, opts).unwrap(),
        read_json(&dir.join("expected.json")),
    )
}

fn request(
    prompt: Vec<u32>,
    max_tokens: usize,
    lp: Option<i32>,
    plp: Option<i32>,
) -> GenerateRequest {
    GenerateRequest {
        prompt_token_ids: prompt,
        params: SamplingParams {
            ignore_eos: true,
            logprobs: lp,
            prompt_logprobs: plp,
            ..SamplingParams::greedy(max_tokens)
        },
        return_prompt_logits: false,
    }
}

/// One position against the reference's top-5 (`ids`, `logprobs`, `sixth_logprob` at `t`).
fn check(what: &str, ours: &TokenLogprobs, reference: &Value, t: usize) {
    let ref_ids = ids(&reference["ids"][t]);
    let ref_lp: Vec<f64> = common::floats(&reference["logprobs"][t]);
    let sixth = reference["sixth_logprob"][t].as_f64().unwrap();
    let top: Vec<(u32, f64)> = ours
        .top
        .iter()
        .map(|l| (l.token_id, l.logprob as f64))
        .collect();
    assert_eq!(top.len(), 6, "{what}: 6 alternatives asked");
    for (&id, &lp) in ref_ids.iter().zip(&ref_lp) {
        if let Some(&(_, v)) = top.iter().find(|(i, _)| *i == id) {
            assert!((v - lp).abs() <= TOL, "{what}: token {id}: {v} vs {lp}");
        } else {
            // Missing from our top 6: only possible in a near-tie with the 6th.
            assert!(
                lp - sixth < TOL,
                "{what}: token {id} ({lp}) not in our top 6"
            );
        }
    }
    if ref_lp[4] - sixth >= TOL {
        let mut a: Vec<u32> = top[..5].iter().map(|x| x.0).collect();
        let mut b = ref_ids.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{what}: top-5 set");
    }
    for i in 0..4 {
        if (0..=i).all(|j| ref_lp[j] - ref_lp[j + 1] >= TOL) {
            assert_eq!(top[i].0, ref_ids[i], "{what}: rank {}", i + 1);
            assert_eq!(ours.top[i].rank, i as u32 + 1, "{what}: rank field");
        }
    }
    // The chosen token's own entry agrees with the list.
    let tok = ours.token.expect("chosen token");
    if let Some(l) = ours.top.iter().find(|l| l.token_id == tok.token_id) {
        assert_eq!(l.logprob, tok.logprob, "{what}: chosen token");
    }
}

/// Prompt logprobs (one per prompt token after the first) and the greedy tokens' logprobs.
fn check_outputs(model: &str, expected: &Value, shape: &str, outs: &[llmrt::RequestOutput]) {
    for (p, out) in outs.iter().enumerate() {
        let what = format!("{model} {shape} prompt {p}");
        let n = out.prompt_token_ids.len();
        assert_eq!(
            out.prompt_logprobs.len(),
            n - 1,
            "{what}: prompt logprobs complete"
        );
        for (t, lp) in out.prompt_logprobs.iter().enumerate() {
            assert_eq!(lp.token.unwrap().token_id, out.prompt_token_ids[t + 1]);
            check(
                &format!("{what} prompt pos {t}"),
                lp,
                &expected["prompt_top5"][p],
                t,
            );
        }
        assert_eq!(
            out.token_ids,
            ids(&expected["greedy_ids"][p]),
            "{what}: greedy ids"
        );
        let seq = &out.outputs[0];
        assert_eq!(seq.logprobs.len(), out.token_ids.len());
        let mut sum = 0.0;
        for (i, lp) in seq.logprobs.iter().enumerate() {
            assert_eq!(lp.token.unwrap().token_id, out.token_ids[i]);
            check(
                &format!("{what} step {i}"),
                lp,
                &expected["greedy_top5"][p],
                i,
            );
            sum += lp.value() as f64;
        }
        let cum = seq.cumulative_logprob.expect("cumulative logprob");
        assert!(
            (cum - sum).abs() < 1e-6 * sum.abs().max(1.0),
            "{what}: cumulative"
        );
    }
}

fn prompts(expected: &Value) -> Vec<Vec<u32>> {
    expected["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids(&p["ids"]))
        .collect()
}

#[test]
fn logprobs_match_the_reference_in_one_batch_and_in_chunks() {
    for model in MODELS {
        let (mut llm, expected) = load(model, 0);
        let reqs = prompts(&expected)
            .into_iter()
            .map(|p| request(p, 32, Some(6), Some(6)))
            .collect();
        let outs = llm.generate(reqs, |_, _| {}).unwrap();
        check_outputs(model, &expected, "batch", &outs);

        let (mut llm, _) = load(model, 7);
        let outs: Vec<_> = prompts(&expected)
            .into_iter()
            .flat_map(|p| {
                llm.generate(vec![request(p, 32, Some(6), Some(6))], |_, _| {})
                    .unwrap()
            })
            .collect();
        check_outputs(model, &expected, "chunked-7", &outs);
    }
}

#[test]
fn prompt_logprobs_are_complete_after_a_prefix_cache_hit() {
    for model in ["llama", "qwen3"] {
        let (mut llm, expected) = load(model, 0);
        let all = prompts(&expected);
        // Cache every prompt first, then ask for its prompt logprobs.
        let warm = all
            .iter()
            .map(|p| request(p.clone(), 1, None, None))
            .collect();
        llm.generate(warm, |_, _| {}).unwrap();
        let before = llm.stats().prefix_cache_hits;
        let again = all
            .iter()
            .map(|p| request(p.clone(), 1, None, None))
            .collect();
        let hits = llm.generate(again, |_, _| {}).unwrap();
        assert!(
            hits.iter().any(|o| o.num_cached_tokens > 0) && llm.stats().prefix_cache_hits > before,
            "{model}: the prompts are in the prefix cache"
        );
        let reqs = all
            .into_iter()
            .map(|p| request(p, 32, Some(6), Some(6)))
            .collect();
        let outs = llm.generate(reqs, |_, _| {}).unwrap();
        check_outputs(model, &expected, "after cache hit", &outs);
    }
}

#[test]
fn logprobs_modes_follow_their_definitions() {
    let (mut llm, expected) = load("llama", 0);
    let prompt = prompts(&expected)[2].clone();
    let run = |llm: &mut Llm, mode, temperature| {
        let params = SamplingParams {
            temperature,
            seed: Some(7),
            max_tokens: 6,
            ignore_eos: true,
            logprobs: Some(-1),
            logprobs_mode: mode,
            logit_bias: vec![(5, 3.0)],
            ..Default::default()
        };
        let r = GenerateRequest {
            prompt_token_ids: prompt.clone(),
            params,
            return_prompt_logits: false,
        };
        llm.generate(vec![r], |_, _| {}).unwrap().remove(0)
    };
    let raw_logits = run(&mut llm, LogprobsMode::RawLogits, 0.5);
    let by_id = |lp: &TokenLogprobs| {
        let mut v = vec![0f32; lp.top.len()];
        lp.top
            .iter()
            .for_each(|l| v[l.token_id as usize] = l.logprob);
        v
    };
    for (name, mode) in [
        ("raw_logprobs", LogprobsMode::RawLogprobs),
        ("processed_logits", LogprobsMode::ProcessedLogits),
        ("processed_logprobs", LogprobsMode::ProcessedLogprobs),
    ] {
        let out = run(&mut llm, mode, 0.5);
        assert_eq!(
            out.token_ids, raw_logits.token_ids,
            "same seed, same tokens"
        );
        for (pos, (a, b)) in raw_logits.outputs[0]
            .logprobs
            .iter()
            .zip(&out.outputs[0].logprobs)
            .enumerate()
        {
            let logits = by_id(a);
            assert_eq!(b.top.len(), logits.len(), "-1: the whole vocabulary");
            // The reference: bias, then temperature, then (for logprobs) log-softmax.
            let mut expect: Vec<f32> = logits.clone();
            if mode.is_processed() {
                expect[5] += 3.0;
                expect.iter_mut().for_each(|x| *x /= 0.5);
            }
            let expect: Vec<f64> = if mode.is_logits() {
                expect.iter().map(|&x| x as f64).collect()
            } else {
                common::log_softmax(&expect)
            };
            let got = by_id(b);
            for (id, (&g, &e)) in got.iter().zip(&expect).enumerate() {
                assert!(
                    (g as f64 - e).abs() < 1e-4,
                    "{name} pos {pos} token {id}: {g} vs {e}"
                );
            }
        }
    }
}

#[test]
fn logprobs_out_of_range_are_refused() {
    let (mut llm, expected) = load("llama", 0);
    let prompt = prompts(&expected)[1].clone();
    for (lp, plp, field) in [
        (Some(21), None, "logprobs"),
        (None, Some(-2), "prompt_logprobs"),
    ] {
        let err = llm
            .generate(vec![request(prompt.clone(), 4, lp, plp)], |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
    let v = serde_json::json!({"logprobs_mode": "cooked"});
    let err = SamplingParams::from_json(&v).unwrap_err().to_string();
    assert!(err.contains("logprobs_mode"), "{err}");
}

/// Preempted requests are recomputed; their prompt logprobs are still sent exactly once.
#[test]
fn prompt_logprobs_survive_preemption() {
    let dir = fixtures().join("models").join("llama");
    let opts = EngineConfig {
        num_threads: 2,
        max_model_len: Some(512),
        block_size: 16,
        num_kv_blocks: Some(20),
        long_prefill_token_threshold: 32,
        matmul_precision: MatmulPrecision::Exact,
        ..Default::default()
    };
    let mut llm = Llm::load(&dir, opts).unwrap();
    let expected = read_json(&dir.join("expected.json"));
    let reqs = prompts(&expected)
        .into_iter()
        .map(|p| request(p, 32, Some(6), Some(6)))
        .collect();
    let outs = llm.generate(reqs, |_, _| {}).unwrap();
    assert!(
        llm.stats().num_preemptions > 0,
        "the small cache forces preemption"
    );
    check_outputs("llama", &expected, "preempted", &outs);
}
