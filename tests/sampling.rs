//! Sampling fields end to end on the tiny fixture models: stop strings (through the
//! threaded engine and `Llm`), logit_bias, allowed_token_ids, bad_words, min_tokens and the
//! penalties, each checked against a plain reference computed here from the model's exact
//! logits (`Llm` with `return_prompt_logits` over prompt + output so far).
#![allow(clippy::needless_range_loop)]

mod common;
use common::*;
use llmrt::backend::cpu::MatmulPrecision;
use llmrt::{
    CoreRequest, Engine, EngineConfig, Event, FinishReason, GenerateRequest, Llm, SamplingParams,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

fn opts() -> EngineConfig {
    EngineConfig {
        num_threads: 2,
        max_model_len: Some(256),
        matmul_precision: MatmulPrecision::Exact,
        ..Default::default()
    }
}

fn load(name: &str) -> (Llm, Value) {
    let dir = model_dir(name);
    let llm = Llm::load(&dir, opts()).unwrap();
    (llm, read_json(&dir.join("expected.json")))
}

fn prompt(expected: &Value, p: usize) -> Vec<u32> {
    ids(&expected["prompts"][p]["ids"])
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    }
}

fn generate(llm: &mut Llm, prompt: &[u32], params: SamplingParams) -> llmrt::RequestOutput {
    llm.generate(
        vec![GenerateRequest {
            prompt_token_ids: prompt.to_vec(),
            params,
            return_prompt_logits: false,
        }],
        |_, _| {},
    )
    .unwrap()
    .remove(0)
}

/// The model's logits for the token after `seq` (a full forward pass, no sampling).
fn next_logits(llm: &mut Llm, seq: &[u32]) -> Vec<f32> {
    let out = llm
        .generate(
            vec![GenerateRequest {
                prompt_token_ids: seq.to_vec(),
                params: greedy(1),
                return_prompt_logits: true,
            }],
            |_, _| {},
        )
        .unwrap()
        .remove(0);
    let vocab = llm.config.vocab_size;
    out.prompt_logits.unwrap()[(seq.len() - 1) * vocab..].to_vec()
}

fn argmax(l: &[f32]) -> (u32, f32) {
    let mut best = 0;
    for i in 0..l.len() {
        if l[i] > l[best] {
            best = i;
        }
    }
    let second = (0..l.len())
        .filter(|&i| i != best)
        .map(|i| l[i])
        .fold(f32::NEG_INFINITY, f32::max);
    (best as u32, l[best] - second)
}

/// The reference: vLLM's processors and penalties as plain loops over the row.
fn reference_row(
    l: &mut [f32],
    p: &SamplingParams,
    bad: &[Vec<u32>],
    eos: &[u32],
    prompt: &[u32],
    out: &[u32],
) {
    let v = l.len();
    if let Some(a) = &p.allowed_token_ids {
        for t in 0..v {
            if !a.contains(&(t as u32)) {
                l[t] = f32::NEG_INFINITY;
            }
        }
    }
    for w in bad {
        let n = w.len() - 1;
        if out.len() >= n && out[out.len() - n..] == w[..n] {
            l[w[n] as usize] = f32::NEG_INFINITY;
        }
    }
    if out.len() < p.min_tokens {
        for t in 0..v as u32 {
            if (!p.ignore_eos && eos.contains(&t)) || p.stop_token_ids.contains(&t) {
                l[t as usize] = f32::NEG_INFINITY;
            }
        }
    }
    for &(t, b) in &p.logit_bias {
        l[t as usize] += b;
    }
    for t in 0..v {
        let tok = t as u32;
        if prompt.contains(&tok) || out.contains(&tok) {
            l[t] *= if l[t] > 0.0 {
                1.0 / p.repetition_penalty
            } else {
                p.repetition_penalty
            };
        }
        let n = out.iter().filter(|&&o| o == tok).count();
        l[t] -= p.frequency_penalty * n as f32;
        if n > 0 {
            l[t] -= p.presence_penalty;
        }
    }
}

