//! What differs between the supported architectures, as data the one decoder reads.

use crate::config::{ModelConfig, RopeScaling};

/// How router logits become expert weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeSpec {
    pub num_experts: usize,
    pub top_k: usize,
    /// Softmax over all experts, take the top-k, then (optionally) renormalise them to sum
    /// to one. Mixtral: renormalise (equivalent to softmax over the top-k logits);
    /// Qwen2-MoE: `norm_topk_prob`.
    pub renormalize: bool,
    /// Qwen2-MoE's shared expert, added with weight sigmoid(shared_expert_gate · x).
    pub shared_expert: bool,
}

/// The per-architecture switches of the decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchSpec {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    pub sliding_window: Option<usize>,
    pub moe: Option<MoeSpec>,
}

impl ArchSpec {
    pub fn from_config(c: &ModelConfig) -> Self {
        ArchSpec {
            num_layers: c.num_hidden_layers,
            hidden_size: c.hidden_size,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            rms_norm_eps: c.rms_norm_eps,
            qkv_bias: c.attention_bias,
            qk_norm: c.qk_norm,
            rope_theta: c.rope_theta,
            rope_scaling: c.rope_scaling.clone(),
            tie_word_embeddings: c.tie_word_embeddings,
            sliding_window: c.sliding_window,
            moe: c.moe.as_ref().map(|m| MoeSpec {
                num_experts: m.num_experts,
                top_k: m.num_experts_per_tok,
                renormalize: m.norm_topk_prob,
                shared_expert: m.shared_expert_intermediate_size.is_some(),
            }),
        }
    }

    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Inverse frequencies of RoPE (rotate-half form), with the configured scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            }) => {
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}
