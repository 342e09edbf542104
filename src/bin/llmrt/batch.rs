//! `llmrt batch`: every request of a JSONL file submitted at once to the engine.

use clap::Args;
use llmrt::backend::cpu::MatmulPrecision;
use llmrt::config::EngineConfig;
use llmrt::engine::Engine;
use llmrt::sched::SchedulePolicy;
use llmrt::{CoreRequest, Event, SamplingParams};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Engine options as flags, with vLLM's names.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// Hugging Face model folder or GGUF file (default: the cached SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    #[arg(long)]
    pub max_model_len: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    #[arg(long)]
    pub num_kv_blocks: Option<usize>,
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long)]
    pub no_enable_prefix_caching: bool,
    #[arg(long, overrides_with = "no_enable_chunked_prefill")]
    pub enable_chunked_prefill: bool,
    #[arg(long)]
    pub no_enable_chunked_prefill: bool,
    #[arg(long, default_value_t = 0)]
    pub long_prefill_token_threshold: usize,
    #[arg(long, default_value_t = 1)]
    pub num_scheduler_steps: usize,
    /// `fcfs` or `priority`.
    #[arg(long, default_value = "fcfs")]
    pub scheduling_policy: String,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Quantized weights: `int8` activations (fast) or `exact` f32.
    #[arg(long, default_value = "int8")]
    pub matmul_precision: String,
    /// KV cache element type: `auto` (f16 with int8 matmuls on quantized weights, else
    /// f32), `f16`, `f32`.
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: String,
}

impl EngineArgs {
    pub fn to_config(&self) -> llmrt::Result<EngineConfig> {
        let scheduling_policy = match self.scheduling_policy.as_str() {
            "fcfs" => SchedulePolicy::Fcfs,
            "priority" => SchedulePolicy::Priority,
            other => {
                return Err(llmrt::Error::InvalidRequest(format!(
                    "--scheduling-policy must be fcfs or priority, got `{other}`"
                )))
            }
        };
        let matmul_precision = match self.matmul_precision.as_str() {
            "int8" => MatmulPrecision::Int8Activations,
            "exact" => MatmulPrecision::Exact,
            other => {
                return Err(llmrt::Error::InvalidRequest(format!(
                    "--matmul-precision must be int8 or exact, got `{other}`"
                )))
            }
        };
        Ok(EngineConfig {
            matmul_precision,
            kv_cache_dtype: self.kv_cache_dtype.parse()?,
            model: self.model.clone().unwrap_or_else(llmrt::default_model_path),
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            block_size: self.block_size,
            num_kv_blocks: self.num_kv_blocks,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            enable_chunked_prefill: !self.no_enable_chunked_prefill,
            long_prefill_token_threshold: self.long_prefill_token_threshold,
            num_scheduler_steps: self.num_scheduler_steps,
            scheduling_policy,
            num_threads: self.threads,
            seed: self.seed,
            ..Default::default()
        })
    }
}

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// JSONL: {"id": "...", "prompt": "..." | "prompt_token_ids": [...], "sampling": {...}} per line.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL results, one line per request in input order.
    #[arg(long)]
    pub output: PathBuf,
}

fn parse_line(engine: &Engine, line: &str) -> llmrt::Result<(Value, CoreRequest)> {
    let bad = |m: String| llmrt::Error::InvalidRequest(m);
    let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("a line must be a JSON object".into()))?;
    for k in obj.keys() {
        if !["id", "prompt", "prompt_token_ids", "sampling", "priority"].contains(&k.as_str()) {
            return Err(bad(format!("unknown field `{k}`")));
        }
    }
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    let prompt_token_ids = match (obj.get("prompt"), obj.get("prompt_token_ids")) {
        (Some(Value::String(text)), None) => engine.tokenizer().encode(text, true)?,
        (None, Some(Value::Array(ids))) => ids
            .iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&x| x <= u32::MAX as u64)
                    .map(|x| x as u32)
                    .ok_or_else(|| bad("`prompt_token_ids` must be token ids".into()))
            })
            .collect::<llmrt::Result<_>>()?,
        _ => {
            return Err(bad(
                "give exactly one of `prompt` (a string) or `prompt_token_ids` (a list)".into(),
            ))
        }
    };
    let params = SamplingParams::from_json(obj.get("sampling").unwrap_or(&Value::Null))?;
    let priority = obj.get("priority").and_then(|p| p.as_i64()).unwrap_or(0) as i32;
    Ok((
        id,
        CoreRequest {
            prompt_token_ids,
            params,
            priority,
            ..Default::default()
        },
    ))
}