fn eos_ids(name: &str) -> Vec<u32> {
    let g = read_json(&model_dir(name).join("generation_config.json"));
    match &g["eos_token_id"] {
        Value::Array(a) => a.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        x => vec![x.as_u64().unwrap() as u32],
    }
}

/// Greedy generation with `params` equals, token by token, the argmax of the reference
/// applied to the exact logits. Returns the output.
fn check_greedy(
    name: &str,
    llm: &mut Llm,
    prompt: &[u32],
    params: SamplingParams,
    bad: &[Vec<u32>],
) -> Vec<u32> {
    let eos = eos_ids(name);
    let out = generate(llm, prompt, params.clone()).token_ids;
    for i in 0..out.len() {
        let mut seq = prompt.to_vec();
        seq.extend(&out[..i]);
        let mut l = next_logits(llm, &seq);
        reference_row(&mut l, &params, bad, &eos, prompt, &out[..i]);
        let (want, margin) = argmax(&l);
        if out[i] != want {
            // Only a near tie may differ (decode vs full-pass rounding); paths then part.
            assert!(
                margin < 1e-3,
                "{name} {params:?}: token {i} is {}, reference {want} (margin {margin})",
                out[i]
            );
            break;
        }
    }
    out
}

#[test]
fn logit_bias_forces_a_token() {
    let (mut llm, e) = load("qwen2");
    let p = prompt(&e, 2);
    let forced = 7u32;
    let params = SamplingParams {
        logit_bias: vec![(forced, 100.0)],
        ..greedy(6)
    };
    let out = check_greedy("qwen2", &mut llm, &p, params.clone(), &[]);
    assert_eq!(out, vec![forced; 6]);
    // Also when sampling at temperature 1.
    let sampled = SamplingParams {
        temperature: 1.0,
        seed: Some(3),
        ..params
    };
    assert_eq!(generate(&mut llm, &p, sampled).token_ids, vec![forced; 6]);
}

#[test]
fn allowed_token_ids_restrict_greedy_to_the_set() {
    let (mut llm, e) = load("qwen2");
    let p = prompt(&e, 1);
    let allowed = vec![3u32, 50, 120, 400, 7, 441];
    let params = SamplingParams {
        allowed_token_ids: Some(allowed.clone()),
        ..greedy(8)
    };
    let out = check_greedy("qwen2", &mut llm, &p, params, &[]);
    assert_eq!(out.len(), 8);
    assert!(out.iter().all(|t| allowed.contains(t)), "{out:?}");
}

#[test]
fn repetition_penalty_changes_greedy_as_defined() {
    let (mut llm, e) = load("qwen2");
    // Prompt 1's greedy continuation repeats token 441 six times.
    let p = prompt(&e, 1);
    let plain = ids(&e["greedy_ids"][1]);
    for rep in [1.3f32, 0.8] {
        let params = SamplingParams {
            repetition_penalty: rep,
            ..greedy(12)
        };
        let out = check_greedy("qwen2", &mut llm, &p, params, &[]);
        if rep > 1.0 {
            assert_ne!(out[..], plain[..12], "the penalty changes the output");
        }
    }
}

#[test]
fn frequency_and_presence_penalties_change_greedy_as_defined() {
    let (mut llm, e) = load("qwen2");
    let p = prompt(&e, 1);
    let plain = ids(&e["greedy_ids"][1]);
    for (freq, pres) in [(1.5f32, 0.0f32), (0.0, 2.0), (0.7, -0.5)] {
        let params = SamplingParams {
            frequency_penalty: freq,
            presence_penalty: pres,
            ..greedy(12)
        };
        let out = check_greedy("qwen2", &mut llm, &p, params, &[]);
        if pres >= 0.0 {
            assert_ne!(out[..], plain[..12], "freq {freq} pres {pres}");
        }
    }
}

