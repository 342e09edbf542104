//! The serving engine: batch invariance under every scheduling shape, prefix caching,
//! preemption, aborts, concurrent submission, bad input.

mod common;
use common::*;
use llmrt::engine::EngineCore;
use llmrt::sched::RequestStatus;
use llmrt::{CoreRequest, Engine, EngineConfig, Error, Event, FinishReason, Model, SamplingParams};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// A copy of the tiny llama fixture with a 2048-token context (the reference here is the
/// model itself run one request at a time, so the longer context needs no new fixture).
struct LongModel {
    dir: PathBuf,
}

impl LongModel {
    fn new(tag: &str) -> Self {
        let src = fixtures().join("models").join("llama");
        let dir = std::env::temp_dir().join(format!("llmrt-engine-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let mut cfg = read_json(&src.join("config.json"));
        cfg["max_position_embeddings"] = 2048.into();
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        LongModel { dir }
    }
}

impl Drop for LongModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deterministic pseudo-random token ids in 4..512 (no special tokens).
fn prompt(len: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            4 + (x % 508) as u32
        })
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(max_tokens)
    }
}

fn base_config(model: &LongModel) -> EngineConfig {
    EngineConfig {
        model: model.dir.clone(),
        num_threads: 2,
        max_model_len: Some(1100),
        ..Default::default()
    }
}

/// 64 requests, prompts of 1 to 1000 tokens, max_tokens 1 to 24.
fn workload() -> Vec<(Vec<u32>, usize)> {
    (0..64u64)
        .map(|i| {
            let len = match i {
                0 => 1,
                1 => 1000,
                _ => 1 + ((i * 7919) % 1000) as usize,
            };
            (prompt(len, i + 1), 1 + ((i * 37) % 24) as usize)
        })
        .collect()
}

/// Collects every event until each id has its final event; checks one final per request.
fn drain(engine: &Engine, ids: &[u64]) -> HashMap<u64, Vec<Event>> {
    let mut events: HashMap<u64, Vec<Event>> = HashMap::new();
    let mut open = ids.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while open > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for events"
        );
        for e in engine.poll(256, Duration::from_millis(200)) {
            let list = events.entry(e.request_id).or_default();
            assert!(
                list.last().is_none_or(|l| !l.is_final()),
                "event after the final event for {}",
                e.request_id
            );
            if e.is_final() {
                open -= 1;
            }
            list.push(e);
        }
    }
    events
}

fn tokens_of(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .flat_map(|e| e.token_ids.iter().copied())
        .collect()
}

fn run_batched(
    model: &LongModel,
    cfg: EngineConfig,
    work: &[(Vec<u32>, usize)],
) -> (Vec<Vec<u32>>, llmrt::metrics::Metrics) {
    let engine = Engine::new(EngineConfig {
        model: model.dir.clone(),
        ..cfg
    })
    .unwrap();
    let ids: Vec<u64> = work
        .iter()
        .map(|(p, n)| {
            engine
                .add_request(CoreRequest {
                    prompt_token_ids: p.clone(),
                    params: greedy(*n),
                    ..Default::default()
                })
                .unwrap()
        })
        .collect();
    let events = drain(&engine, &ids);
    let metrics = engine.metrics();
    assert_eq!(
        metrics.num_free_kv_blocks, metrics.num_kv_blocks,
        "KV blocks leaked"
    );
    (
        ids.iter().map(|id| tokens_of(&events[id])).collect(),
        metrics,
    )
}

