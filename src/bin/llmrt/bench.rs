//! `llmrt bench`: prompt processing, generation and concurrent serving throughput, as
//! llama-bench and vLLM's throughput benchmark measure them.

use crate::batch::EngineArgs;
use clap::Args;
use llmrt::engine::Engine;
use llmrt::{CoreRequest, SamplingParams};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Prompt lengths to time (prompt processing), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![128usize, 512])]
    pub pp: Vec<usize>,
    /// Generated tokens to time (batch 1), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![128usize])]
    pub tg: Vec<usize>,
    /// Concurrent requests for the serving test, comma-separated (0: skip).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0usize])]
    pub concurrency: Vec<usize>,
    /// Prompt tokens of each concurrent request.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Generated tokens of each concurrent request.
    #[arg(long, default_value_t = 128)]
    pub gen_len: usize,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Distinct prompts of ordinary tokens (no prefix sharing between them).
fn prompt(len: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            100 + (x % (vocab as u64 - 200)) as u32
        })
        .collect()
}

struct Run {
    wall: f64,
    out_tokens: usize,
    ttft: Vec<f64>,
    /// Seconds from first to last token of the first request (decode speed at batch 1).
    decode: f64,
}

/// Submits `n` requests at once and waits for all of them.
fn run(
    engine: &Engine,
    n: usize,
    prompt_len: usize,
    gen_len: usize,
    seed: u64,
) -> llmrt::Result<Run> {
    let vocab = engine.limits().vocab_size;
    let start = Instant::now();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(gen_len)
    };
    let ids: Vec<u64> = (0..n)
        .map(|i| {
            engine.add_request(CoreRequest {
                prompt_token_ids: prompt(prompt_len, seed + i as u64, vocab),
                params: params.clone(),
                ..Default::default()
            })
        })
        .collect::<llmrt::Result<_>>()?;
    let mut first: Vec<Option<Instant>> = vec![None; n];
    let mut last = vec![start; n];
    let (mut open, mut out_tokens) = (n, 0);
    while open > 0 {
        for e in engine.poll(4096, Duration::from_millis(50)) {
            let i = ids
                .iter()
                .position(|&id| id == e.request_id)
                .expect("our request");
            if !e.token_ids.is_empty() {
                first[i].get_or_insert_with(Instant::now);
                last[i] = Instant::now();
            }
            out_tokens += e.token_ids.len();
            open -= e.is_final() as usize;
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let ttft = first
        .iter()
        .map(|t| t.map_or(wall, |t| (t - start).as_secs_f64()))
        .collect();
    let decode = first[0].map_or(0.0, |f| (last[0] - f).as_secs_f64());
    Ok(Run {
        wall,
        out_tokens,
        ttft,
        decode,
    })
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn run_bench(args: BenchArgs) -> llmrt::Result<()> {
    let mut cfg = args.engine.to_config()?;
    // Timed prompts must be computed, not found in the prefix cache.
    cfg.enable_prefix_caching = false;
    let max_pp = args.pp.iter().copied().max().unwrap_or(0);
    cfg.max_num_batched_tokens = cfg.max_num_batched_tokens.max(max_pp);
    let t_load = Instant::now();
    let engine = Engine::new(cfg)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let reps = args.reps.max(1);
    let mut result = serde_json::Map::new();
    result.insert("load_s".into(), json!(load_s));
    let mut seed = 1u64;
    let report = |name: String,
                  samples: Vec<f64>,
                  result: &mut serde_json::Map<String, serde_json::Value>| {
        let (min, med, max) = stats(samples);
        if !args.json {
            eprintln!("{name:>16}: {med:9.1} tok/s  (min {min:.1}, max {max:.1})");
        }
        result.insert(format!("{name}_tok_s"), json!(med));
        result.insert(format!("{name}_tok_s_min"), json!(min));
        result.insert(format!("{name}_tok_s_max"), json!(max));
    };
    run(&engine, 1, 16, 4, 999)?; // warm-up
    for &pp in &args.pp {
        let samples = (0..reps)
            .map(|_| {
                seed += 1000;
                run(&engine, 1, pp, 1, seed).map(|r| pp as f64 / r.ttft[0])
            })
            .collect::<llmrt::Result<Vec<_>>>()?;
        report(format!("pp{pp}"), samples, &mut result);
    }
    for &tg in &args.tg {
        let samples = (0..reps)
            .map(|_| {
                seed += 1000;
                run(&engine, 1, 1, tg, seed).map(|r| (tg - 1) as f64 / r.decode.max(1e-9))
            })
            .collect::<llmrt::Result<Vec<_>>>()?;
        report(format!("tg{tg}"), samples, &mut result);
    }
    for &c in args.concurrency.iter().filter(|&&c| c > 0) {
        let mut ttfts = vec![];
        let samples = (0..reps)
            .map(|_| {
                seed += 1000;
                run(&engine, c, args.prompt_len, args.gen_len, seed).map(|r| {
                    ttfts.extend(r.ttft.iter().copied());
                    r.out_tokens as f64 / r.wall
                })
            })
            .collect::<llmrt::Result<Vec<_>>>()?;
        report(format!("concurrent{c}_out"), samples, &mut result);
        let (p50, p99) = (percentile(ttfts.clone(), 0.5), percentile(ttfts, 0.99));
        if !args.json {
            eprintln!("{:>16}  TTFT p50 {p50:.2} s, p99 {p99:.2} s", "");
        }
        result.insert(format!("concurrent{c}_ttft_p50_s"), json!(p50));
        result.insert(format!("concurrent{c}_ttft_p99_s"), json!(p99));
    }
    result.insert("peak_rss_bytes".into(), json!(peak_rss_bytes()));
    if args.json {
        println!("{}", serde_json::Value::Object(result));
    } else {
        eprintln!(
            "load {load_s:.2} s, peak RSS {:.1} MiB",
            peak_rss_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