#[test]
fn bad_words_are_never_completed() {
    let (mut llm, e) = load("qwen2");
    let p = prompt(&e, 2);
    let plain = ids(&e["greedy_ids"][2]);
    let tok = llm.tokenizer.clone_handle();
    // A two-token word of the greedy continuation that tokenizes back to those tokens.
    let (j, word) = (1..20)
        .find_map(|j| {
            let w = tok.decode(&plain[j..j + 2], true).unwrap();
            let w = w.trim_start().to_string();
            let enc = |s: &str| tok.encode(s, false).unwrap();
            let fits = enc(&w) == plain[j..j + 2] || enc(&format!(" {w}")) == plain[j..j + 2];
            (fits && !w.is_empty()).then_some((j, w))
        })
        .expect("a two-token word in the continuation");
    // The reference's sequences, tokenized as vLLM does.
    let plain_ids = tok.encode(&word, false).unwrap();
    let spaced = tok.encode(&format!(" {word}"), false).unwrap();
    let mut bad = vec![plain_ids.clone()];
    if spaced[0] != plain_ids[0] && spaced.len() == plain_ids.len() {
        bad.push(spaced);
    }
    let params = SamplingParams {
        bad_words: vec![word.clone()],
        ..greedy(24)
    };
    let out = check_greedy("qwen2", &mut llm, &p, params, &bad);
    // The output parts from plain greedy where plain greedy completes a bad word.
    let k = (0..out.len())
        .find(|&k| out[k] != plain[k])
        .unwrap_or_else(|| panic!("{word:?} (tokens at {j}) changed nothing"));
    assert!(
        bad.iter().any(|w| plain[..=k].ends_with(w)),
        "{word:?}: {out:?} parts from {plain:?} at {k}"
    );
    for w in &bad {
        assert!(
            !out.windows(w.len()).any(|x| x == &w[..]),
            "{word:?} in {out:?}"
        );
    }
}

#[test]
fn min_tokens_delays_eos() {
    let (mut llm, e) = load("qwen2moe");
    let p = prompt(&e, 1);
    let plain = ids(&e["greedy_ids"][1]);
    let eos = eos_ids("qwen2moe");
    let at = plain
        .iter()
        .position(|t| eos.contains(t))
        .expect("greedy emits EOS");
    let out = generate(&mut llm, &p, SamplingParams::greedy(32));
    assert_eq!(out.token_ids, plain[..=at]);
    assert_eq!(out.finish_reason, FinishReason::Stop);
    let params = SamplingParams {
        min_tokens: at + 3,
        ..SamplingParams::greedy(32)
    };
    let out = check_greedy("qwen2moe", &mut llm, &p, params, &[]);
    assert_eq!(out[..at], plain[..at]);
    assert!(out.len() > at + 3, "{out:?}");
    assert!(!out[..at + 3].iter().any(|t| eos.contains(t)), "{out:?}");
}

/// A stop string cut from the greedy continuation's text that the `span` tokens
/// `j+1-span ..= j` complete: for one token, that token's whole text; for more, from the
/// last character of the first one's text to the first character of token `j`'s (the
/// tokens between lie wholly inside). The first `j` whose stop string first occurs there.
/// Returns (stop, its byte start in the text, `j`).
fn stop_case(tok: &llmrt::model::Tokenizer, out: &[u32], span: usize) -> (String, usize, usize) {
    let text = tok.decode(out, true).unwrap();
    let p: Vec<String> = (0..=out.len())
        .map(|n| tok.decode(&out[..n], true).unwrap())
        .collect();
    for j in span..out.len() {
        let first = j + 1 - span;
        if !(first..=j + 1).all(|n| text.starts_with(&p[n])) {
            continue;
        }
        let (a0, a1) = (p[first].len(), p[first + 1].len());
        let (b0, b1) = (p[j].len(), p[j + 1].len());
        if a1 <= a0 || b1 <= b0 {
            continue;
        }
        let (start, end) = if span == 1 {
            (b0, b1)
        } else {
            let start = text[..a1].char_indices().last().unwrap().0;
            (start, b0 + text[b0..].chars().next().unwrap().len_utf8())
        };
        let s = &text[start..end];
        if text.find(s) == Some(start) && !s.contains('\u{FFFD}') && !s.trim().is_empty() {
            return (s.to_string(), start, j);
        }
    }
    panic!("no {span}-token stop string in {text:?}");
}