#[test]
fn outputs_are_batch_invariant_under_every_scheduling_shape() {
    let model = LongModel::new("invariance");
    let work = workload();
    // Reference: each request alone.
    let mut alone_engine = EngineCore::new(Model::load(&model.dir).unwrap(), base_config(&model))
        .unwrap()
        .0;
    let reference: Vec<Vec<u32>> = work
        .iter()
        .enumerate()
        .map(|(i, (p, n))| {
            alone_engine
                .add_request(
                    i as u64,
                    CoreRequest {
                        prompt_token_ids: p.clone(),
                        params: greedy(*n),
                        ..Default::default()
                    },
                )
                .unwrap();
            let mut toks = vec![];
            while alone_engine.has_unfinished() {
                for o in alone_engine.step() {
                    toks.extend(o.new_token_ids);
                }
            }
            assert_eq!(toks.len(), *n);
            toks
        })
        .collect();
    let shapes: Vec<(&str, EngineConfig)> = vec![
        (
            "budget 16",
            EngineConfig {
                max_num_batched_tokens: 16,
                ..base_config(&model)
            },
        ),
        (
            "budget 64",
            EngineConfig {
                max_num_batched_tokens: 64,
                ..base_config(&model)
            },
        ),
        (
            "budget 2048",
            EngineConfig {
                max_num_batched_tokens: 2048,
                ..base_config(&model)
            },
        ),
        (
            "no chunked prefill",
            EngineConfig {
                max_num_batched_tokens: 2048,
                enable_chunked_prefill: false,
                ..base_config(&model)
            },
        ),
        (
            "no prefix caching",
            EngineConfig {
                max_num_batched_tokens: 64,
                enable_prefix_caching: false,
                ..base_config(&model)
            },
        ),
        (
            "4 scheduler steps",
            EngineConfig {
                max_num_batched_tokens: 256,
                num_scheduler_steps: 4,
                ..base_config(&model)
            },
        ),
        (
            "tiny KV cache",
            EngineConfig {
                max_num_batched_tokens: 256,
                num_kv_blocks: Some(80),
                block_size: 16,
                ..base_config(&model)
            },
        ),
        (
            "priority + threshold",
            EngineConfig {
                max_num_batched_tokens: 512,
                long_prefill_token_threshold: 100,
                scheduling_policy: llmrt::sched::SchedulePolicy::Priority,
                ..base_config(&model)
            },
        ),
    ];
    for (name, cfg) in shapes {
        let (out, metrics) = run_batched(&model, cfg, &work);
        for (i, (got, want)) in out.iter().zip(&reference).enumerate() {
            assert_eq!(
                got,
                want,
                "{name}: request {i} (prompt {} tokens)",
                work[i].0.len()
            );
        }
        if name == "tiny KV cache" {
            assert!(
                metrics.num_preemptions > 0,
                "the tiny cache should force preemption"
            );
        }
        assert_eq!(
            metrics.generation_tokens,
            work.iter().map(|w| w.1 as u64).sum::<u64>(),
            "{name}"
        );
    }
}

#[test]
fn prefix_cache_serves_a_shared_prefix() {
    let model = LongModel::new("prefix");
    let engine = Engine::new(EngineConfig {
        max_num_batched_tokens: 256,
        ..base_config(&model)
    })
    .unwrap();
    let shared = prompt(512, 99);
    let mut a = shared.clone();
    a.extend(prompt(20, 1));
    let mut b = shared.clone();
    b.extend(prompt(30, 2));
    let id_a = engine
        .add_request(CoreRequest {
            prompt_token_ids: a,
            params: greedy(4),
            ..Default::default()
        })
        .unwrap();
    let ev_a = drain(&engine, &[id_a]);
    let before = engine.metrics();
    let id_b = engine
        .add_request(CoreRequest {
            prompt_token_ids: b.clone(),
            params: greedy(4),
            ..Default::default()
        })
        .unwrap();
    let ev_b = drain(&engine, &[id_b]);
    let usage_a = ev_a[&id_a].last().unwrap().usage.unwrap();
    let usage_b = ev_b[&id_b].last().unwrap().usage.unwrap();
    assert_eq!(usage_a.cached_prompt_tokens, 0);
    assert!(
        usage_b.cached_prompt_tokens >= 512 - 16,
        "cached {}",
        usage_b.cached_prompt_tokens
    );
    assert_eq!(usage_b.prompt_tokens, b.len());
    let after = engine.metrics();
    assert!(after.prefix_cache_hits - before.prefix_cache_hits >= 512 - 16);
    assert_eq!(
        after.prefix_cache_queries - before.prefix_cache_queries,
        b.len() as u64
    );
    // A different cache_salt must not share the blocks.
    let id_c = engine
        .add_request(CoreRequest {
            prompt_token_ids: b,
            params: greedy(4),
            cache_salt: Some("tenant-2".into()),
            ..Default::default()
        })
        .unwrap();
    let ev_c = drain(&engine, &[id_c]);
    assert_eq!(
        ev_c[&id_c]
            .last()
            .unwrap()
            .usage
            .unwrap()
            .cached_prompt_tokens,
        0
    );
    assert_eq!(tokens_of(&ev_c[&id_c]), tokens_of(&ev_b[&id_b]));
}

