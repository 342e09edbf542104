//! The `llmrt` command-line tool.

mod batch;
mod bench;
mod outjson;

use clap::{Args, Parser, Subcommand, ValueEnum};
use llmrt::output::IncrementalDetokenizer;
use llmrt::{EngineConfig, GenerateRequest, Llm, SamplingParams};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "llmrt", version, about = "LLM inference engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of one prompt, streaming the text as it is produced.
    Generate(GenerateArgs),
    /// Run every request of a JSONL file through the engine at once (continuous batching).
    Batch(batch::BatchArgs),
    /// Measure prompt processing, generation and concurrent serving throughput.
    Bench(bench::BenchArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Args)]
struct GenerateArgs {
    /// Hugging Face model folder or GGUF file (default: the cached SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text.
    #[arg(long, conflicts_with = "prompt_token_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, instead of --prompt.
    #[arg(long, value_delimiter = ',')]
    prompt_token_ids: Option<Vec<u32>>,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// -1 disables.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    top_k: i32,
    #[arg(long)]
    seed: Option<u64>,
    /// Keep generating after end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Return the top K logprobs of every generated token (-1: the whole vocabulary;
    /// shown with --output json).
    #[arg(long, allow_negative_numbers = true)]
    logprobs: Option<i32>,
    /// Return the top K logprobs of every prompt token after the first.
    #[arg(long, allow_negative_numbers = true)]
    prompt_logprobs: Option<i32>,
    /// raw_logprobs, raw_logits, processed_logprobs or processed_logits.
    #[arg(long, default_value = "raw_logprobs")]
    logprobs_mode: String,
    /// Sequences to return.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Sequences to generate; the n with the highest cumulative logprob are returned.
    #[arg(long)]
    best_of: Option<usize>,
    /// Beam search with this many beams (returns the n best).
    #[arg(long, default_value_t = 0)]
    beam_width: usize,
    /// Beam score = cumulative logprob / length^length_penalty.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f32,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long)]
    max_model_len: Option<usize>,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    #[arg(long, default_value_t = 512)]
    max_num_batched_tokens: usize,
    /// Quantized weights: `int8` activations (fast) or `exact` f32 (matches transformers).
    #[arg(long, value_enum, default_value_t = Precision::Int8)]
    matmul_precision: Precision,
    /// KV cache element type: `auto` (f16 with int8 matmuls on quantized weights, else
    /// f32), `f16`, `f32`.
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Precision {
    Int8,
    Exact,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(args),
        Command::Batch(args) => batch::run(args),
        Command::Bench(args) => bench::run_bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn prompt_ids(llm: &Llm, args: &GenerateArgs) -> llmrt::Result<Vec<u32>> {
    if let Some(ids) = &args.prompt_token_ids {
        return Ok(ids.clone());
    }
    let text = args.prompt.as_deref().ok_or_else(|| {
        llmrt::Error::InvalidRequest("give --prompt or --prompt-token-ids".into())
    })?;
    if !args.chat {
        return llm.tokenizer.encode(text, true);
    }
    let source = llm.chat_template.as_deref().ok_or_else(|| {
        llmrt::Error::InvalidRequest("--chat: the model has no chat template".into())
    })?;
    let template = llmrt::model::chat_template::ChatTemplate::new(
        source,
        llm.tokenizer.bos_token(),
        llm.tokenizer.eos_token(),
    )?;
    let messages = serde_json::json!([{"role": "user", "content": text}]);
    let rendered = template.render(&messages, true, None, None)?;
    llm.tokenizer.encode(&rendered, false)
}

fn generate(args: GenerateArgs) -> llmrt::Result<()> {
    let model = args.model.clone().unwrap_or_else(llmrt::default_model_path);
    let t_load = Instant::now();
    let opts = EngineConfig {
        num_threads: args.threads,
        block_size: args.block_size,
        max_model_len: args.max_model_len,
        max_num_batched_tokens: args.max_num_batched_tokens,
        long_prefill_token_threshold: args.max_num_batched_tokens,
        max_num_seqs: 1,
        matmul_precision: match args.matmul_precision {
            Precision::Int8 => llmrt::backend::cpu::MatmulPrecision::Int8Activations,
            Precision::Exact => llmrt::backend::cpu::MatmulPrecision::Exact,
        },
        kv_cache_dtype: args.kv_cache_dtype.parse()?,
        ..Default::default()
    };
    let mut llm = Llm::load(&model, opts)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let ids = prompt_ids(&llm, &args)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        max_tokens: args.max_tokens,
        ignore_eos: args.ignore_eos,
        logprobs: args.logprobs,
        prompt_logprobs: args.prompt_logprobs,
        logprobs_mode: llmrt::LogprobsMode::parse(&args.logprobs_mode)?,
        n: args.n,
        best_of: args.best_of,
        beam_width: args.beam_width,
        length_penalty: args.length_penalty,
        ..Default::default()
    };
    let (want_logprobs, want_prompt_logprobs) = (params.logprobs, params.prompt_logprobs);
    let want_sequences = params.n > 1 || params.beam_width > 0;
    let request = GenerateRequest {
        prompt_token_ids: ids.clone(),
        params,
        return_prompt_logits: false,
    };
    let stream = args.output == OutputFormat::Text;
    let mut detok = IncrementalDetokenizer::new(&ids, true);
    let t_start = Instant::now();
    let mut t_first = None;
    let mut stdout = std::io::stdout().lock();
    let tokenizer = llm.tokenizer.clone_handle();
    let out = llm
        .generate(vec![request], |_, tok| {
            t_first.get_or_insert_with(Instant::now);
            if stream {
                let delta = detok.push(&tokenizer, tok);
                let _ = stdout.write_all(delta.as_bytes());
                let _ = stdout.flush();
            }
        })?
        .remove(0);
    let total = t_start.elapsed().as_secs_f64();
    if stream {
        let _ = write!(stdout, "{}", detok.flush(&tokenizer));
        let _ = writeln!(stdout);
    } else {
        let mut json = serde_json::json!({
            "prompt_token_ids": out.prompt_token_ids,
            "token_ids": out.token_ids,
            "text": out.text,
            "finish_reason": out.finish_reason.as_str(),
        });
        if want_logprobs.is_some() {
            json["logprobs"] = outjson::logprobs_json(&out.outputs[0].logprobs);
            json["cumulative_logprob"] = serde_json::json!(out.outputs[0].cumulative_logprob);
        }
        if want_prompt_logprobs.is_some() {
            json["prompt_logprobs"] = outjson::prompt_logprobs_json(&out.prompt_logprobs);
        }
        if want_sequences {
            json["outputs"] = out
                .outputs
                .iter()
                .map(|o| outjson::sequence_json(o, want_logprobs.is_some()))
                .collect();
        }
        let _ = writeln!(stdout, "{json}");
    }
    let prefill = t_first.map_or(total, |t| (t - t_start).as_secs_f64());
    let n_gen = out.token_ids.len().saturating_sub(1);
    eprintln!(
        "load {:.2} s | prompt {} tokens, {:.1} tok/s | generation {} tokens, {:.1} tok/s",
        load_s,
        ids.len(),
        ids.len() as f64 / prefill.max(1e-9),
        out.token_ids.len(),
        n_gen as f64 / (total - prefill).max(1e-9)
    );
    Ok(())
}