fn engine_run(engine: &Engine, prompt: &[u32], params: SamplingParams) -> Vec<Event> {
    let id = engine
        .add_request(CoreRequest {
            prompt_token_ids: prompt.to_vec(),
            params,
            ..Default::default()
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = vec![];
    while !events.last().is_some_and(Event::is_final) {
        assert!(Instant::now() < deadline, "no final event");
        events.extend(
            engine
                .poll(64, Duration::from_millis(50))
                .into_iter()
                .filter(|e| e.request_id == id),
        );
    }
    // Exactly one final event, and nothing after it.
    std::thread::sleep(Duration::from_millis(100));
    assert!(engine
        .poll(64, Duration::from_millis(50))
        .iter()
        .all(|e| e.request_id != id));
    assert_eq!(events.iter().filter(|e| e.is_final()).count(), 1);
    events
}

#[test]
fn stop_strings_end_the_output_exactly_there() {
    let dir = model_dir("qwen2");
    let e = read_json(&dir.join("expected.json"));
    // One token per step, and four per scheduling decision (multi-step: tokens after the
    // stop string arrive in the same output and are dropped).
    let engines: Vec<Engine> = [1, 4]
        .into_iter()
        .map(|steps| {
            Engine::new(EngineConfig {
                model: dir.clone(),
                num_scheduler_steps: steps,
                ..opts()
            })
            .unwrap()
        })
        .collect();
    let mut llm = Llm::load(&dir, opts()).unwrap();
    let tok = llm.tokenizer.clone_handle();
    for p in [0usize, 2] {
        let prompt = prompt(&e, p);
        let plain = ids(&e["greedy_ids"][p]);
        let text = tok.decode(&plain, true).unwrap();
        let out = generate(&mut llm, &prompt, greedy(32));
        assert_eq!(out.token_ids, plain, "the unstopped run is the reference");
        for span in [1, 2, 3] {
            let (stop, start, j) = stop_case(&tok, &plain, span);
            for include in [false, true] {
                let what = format!("prompt {p} stop {stop:?} span {span} include {include}");
                let want_text = if include {
                    &text[..start + stop.len()]
                } else {
                    &text[..start]
                };
                let params = SamplingParams {
                    stop: vec!["never-there".into(), stop.clone()],
                    include_stop_str_in_output: include,
                    ..greedy(32)
                };
                for engine in &engines {
                    // The threaded engine.
                    let events = engine_run(engine, &prompt, params.clone());
                    let last = events.last().unwrap();
                    let got_text: String = events.iter().map(|e| e.text.as_str()).collect();
                    let got_ids: Vec<u32> =
                        events.iter().flat_map(|e| e.token_ids.clone()).collect();
                    assert_eq!(got_text, want_text, "{what}");
                    assert_eq!(got_ids, plain[..=j], "{what}");
                    assert_eq!(last.finish_reason, Some(FinishReason::Stop), "{what}");
                    assert_eq!(last.stop_string.as_deref(), Some(stop.as_str()), "{what}");
                    assert_eq!(last.stop_token_id, None, "{what}");
                    assert_eq!(last.usage.unwrap().completion_tokens, j + 1, "{what}");
                    // No text of the stop string leaks into a delta before it is found.
                    if !include {
                        let mut seen = String::new();
                        for e in &events {
                            seen.push_str(&e.text);
                            assert!(want_text.starts_with(&seen), "{what}: emitted {seen:?}");
                        }
                    }
                }
                // `Llm`.
                let out = generate(&mut llm, &prompt, params);
                assert_eq!(out.text, want_text, "{what} (Llm)");
                assert_eq!(out.token_ids, plain[..=j], "{what} (Llm)");
                assert_eq!(out.finish_reason, FinishReason::Stop, "{what} (Llm)");
                assert_eq!(
                    out.stop_string.as_deref(),
                    Some(stop.as_str()),
                    "{what} (Llm)"
                );
            }
        }
        // A stop string that never appears changes nothing.
        let params = SamplingParams {
            stop: vec!["\u{1F600}never".into()],
            ..greedy(32)
        };
        let events = engine_run(&engines[1], &prompt, params);
        let got_text: String = events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(got_text, text);
        assert_eq!(
            events.last().unwrap().finish_reason,
            Some(FinishReason::Length)
        );
        assert_eq!(events.last().unwrap().stop_string, None);
    }
}

#[test]
fn sampling_fields_through_request_json() {
    let dir = model_dir("qwen2");
    let engine = Engine::new(EngineConfig {
        model: dir,
        ..opts()
    })
    .unwrap();
    let parser = llmrt::engine::request_json::RequestParser::for_engine(&engine);
    let parse = |v: Value| parser.parse(engine.tokenizer(), &v);
    // A token whose text tokenizes back to it: its bias forces it, unless it is a bad word.
    let tok = engine.tokenizer();
    let (t, word) = (7u32..200)
        .find_map(|t| {
            let w = tok.decode(&[t], true).unwrap().trim_start().to_string();
            let back = |s: &str| tok.encode(s, false).unwrap() == [t];
            (!w.is_empty() && (back(&w) || back(&format!(" {w}")))).then_some((t, w))
        })
        .unwrap();
    let r = parse(serde_json::json!({
        "prompt_token_ids": [272, 430], "logit_bias": {t.to_string(): 100}, "max_tokens": 3,
        "temperature": 0, "stop": ["xyz"], "ignore_eos": true,
    }))
    .unwrap();
    let events = engine_run(&engine, &r.prompt_token_ids, r.params);
    let got: Vec<u32> = events.iter().flat_map(|e| e.token_ids.clone()).collect();
    assert_eq!(got, [t, t, t]);
    let r = parse(serde_json::json!({
        "prompt_token_ids": [272, 430], "logit_bias": {t.to_string(): 100}, "max_tokens": 3,
        "temperature": 0, "bad_words": [word], "ignore_eos": true,
    }))
    .unwrap();
    let events = engine_run(&engine, &r.prompt_token_ids, r.params);
    let got: Vec<u32> = events.iter().flat_map(|e| e.token_ids.clone()).collect();
    assert_eq!(got.len(), 3);
    assert!(!got.contains(&t), "{word:?} ({t}) in {got:?}");
    // Token ids out of the vocabulary are refused at submission, naming the field.
    let vocab = engine.limits().vocab_size;
    for (field, v) in [
        (
            "logit_bias",
            serde_json::json!({"logit_bias": {vocab.to_string(): 1.0}}),
        ),
        (
            "allowed_token_ids",
            serde_json::json!({"allowed_token_ids": [1, vocab]}),
        ),
    ] {
        let mut obj = v.as_object().unwrap().clone();
        obj.insert("prompt_token_ids".into(), serde_json::json!([272]));
        let r = parse(Value::Object(obj)).unwrap();
        match engine.add_request(r) {
            Err(llmrt::Error::InvalidRequest(m)) => assert!(m.contains(field), "{m}"),
            other => panic!("{field}: {other:?}"),
        }
    }
}

/// A seeded request samples the same tokens alone and inside a batch of 16 with other
/// seeded and unseeded requests of different lengths.
#[test]
fn seeded_requests_are_batch_independent() {
    let (mut llm, expected) = load("llama");
    let base = prompt(&expected, 4);
    let params = |seed: Option<u64>, max_tokens: usize| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
        seed,
        max_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let requests: Vec<GenerateRequest> = (0..16)
        .map(|i| GenerateRequest {
            prompt_token_ids: base[..8 + 6 * i].to_vec(),
            params: params((i % 2 == 0).then_some(1000 + i as u64), 10 + i),
            return_prompt_logits: false,
        })
        .collect();
    let batched = llm.generate(requests.clone(), |_, _| {}).unwrap();
    let mut differs = 0;
    for (i, r) in requests.into_iter().enumerate() {
        let seeded = r.params.seed.is_some();
        let alone = llm.generate(vec![r], |_, _| {}).unwrap().remove(0);
        if seeded {
            assert_eq!(alone.token_ids, batched[i].token_ids, "seeded request {i}");
        } else {
            differs += (alone.token_ids != batched[i].token_ids) as usize;
        }
    }
    assert!(differs > 0, "unseeded requests draw fresh randomness");
}
