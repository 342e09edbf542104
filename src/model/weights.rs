//! The decoder's weights, gathered by name from a `TensorStore` and shape-checked once.

use super::TensorStore;
use crate::config::ModelConfig;
use crate::tensor::{DType, Weight};

pub struct DenseMlp {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

pub struct MoeWeights {
    /// Router: `[num_experts, hidden]`.
    pub router: Weight,
    pub experts: Vec<DenseMlp>,
    /// Qwen2-MoE: the always-on expert and its `[1, hidden]` sigmoid gate.
    pub shared: Option<(DenseMlp, Weight)>,
}

pub enum Ffn {
    Dense(DenseMlp),
    Moe(MoeWeights),
}

pub struct LayerWeights {
    pub attn_norm: Weight,
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    pub q_bias: Option<Weight>,
    pub k_bias: Option<Weight>,
    pub v_bias: Option<Weight>,
    pub q_norm: Option<Weight>,
    pub k_norm: Option<Weight>,
    pub ffn_norm: Weight,
    pub ffn: Ffn,
}

pub struct ModelWeights {
    pub embed: Weight,
    pub layers: Vec<LayerWeights>,
    pub norm: Weight,
    /// The output projection; the embedding table itself when embeddings are tied.
    pub lm_head: Weight,
}

struct Getter<'a> {
    store: &'a TensorStore,
}

impl Getter<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Weight, String> {
        let w = self
            .store
            .get(name)
            .ok_or_else(|| format!("missing tensor `{name}`"))?;
        let ok = w.shape == shape || (shape.len() == 1 && w.numel() == shape[0] && w.rows() == 1);
        if !ok {
            return Err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                w.shape
            ));
        }
        // Vectors (norm weights, biases) are tiny: keep them as f32 so kernels read them directly.
        if shape.len() == 1 && w.dtype != DType::F32 {
            return Ok(Weight::from_f32(vec![shape[0]], &w.to_f32_vec()));
        }
        Ok(w.clone())
    }

    fn opt(&self, name: &str, shape: &[usize], wanted: bool) -> Result<Option<Weight>, String> {
        if wanted {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    fn mlp(
        &self,
        prefix: &str,
        names: [&str; 3],
        hidden: usize,
        inter: usize,
    ) -> Result<DenseMlp, String> {
        Ok(DenseMlp {
            gate: self.get(&format!("{prefix}.{}.weight", names[0]), &[inter, hidden])?,
            up: self.get(&format!("{prefix}.{}.weight", names[1]), &[inter, hidden])?,
            down: self.get(&format!("{prefix}.{}.weight", names[2]), &[hidden, inter])?,
        })
    }
}

const HF_MLP: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];
const MIXTRAL_EXPERT: [&str; 3] = ["w1", "w3", "w2"];

impl ModelWeights {
    /// Gathers every tensor the config needs, checking names and shapes.
    pub fn from_store(c: &ModelConfig, store: &TensorStore) -> Result<Self, String> {
        let g = Getter { store };
        let (h, v) = (c.hidden_size, c.vocab_size);
        let embed = g.get("model.embed_tokens.weight", &[v, h])?;
        let lm_head = match store.get("lm_head.weight") {
            Some(_) if !c.tie_word_embeddings => g.get("lm_head.weight", &[v, h])?,
            Some(_) | None if c.tie_word_embeddings => embed.clone(),
            _ => return Err("missing tensor `lm_head.weight` (embeddings are not tied)".into()),
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| layer(&g, c, i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ModelWeights {
            embed,
            layers,
            norm: g.get("model.norm.weight", &[h])?,
            lm_head,
        })
    }
}

fn layer(g: &Getter, c: &ModelConfig, i: usize) -> Result<LayerWeights, String> {
    let p = format!("model.layers.{i}");
    let (h, q, kv, hd) = (c.hidden_size, c.q_size(), c.kv_size(), c.head_dim);
    let a = format!("{p}.self_attn");
    let ffn = match &c.moe {
        Some(m) if m.is_sparse_layer(i) => {
            let mixtral = c.architecture == "MixtralForCausalLM";
            let (moe_p, router, names) = if mixtral {
                (format!("{p}.block_sparse_moe"), "gate", MIXTRAL_EXPERT)
            } else {
                (format!("{p}.mlp"), "gate", HF_MLP)
            };
            let experts = (0..m.num_experts)
                .map(|e| {
                    g.mlp(
                        &format!("{moe_p}.experts.{e}"),
                        names,
                        h,
                        m.moe_intermediate_size,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            let shared = match m.shared_expert_intermediate_size {
                Some(si) => Some((
                    g.mlp(&format!("{moe_p}.shared_expert"), HF_MLP, h, si)?,
                    g.get(&format!("{moe_p}.shared_expert_gate.weight"), &[1, h])?,
                )),
                None => None,
            };
            Ffn::Moe(MoeWeights {
                router: g.get(&format!("{moe_p}.{router}.weight"), &[m.num_experts, h])?,
                experts,
                shared,
            })
        }
        _ => Ffn::Dense(g.mlp(&format!("{p}.mlp"), HF_MLP, h, c.intermediate_size)?),
    };
    Ok(LayerWeights {
        attn_norm: g.get(&format!("{p}.input_layernorm.weight"), &[h])?,
        q: g.get(&format!("{a}.q_proj.weight"), &[q, h])?,
        k: g.get(&format!("{a}.k_proj.weight"), &[kv, h])?,
        v: g.get(&format!("{a}.v_proj.weight"), &[kv, h])?,
        o: g.get(&format!("{a}.o_proj.weight"), &[h, q])?,
        q_bias: g.opt(&format!("{a}.q_proj.bias"), &[q], c.attention_bias)?,
        k_bias: g.opt(&format!("{a}.k_proj.bias"), &[kv], c.attention_bias)?,
        v_bias: g.opt(&format!("{a}.v_proj.bias"), &[kv], c.attention_bias)?,
        q_norm: g.opt(&format!("{a}.q_norm.weight"), &[hd], c.qk_norm)?,
        k_norm: g.opt(&format!("{a}.k_norm.weight"), &[hd], c.qk_norm)?,
        ffn_norm: g.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
        ffn,
    })
}