#[test]
fn aborts_give_one_final_event_and_free_every_block() {
    let model = LongModel::new("abort");
    let cfg = EngineConfig {
        max_num_batched_tokens: 32,
        num_kv_blocks: Some(40),
        ..base_config(&model)
    };
    let (mut core, _) = EngineCore::new(Model::load(&model.dir).unwrap(), cfg.clone()).unwrap();
    let free_at_start = core.stats().num_free_blocks;
    let req = |len, seed, n| CoreRequest {
        prompt_token_ids: prompt(len, seed),
        params: greedy(n),
        ..Default::default()
    };
    // While prefilling: a 300-token prompt at 32 tokens per step is mid-prefill after a step.
    core.add_request(1, req(300, 1, 10)).unwrap();
    assert!(core.step().iter().all(|o| o.new_token_ids.is_empty()));
    let fin = core
        .finish_request(1, FinishReason::Abort)
        .pop()
        .expect("final output");
    assert_eq!(fin.finish_reason, Some(FinishReason::Abort));
    assert!(
        core.finish_request(1, FinishReason::Abort).is_empty(),
        "only one final output"
    );
    assert_eq!(core.stats().num_free_blocks, free_at_start);
    // While decoding.
    core.add_request(2, req(10, 2, 50)).unwrap();
    let mut produced = 0;
    while produced < 3 {
        produced += core
            .step()
            .iter()
            .map(|o| o.new_token_ids.len())
            .sum::<usize>();
    }
    assert_eq!(
        core.finish_request(2, FinishReason::Abort)
            .pop()
            .unwrap()
            .finish_reason,
        Some(FinishReason::Abort)
    );
    assert_eq!(core.stats().num_free_blocks, free_at_start);
    // While preempted: two requests that cannot both fit (40 blocks of 16 tokens).
    core.add_request(3, req(300, 3, 200)).unwrap();
    core.add_request(4, req(300, 4, 200)).unwrap();
    let mut preempted = None;
    for _ in 0..500 {
        core.step();
        preempted = [3u64, 4]
            .into_iter()
            .find(|&id| core.request_status(id) == Some(RequestStatus::Preempted));
        if preempted.is_some() {
            break;
        }
    }
    let victim = preempted.expect("one request is preempted");
    assert!(core.stats().num_preemptions > 0);
    assert_eq!(
        core.finish_request(victim, FinishReason::Abort)
            .pop()
            .unwrap()
            .finish_reason,
        Some(FinishReason::Abort)
    );
    while core.has_unfinished() {
        core.step();
    }
    assert_eq!(core.stats().num_free_blocks, free_at_start, "blocks leaked");
}

#[test]
fn threaded_aborts_and_shutdown() {
    let model = LongModel::new("abort-threaded");
    let engine = Engine::new(EngineConfig {
        max_num_batched_tokens: 32,
        ..base_config(&model)
    })
    .unwrap();
    let long = engine
        .add_request(CoreRequest {
            prompt_token_ids: prompt(900, 5),
            params: greedy(100),
            ..Default::default()
        })
        .unwrap();
    engine.abort(long).unwrap();
    let decoding = engine
        .add_request(CoreRequest {
            prompt_token_ids: prompt(5, 6),
            params: greedy(1000),
            ..Default::default()
        })
        .unwrap();
    // Wait for a token, then abort.
    let mut seen = vec![];
    while !seen
        .iter()
        .any(|e: &Event| e.request_id == decoding && !e.token_ids.is_empty())
    {
        seen.extend(engine.poll(16, Duration::from_millis(100)));
    }
    engine.abort(decoding).unwrap();
    let mut events: HashMap<u64, Vec<Event>> = HashMap::new();
    for e in seen {
        events.entry(e.request_id).or_default().push(e);
    }
    let finals =
        |ev: &HashMap<u64, Vec<Event>>| ev.values().flatten().filter(|e| e.is_final()).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while finals(&events) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the abort events"
        );
        for e in engine.poll(16, Duration::from_millis(100)) {
            events.entry(e.request_id).or_default().push(e);
        }
    }
    for id in [long, decoding] {
        let finals: Vec<_> = events[&id].iter().filter(|e| e.is_final()).collect();
        assert_eq!(finals.len(), 1);
        assert_eq!(finals[0].finish_reason, Some(FinishReason::Abort));
    }
    engine.abort(decoding).unwrap(); // already finished: nothing happens
    assert!(engine.poll(10, Duration::from_millis(100)).is_empty());
    let m = engine.metrics();
    assert_eq!(m.num_free_kv_blocks, m.num_kv_blocks);
}

