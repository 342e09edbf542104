//! n, best_of and beam search on the tiny llama fixture: n sequences share the prompt's
//! KV blocks (asserted from the block pool) and each equals a lone request with its seed;
//! best_of returns the candidates with the highest cumulative logprob; beam search equals
//! a plain beam search written here over an independent cache-free f64 forward pass.

mod common;
mod reference;

use common::{fixtures, ids, log_softmax, read_json};
use llmrt::backend::cpu::MatmulPrecision;
use llmrt::engine::{CoreRequest, EngineCore};
use llmrt::{EngineConfig, GenerateRequest, Llm, Model, SamplingParams};
use reference::RefModel;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn dir() -> PathBuf {
    fixtures().join("models").join("llama")
}

fn config() -> EngineConfig {
    EngineConfig {
        num_threads: 2,
        max_model_len: Some(256),
        matmul_precision: MatmulPrecision::Exact,
        ..Default::default()
    }
}

fn prompt(p: usize, len: usize) -> Vec<u32> {
    let e = read_json(&dir().join("expected.json"));
    let mut ids = ids(&e["prompts"][p]["ids"]);
    ids.truncate(len);
    ids
}

fn sampled(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_k: 50,
        seed: Some(seed),
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    }
}

fn core(num_kv_blocks: usize) -> EngineCore {
    let cfg = EngineConfig {
        model: dir(),
        block_size: 16,
        num_kv_blocks: Some(num_kv_blocks),
        enable_prefix_caching: false,
        ..config()
    };
    EngineCore::new(Model::load(&dir()).unwrap(), cfg)
        .unwrap()
        .0
}

fn used_blocks(core: &EngineCore) -> usize {
    let s = core.stats();
    s.num_blocks - s.num_free_blocks
}

/// Runs one request to the end; its tokens per sequence index.
fn run_to_end(core: &mut EngineCore, id: u64, params: SamplingParams, p: &[u32]) -> Vec<Vec<u32>> {
    let req = CoreRequest {
        prompt_token_ids: p.to_vec(),
        params,
        ..Default::default()
    };
    core.add_request(id, req).unwrap();
    let mut seqs: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    while core.has_unfinished() {
        for o in core.step() {
            seqs.entry(o.seq_index).or_default().extend(o.new_token_ids);
        }
    }
    seqs.into_values().collect()
}

