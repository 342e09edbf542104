//! Model hyper-parameters, the same whether they come from `config.json` or GGUF metadata.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1: per-frequency interpolation between high and low frequency bands.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Mixture-of-experts feed-forward settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    /// Renormalise the top-k routing weights to sum to one (Mixtral: always; Qwen2-MoE: `norm_topk_prob`).
    pub norm_topk_prob: bool,
    pub moe_intermediate_size: usize,
    /// Qwen2-MoE's always-on expert, gated by a sigmoid of `shared_expert_gate`.
    pub shared_expert_intermediate_size: Option<usize>,
    /// Layer `i` is sparse when `(i + 1) % decoder_sparse_step == 0` and `i` is not in `mlp_only_layers`.
    pub decoder_sparse_step: usize,
    pub mlp_only_layers: Vec<usize>,
}

impl MoeConfig {
    pub fn is_sparse_layer(&self, layer: usize) -> bool {
        self.decoder_sparse_step > 0
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
            && !self.mlp_only_layers.contains(&layer)
    }
}

/// The hyper-parameters of a decoder-only model in Hugging Face's terms.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// HF class name, e.g. `LlamaForCausalLM`.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2, Qwen2-MoE).
    pub attention_bias: bool,
    /// RMSNorm per head on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub sliding_window: Option<usize>,
    pub moe: Option<MoeConfig>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Architectures this build runs (HF class names).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
];