#[test]
fn concurrent_submission_from_eight_threads() {
    let model = LongModel::new("threads");
    let engine = std::sync::Arc::new(
        Engine::new(EngineConfig {
            max_num_batched_tokens: 256,
            ..base_config(&model)
        })
        .unwrap(),
    );
    let poller = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let mut events: HashMap<u64, Vec<Event>> = HashMap::new();
            let mut finals = 0;
            while finals < 64 {
                for e in engine.poll(64, Duration::from_millis(100)) {
                    finals += e.is_final() as usize;
                    events.entry(e.request_id).or_default().push(e);
                }
            }
            events
        })
    };
    let submitters: Vec<_> = (0..8u64)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                (0..8u64)
                    .map(|k| {
                        let n = 1 + ((t * 8 + k) % 7) as usize;
                        let p = prompt(3 + (k * 11) as usize, t * 100 + k);
                        (
                            engine
                                .add_request(CoreRequest {
                                    prompt_token_ids: p,
                                    params: greedy(n),
                                    ..Default::default()
                                })
                                .unwrap(),
                            n,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let submitted: Vec<(u64, usize)> = submitters
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let events = poller.join().unwrap();
    assert_eq!(events.len(), 64);
    for (id, n) in submitted {
        let list = &events[&id];
        assert!(list.last().unwrap().is_final(), "final event last");
        assert_eq!(list.iter().filter(|e| e.is_final()).count(), 1);
        assert_eq!(tokens_of(list).len(), n);
        assert_eq!(list.last().unwrap().usage.unwrap().completion_tokens, n);
    }
}

#[test]
fn bad_requests_are_refused_and_serving_continues() {
    let model = LongModel::new("bad");
    let engine = Engine::new(EngineConfig {
        max_model_len: Some(200),
        ..base_config(&model)
    })
    .unwrap();
    let good = engine
        .add_request(CoreRequest {
            prompt_token_ids: prompt(20, 1),
            params: greedy(8),
            ..Default::default()
        })
        .unwrap();
    let cases: Vec<(CoreRequest, &str)> = vec![
        (
            CoreRequest {
                prompt_token_ids: vec![],
                params: greedy(4),
                ..Default::default()
            },
            "empty",
        ),
        (
            CoreRequest {
                prompt_token_ids: vec![5, 600],
                params: greedy(4),
                ..Default::default()
            },
            "out of range",
        ),
        (
            CoreRequest {
                prompt_token_ids: vec![5],
                params: SamplingParams {
                    max_tokens: 0,
                    ..greedy(1)
                },
                ..Default::default()
            },
            "max_tokens",
        ),
        (
            CoreRequest {
                prompt_token_ids: prompt(200, 3),
                params: greedy(4),
                ..Default::default()
            },
            "max_model_len",
        ),
    ];
    for (req, needle) in cases {
        match engine.add_request(req) {
            Err(Error::InvalidRequest(msg)) => {
                assert!(msg.contains(needle), "`{msg}` should mention `{needle}`")
            }
            other => panic!("expected an error mentioning {needle}, got {other:?}"),
        }
    }
    let text = engine.add_prompt("The quick brown fox", greedy(6)).unwrap();
    let events = drain(&engine, &[good, text]);
    assert_eq!(tokens_of(&events[&good]).len(), 8);
    let text_events = &events[&text];
    assert_eq!(tokens_of(text_events).len(), 6);
    let joined: String = text_events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        joined,
        engine
            .tokenizer()
            .decode(&tokens_of(text_events), true)
            .unwrap()
    );
    let prom = engine.metrics().to_prometheus();
    for name in [
        "llmrt_num_requests_running",
        "llmrt_kv_cache_usage_ratio",
        "llmrt_prefix_cache_hits_total",
        "llmrt_time_to_first_token_seconds_bucket",
    ] {
        assert!(prom.contains(name), "{name} missing from metrics");
    }
}

#[test]
fn multi_step_discards_tokens_after_a_stop() {
    // qwen2moe prompt 1 emits <|im_end|> (EOS) during its greedy continuation.
    let dir = fixtures().join("models").join("qwen2moe");
    let expected = read_json(&dir.join("expected.json"));
    let p = ids(&expected["prompts"][1]["ids"]);
    let greedy_ids = ids(&expected["greedy_ids"][1]);
    let eos_at = greedy_ids.iter().position(|&t| t == 2).unwrap();
    for steps in [1, 4, 8] {
        let cfg = EngineConfig {
            model: dir.clone(),
            num_threads: 2,
            num_scheduler_steps: steps,
            ..Default::default()
        };
        let engine = Engine::new(cfg).unwrap();
        let id = engine
            .add_request(CoreRequest {
                prompt_token_ids: p.clone(),
                params: SamplingParams::greedy(32),
                ..Default::default()
            })
            .unwrap();
        let events = drain(&engine, &[id]);
        let last = events[&id].last().unwrap();
        assert_eq!(
            tokens_of(&events[&id]),
            greedy_ids[..=eos_at].to_vec(),
            "num_scheduler_steps {steps}"
        );
        assert_eq!(last.finish_reason, Some(FinishReason::Stop));
        assert_eq!(last.stop_token_id, Some(2));
        let m = engine.metrics();
        assert_eq!(m.num_free_kv_blocks, m.num_kv_blocks);
    }
}