#[test]
fn n_sequences_share_the_prompt_blocks_and_match_lone_requests() {
    let p = prompt(4, 70); // 4 full blocks of 16 and a partial one
    let params = SamplingParams {
        n: 4,
        ..sampled(11, 8)
    };
    let mut c = core(64);
    c.add_request(
        1,
        CoreRequest {
            prompt_token_ids: p.clone(),
            params,
            ..Default::default()
        },
    )
    .unwrap();
    let mut seqs: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut step = 0;
    while c.has_unfinished() {
        for o in c.step() {
            assert_eq!(o.request_id, 1);
            seqs.entry(o.seq_index).or_default().extend(o.new_token_ids);
        }
        step += 1;
        if step == 1 {
            // Prefill once: four sequences, each with a first token, on the prompt's 5 blocks.
            assert_eq!(
                seqs.len(),
                4,
                "all four sequences forked at the first sample"
            );
            assert_eq!(used_blocks(&c), 5, "the prompt's blocks are held once");
        }
        if step == 2 {
            // The shared partial block was copied for three of them on their first write.
            assert_eq!(used_blocks(&c), 4 + 4, "full blocks still shared");
        }
    }
    assert_eq!(used_blocks(&c), 0, "every block returned");
    for (i, got) in seqs.values().enumerate() {
        assert_eq!(got.len(), 8);
        let mut lone = core(64);
        let want = run_to_end(&mut lone, 1, sampled(11 + i as u64, 8), &p);
        assert_eq!(
            got, &want[0],
            "sequence {i} equals a lone request with seed 11+{i}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = seqs.values().collect();
    assert!(distinct.len() > 1, "independent samples differ");
}

/// The engine's own logprob of `tokens` after `p`, from prompt logits over the sequence.
fn reference_cumulative(llm: &mut Llm, p: &[u32], tokens: &[u32]) -> f64 {
    let mut seq = p.to_vec();
    seq.extend(tokens);
    let r = GenerateRequest {
        prompt_token_ids: seq.clone(),
        params: SamplingParams::greedy(1),
        return_prompt_logits: true,
    };
    let out = llm.generate(vec![r], |_, _| {}).unwrap().remove(0);
    let logits = out.prompt_logits.unwrap();
    let vocab = logits.len() / seq.len();
    (0..tokens.len())
        .map(|j| {
            let row = &logits[(p.len() - 1 + j) * vocab..(p.len() + j) * vocab];
            log_softmax(row)[tokens[j] as usize]
        })
        .sum()
}

#[test]
fn best_of_returns_the_highest_cumulative_logprobs() {
    let mut llm = Llm::load(&dir(), config()).unwrap();
    let p = prompt(2, 14);
    let gen = |llm: &mut Llm, params| {
        let r = GenerateRequest {
            prompt_token_ids: p.clone(),
            params,
            return_prompt_logits: false,
        };
        llm.generate(vec![r], |_, _| {}).unwrap().remove(0)
    };
    let params = SamplingParams {
        n: 2,
        best_of: Some(5),
        ..sampled(5, 6)
    };
    let best = gen(&mut llm, params);
    assert_eq!(best.outputs.len(), 2);
    // The five candidates, alone, with the seeds the request's sequences get.
    let mut candidates: Vec<(f64, Vec<u32>)> = (0..5)
        .map(|i| {
            let out = gen(
                &mut llm,
                SamplingParams {
                    logprobs: Some(0),
                    ..sampled(5 + i, 6)
                },
            );
            let cum = out.outputs[0].cumulative_logprob.unwrap();
            let reference = reference_cumulative(&mut llm, &p, &out.token_ids);
            assert!(
                (cum - reference).abs() < 1e-4,
                "cumulative {cum} vs {reference}"
            );
            (cum, out.token_ids)
        })
        .collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (k, o) in best.outputs.iter().enumerate() {
        assert_eq!(o.index, k as u32);
        assert_eq!(o.token_ids, candidates[k].1, "rank {k}");
        // Batched and lone forward passes sum in different orders: close, not equal.
        assert!((o.cumulative_logprob.unwrap() - candidates[k].0).abs() < 1e-4);
        assert!(o.logprobs.is_empty(), "no logprobs were asked");
    }
    assert_eq!(best.token_ids, best.outputs[0].token_ids);
}

/// vLLM's beam search, over full forward passes of the reference model (no KV cache).
fn reference_beam_search(
    r: &RefModel,
    p: &[u32],
    width: usize,
    max_tokens: usize,
    length_penalty: f64,
    eos: &[u32],
) -> Vec<(Vec<u32>, f64)> {
    let score = |toks: &Vec<u32>, cum: f64| {
        let mut len = p.len() + toks.len();
        if toks.last().is_some_and(|t| eos.contains(t)) {
            len -= 1;
        }
        cum / (len as f64).powf(length_penalty)
    };
    let mut beams: Vec<(Vec<u32>, f64)> = vec![(vec![], 0.0)];
    let mut completed = vec![];
    for _ in 0..max_tokens {
        let mut next = vec![];
        for (toks, cum) in &beams {
            let mut seq = p.to_vec();
            seq.extend(toks);
            let logits = r.last_logits(&seq);
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = logits.iter().map(|x| (x - max).exp()).sum::<f64>().ln() + max;
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            for &id in &order[..2 * width] {
                let mut t = toks.clone();
                t.push(id as u32);
                let b = (t, cum + logits[id] - lse);
                if eos.contains(&(id as u32)) {
                    completed.push(b);
                } else {
                    next.push(b);
                }
            }
        }
        next.sort_by(|a, b| score(&b.0, b.1).total_cmp(&score(&a.0, a.1)));
        next.truncate(width);
        beams = next;
    }
    completed.extend(beams);
    completed.sort_by(|a, b| score(&b.0, b.1).total_cmp(&score(&a.0, a.1)));
    completed.truncate(width);
    completed
}

#[test]
fn beam_search_equals_a_plain_reference() {
    let r = RefModel::load(&dir());
    let mut llm = Llm::load(&dir(), config()).unwrap();
    let eos = Model::load(&dir()).unwrap().eos_token_ids();
    for (p, width, max_tokens, lp) in [(2, 3, 6, 1.0), (1, 2, 8, 0.5), (3, 4, 5, 1.0)] {
        let prompt_ids = prompt(p, 40);
        let want = reference_beam_search(&r, &prompt_ids, width, max_tokens, lp, &eos);
        let params = SamplingParams {
            beam_width: width,
            n: width,
            max_tokens,
            length_penalty: lp as f32,
            temperature: 0.0,
            ..Default::default()
        };
        let req = GenerateRequest {
            prompt_token_ids: prompt_ids.clone(),
            params,
            return_prompt_logits: false,
        };
        let got = llm.generate(vec![req], |_, _| {}).unwrap().remove(0);
        assert_eq!(got.outputs.len(), width);
        for (k, (o, (toks, cum))) in got.outputs.iter().zip(&want).enumerate() {
            assert_eq!(&o.token_ids, toks, "prompt {p} width {width}: beam {k}");
            let c = o.cumulative_logprob.unwrap();
            assert!((c - cum).abs() < 1e-3, "beam {k}: cumulative {c} vs {cum}");
        }
        assert_eq!(
            llm.stats().num_free_blocks,
            llm.stats().num_blocks,
            "beams freed"
        );
    }
}

#[test]
fn beams_share_blocks_while_searching() {
    let p = prompt(4, 64);
    let params = SamplingParams {
        beam_width: 4,
        max_tokens: 6,
        ignore_eos: true,
        temperature: 0.0,
        ..Default::default()
    };
    let mut c = core(64);
    c.add_request(
        1,
        CoreRequest {
            prompt_token_ids: p,
            params,
            ..Default::default()
        },
    )
    .unwrap();
    let mut max_used = 0;
    let mut finals = vec![];
    while c.has_unfinished() {
        for o in c.step() {
            finals.push(o);
        }
        max_used = max_used.max(used_blocks(&c));
    }
    // 4 prompt blocks held once; each of 4 beams owns one partial block of new tokens.
    assert!(
        max_used <= 4 + 4,
        "beams share the prompt: {max_used} blocks at most"
    );
    assert_eq!(finals.len(), 1, "n = 1: the best beam");
    assert!(finals[0].request_finished);
    assert_eq!(finals[0].new_token_ids.len(), 6);
    assert_eq!(used_blocks(&c), 0);
}

#[test]
fn sequence_fields_are_validated() {
    for (v, field) in [
        (serde_json::json!({"n": 0}), "n must"),
        (serde_json::json!({"n": 3, "best_of": 2}), "best_of"),
        (serde_json::json!({"beam_width": 2, "n": 3}), "beam_width"),
        (serde_json::json!({"n": 100000}), "n must"),
    ] {
        let err = SamplingParams::from_json(&v).unwrap_err().to_string();
        assert!(err.contains(field), "{v}: {err}");
    }
}