/// A submitted line: its engine request id, prompt and wants, or why it was refused.
type Submitted = Result<(u64, Vec<u32>, Wants), String>;

pub fn run(args: BatchArgs) -> llmrt::Result<()> {
    let text =
        std::fs::read_to_string(&args.input).map_err(|e| llmrt::Error::io(&args.input, e))?;
    let engine = Engine::new(args.engine.to_config()?)?;
    // Submit everything first; a bad line becomes an error line in the output.
    let mut rows: Vec<(Value, Submitted)> = vec![];
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let submitted = parse_line(&engine, line).and_then(|(id, req)| {
            let prompt = req.prompt_token_ids.clone();
            let p = &req.params;
            let wants = Wants {
                logprobs: p.logprobs.is_some(),
                prompt_logprobs: p.prompt_logprobs.is_some(),
                sequences: p.n > 1 || p.is_beam_search(),
            };
            Ok((id, engine.add_request(req)?, prompt, wants))
        });
        rows.push(match submitted {
            Ok((id, rid, prompt, wants)) => (id, Ok((rid, prompt, wants))),
            Err(e) => (json!(null), Err(format!("line {}: {e}", n + 1))),
        });
    }
    let mut open = rows.iter().filter(|r| r.1.is_ok()).count();
    let mut events: HashMap<u64, Vec<Event>> = HashMap::new();
    while open > 0 {
        for e in engine.poll(1024, Duration::from_millis(100)) {
            open -= e.is_final() as usize;
            events.entry(e.request_id).or_default().push(e);
        }
    }
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.output).map_err(|e| llmrt::Error::io(&args.output, e))?,
    );
    for (id, r) in rows {
        let line = match r {
            Err(msg) => json!({"id": id, "error": msg}),
            Ok((rid, prompt, wants)) => result_json(id, &prompt, wants, &events[&rid]),
        };
        writeln!(out, "{line}").map_err(|e| llmrt::Error::io(&args.output, e))?;
    }
    out.flush().map_err(|e| llmrt::Error::io(&args.output, e))?;
    eprintln!("{}", engine.metrics().to_json());
    Ok(())
}

/// What a line asked to get back.
#[derive(Clone, Copy)]
struct Wants {
    logprobs: bool,
    prompt_logprobs: bool,
    /// n > 1 or beam search: one object per sequence under `outputs`.
    sequences: bool,
}

fn result_json(id: Value, prompt: &[u32], wants: Wants, events: &[Event]) -> Value {
    let seqs = crate::outjson::sequences_from_events(events);
    let last = events.last().expect("a final event");
    let usage = last.usage.unwrap_or_default();
    let first = crate::outjson::sequence_json(&seqs[0], wants.logprobs);
    let mut v = json!({
        "id": id,
        "prompt_token_ids": prompt,
        "token_ids": first["token_ids"],
        "text": first["text"],
        "finish_reason": first["finish_reason"],
        "stop_reason": first["stop_reason"],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cached_prompt_tokens": usage.cached_prompt_tokens,
        },
    });
    if wants.logprobs {
        v["logprobs"] = first["logprobs"].clone();
        v["cumulative_logprob"] = first["cumulative_logprob"].clone();
    }
    if wants.prompt_logprobs {
        let list: Vec<_> = events
            .iter()
            .flat_map(|e| e.prompt_logprobs.clone())
            .collect();
        v["prompt_logprobs"] = crate::outjson::prompt_logprobs_json(&list);
    }
    if wants.sequences {
        v["outputs"] = seqs
            .iter()
            .map(|s| crate::outjson::sequence_json(s, wants.logprobs))
            .collect();
    }
    v
}