/// Upper bounds that keep a hostile config from asking for absurd allocations.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;
const MAX_VOCAB: usize = 1 << 24;

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path, text: &str) -> Result<Self> {
        let bad = |reason: String| Error::invalid_model(path, reason);
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("config.json is not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("config.json is not an object".into()))?;
        let architecture = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("config.json has no `architectures` entry".into()))?
            .to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(Error::Unsupported(format!(
                "architecture `{architecture}` (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let usize_field = |name: &str| -> Result<usize> {
            obj.get(name)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| {
                    bad(format!(
                        "config.json: `{name}` missing or not a non-negative integer"
                    ))
                })
        };
        let opt_usize = |name: &str| obj.get(name).and_then(|x| x.as_u64()).map(|x| x as usize);
        let f64_field =
            |name: &str, default: f64| obj.get(name).and_then(|x| x.as_f64()).unwrap_or(default);
        let bool_field =
            |name: &str, default: bool| obj.get(name).and_then(|x| x.as_bool()).unwrap_or(default);

        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = opt_usize("num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = match opt_usize("head_dim") {
            Some(d) => d,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let is_qwen2_family = matches!(
            architecture.as_str(),
            "Qwen2ForCausalLM" | "Qwen2MoeForCausalLM"
        );
        let moe = match architecture.as_str() {
            "MixtralForCausalLM" => Some(MoeConfig {
                num_experts: usize_field("num_local_experts")?,
                num_experts_per_tok: usize_field("num_experts_per_tok")?,
                norm_topk_prob: true,
                moe_intermediate_size: usize_field("intermediate_size")?,
                shared_expert_intermediate_size: None,
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
            }),
            "Qwen2MoeForCausalLM" => Some(MoeConfig {
                num_experts: usize_field("num_experts")?,
                num_experts_per_tok: usize_field("num_experts_per_tok")?,
                norm_topk_prob: bool_field("norm_topk_prob", false),
                moe_intermediate_size: usize_field("moe_intermediate_size")?,
                shared_expert_intermediate_size: opt_usize("shared_expert_intermediate_size")
                    .filter(|&n| n > 0),
                decoder_sparse_step: opt_usize("decoder_sparse_step").unwrap_or(1),
                mlp_only_layers: obj
                    .get("mlp_only_layers")
                    .and_then(|x| x.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_u64())
                            .map(|x| x as usize)
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            _ => None,
        };
        let sliding_window = if bool_field("use_sliding_window", !is_qwen2_family) {
            opt_usize("sliding_window")
        } else {
            None
        };
        let cfg = ModelConfig {
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f64_field("rms_norm_eps", 1e-6) as f32,
            rope_theta: f64_field("rope_theta", 10000.0),
            rope_scaling: parse_rope_scaling(obj.get("rope_scaling")).map_err(bad)?,
            max_position_embeddings: opt_usize("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: bool_field("tie_word_embeddings", false),
            attention_bias: is_qwen2_family || bool_field("attention_bias", false),
            qk_norm: architecture == "Qwen3ForCausalLM",
            sliding_window,
            moe,
            bos_token_id: obj
                .get("bos_token_id")
                .and_then(|x| x.as_u64())
                .map(|x| x as u32),
            eos_token_ids: token_id_list(obj.get("eos_token_id")),
            architecture,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// Checks the relations between dimensions that the decoder relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let dims = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, 4096),
            ("num_key_value_heads", self.num_key_value_heads, 4096),
            ("head_dim", self.head_dim, 4096),
        ];
        for (name, value, max) in dims {
            if value == 0 || value > max {
                return Err(format!("`{name}` = {value} is out of range 1..={max}"));
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err("rms_norm_eps must be a non-negative number".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err("rope_theta must be positive".into());
        }
        if let Some(moe) = &self.moe {
            if moe.num_experts == 0
                || moe.num_experts > 1024
                || moe.num_experts_per_tok == 0
                || moe.num_experts_per_tok > moe.num_experts
            {
                return Err(format!(
                    "MoE: {} experts with {} per token is not valid",
                    moe.num_experts, moe.num_experts_per_tok
                ));
            }
        }
        Ok(())
    }

    pub fn q_size(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_size(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

fn token_id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

fn parse_rope_scaling(v: Option<&Value>) -> std::result::Result<Option<RopeScaling>, String> {
    let Some(obj) = v.and_then(|v| v.as_object()) else {
        return Ok(None);
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    let num = |name: &str| {
        obj.get(name)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("rope_scaling `{kind}` needs `{name}`"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        })),
        other => Err(format!("rope_scaling type `{other}` is not supported")),
    }
}

/// Engine options, with vLLM's names.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Hugging Face model folder or GGUF file.
    pub model: std::path::PathBuf,
    /// Requests running at once at most.
    pub max_num_seqs: usize,
    /// Tokens per forward pass at most (also sizes the activation workspace).
    pub max_num_batched_tokens: usize,
    /// Longest sequence (prompt + output); None: the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    pub block_size: usize,
    /// KV blocks in the pool; None: from `kv_cache_memory_bytes`.
    pub num_kv_blocks: Option<usize>,
    /// KV memory budget in bytes when `num_kv_blocks` is not given.
    pub kv_cache_memory_bytes: usize,
    pub enable_prefix_caching: bool,
    pub enable_chunked_prefill: bool,
    /// Prompt tokens one request may take per step (0: only the step budget limits it).
    pub long_prefill_token_threshold: usize,
    /// Forward steps per scheduling decision for decode-only batches.
    pub num_scheduler_steps: usize,
    /// `fcfs` or `priority`.
    pub scheduling_policy: crate::sched::SchedulePolicy,
    /// Hash of prefix-cache blocks: SHA-256 (default) or xxh3-128.
    pub prefix_caching_hash_algo: crate::kv::block_hash::HashAlgo,
    /// Worker threads (0: one per core).
    pub num_threads: usize,
    /// Seed of requests that carry none.
    pub seed: u64,
    /// Quantized weights: 8-bit activations with integer dot products (fast, as llama.cpp),
    /// or exact f32 (`exact`: matches transformers on the dequantized weights).
    pub matmul_precision: crate::backend::cpu::MatmulPrecision,
    /// Element type of the KV cache: `auto` (f16 with `int8` matmuls on quantized or
    /// 16-bit weights, else f32), `f16` or `f32`.
    pub kv_cache_dtype: KvCacheDtype,
}

/// The `kv_cache_dtype` option (vLLM's name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvCacheDtype {
    /// f16 where the fast `int8` matmul path is in effect (int8 precision and quantized or
    /// 16-bit weights: its own error is far above f16 rounding); f32 otherwise (`exact`,
    /// whose outputs are held to an f32 reference bit for bit, and f32 weights).
    #[default]
    Auto,
    F16,
    F32,
}

impl KvCacheDtype {
    /// The stored element type under `precision`, for a model whose attention weights
    /// run on the fast path (`quantized`: not f32) or not.
    pub fn resolve(
        self,
        precision: crate::backend::cpu::MatmulPrecision,
        quantized: bool,
    ) -> crate::kv::KvDtype {
        use crate::backend::cpu::MatmulPrecision;
        use crate::kv::KvDtype;
        match (self, precision) {
            (KvCacheDtype::F16, _) => KvDtype::F16,
            (KvCacheDtype::F32, _) => KvDtype::F32,
            (KvCacheDtype::Auto, MatmulPrecision::Int8Activations) if quantized => KvDtype::F16,
            (KvCacheDtype::Auto, _) => KvDtype::F32,
        }
    }
}

impl std::str::FromStr for KvCacheDtype {
    type Err = Error;

    /// `auto`, `f16` or `f32`; anything else is an error naming the option.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(KvCacheDtype::Auto),
            "f16" => Ok(KvCacheDtype::F16),
            "f32" => Ok(KvCacheDtype::F32),
            other => Err(Error::InvalidRequest(format!(
                "`kv_cache_dtype` must be \"auto\", \"f16\" or \"f32\", got \"{other}\""
            ))),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            model: crate::default_model_path(),
            max_num_seqs: 256,
            max_num_batched_tokens: 512,
            max_model_len: None,
            block_size: 16,
            num_kv_blocks: None,
            kv_cache_memory_bytes: 512 << 20,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            long_prefill_token_threshold: 0,
            num_scheduler_steps: 1,
            scheduling_policy: crate::sched::SchedulePolicy::Fcfs,
            prefix_caching_hash_algo: crate::kv::block_hash::HashAlgo::Sha256,
            num_threads: 0,
            seed: 0,
            matmul_precision: crate::backend::cpu::MatmulPrecision::Int8Activations,
            kv_cache_dtype: KvCacheDtype::Auto,
        }
    }
}

impl EngineConfig {
    /// Checks the options that do not depend on the model.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("block_size", self.block_size),
            ("num_scheduler_steps", self.num_scheduler_steps),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::InvalidRequest(format!("{name} must be positive")));
            }
        }
        if self.block_size > 4096 {
            return Err(Error::InvalidRequest(format!(
                "block_size {} is too large",
                self.block_size
            )));
        }
        if self.num_kv_blocks == Some(0) {
            return Err(Error::InvalidRequest(
                "num_kv_blocks must be positive".into(),
            ));
        }
        if self.max_model_len == Some(0) {
            return Err(Error::InvalidRequest(
                "max_model_len must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl EngineConfig {
    /// Options from a JSON object with vLLM's names (`model` required); unknown keys and
    /// wrong types are errors naming the key.
    pub fn from_json(v: &Value) -> Result<EngineConfig> {
        let bad = |m: String| Error::InvalidRequest(m);
        let obj = v
            .as_object()
            .ok_or_else(|| bad("the engine configuration must be a JSON object".into()))?;
        let mut c = EngineConfig::default();
        let mut has_model = false;
        for (k, val) in obj {
            let uint = || {
                val.as_u64()
                    .map(|x| x.min(usize::MAX as u64) as usize)
                    .ok_or_else(|| bad(format!("`{k}` must be a non-negative integer")))
            };
            let boolean = || {
                val.as_bool()
                    .ok_or_else(|| bad(format!("`{k}` must be true or false")))
            };
            let string = || {
                val.as_str()
                    .ok_or_else(|| bad(format!("`{k}` must be a string")))
            };
            match k.as_str() {
                "model" => {
                    c.model = string()?.into();
                    has_model = true;
                }
                "max_num_seqs" => c.max_num_seqs = uint()?,
                "max_num_batched_tokens" => c.max_num_batched_tokens = uint()?,
                "max_model_len" => c.max_model_len = Some(uint()?),
                "block_size" => c.block_size = uint()?,
                "num_kv_blocks" => c.num_kv_blocks = Some(uint()?),
                "kv_cache_memory_bytes" => c.kv_cache_memory_bytes = uint()?,
                "enable_prefix_caching" => c.enable_prefix_caching = boolean()?,
                "enable_chunked_prefill" => c.enable_chunked_prefill = boolean()?,
                "long_prefill_token_threshold" => c.long_prefill_token_threshold = uint()?,
                "num_scheduler_steps" => c.num_scheduler_steps = uint()?,
                "num_threads" => c.num_threads = uint()?,
                "seed" => {
                    c.seed = val
                        .as_u64()
                        .ok_or_else(|| bad("`seed` must be a non-negative integer".into()))?
                }
                "scheduling_policy" => {
                    c.scheduling_policy = match string()? {
                        "fcfs" => crate::sched::SchedulePolicy::Fcfs,
                        "priority" => crate::sched::SchedulePolicy::Priority,
                        other => {
                            return Err(bad(format!(
                            "`scheduling_policy` must be \"fcfs\" or \"priority\", got \"{other}\""
                        )))
                        }
                    }
                }
                "matmul_precision" => {
                    c.matmul_precision = match string()? {
                        "exact" => crate::backend::cpu::MatmulPrecision::Exact,
                        "int8" => crate::backend::cpu::MatmulPrecision::Int8Activations,
                        other => {
                            return Err(bad(format!(
                                "`matmul_precision` must be \"exact\" or \"int8\", got \"{other}\""
                            )))
                        }
                    }
                }
                "kv_cache_dtype" => c.kv_cache_dtype = string()?.parse()?,
                "prefix_caching_hash_algo" => {
                    c.prefix_caching_hash_algo = string()?.parse().map_err(|_| {
                        bad("`prefix_caching_hash_algo` must be \"sha256\" or \"xxhash\"".into())
                    })?
                }
                other => return Err(bad(format!("unknown engine option `{other}`"))),
            }
        }
        if !has_model {
            return Err(bad(
                "the engine configuration needs `model` (a model folder or GGUF file)".into(),
            ));
        }
        c.validate()?;
        Ok(c)
    }
}
