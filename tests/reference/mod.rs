//! An independent, naive float64 forward pass of a Llama-family decoder (Llama, Mistral),
//! written from the Hugging Face `transformers` definitions and sharing no code with the
//! crate: it reads `config.json` with serde_json and the weights with the `safetensors` crate,
//! keeps no KV cache (every call recomputes the whole sequence), and runs dense attention
//! under an explicit causal + sliding-window mask.
//!
//! Covered: RMSNorm, rotate-half RoPE with f64 angles (default, `linear` and `llama3`
//! scaling), grouped-query attention, optional q/k/v bias, SiLU-gated MLP, tied or untied head.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// RoPE frequency scaling, as `transformers`' `rope_scaling` types.
#[derive(Clone, Debug, PartialEq)]
pub enum RefRope {
    Default,
    /// `inv_freq / factor`.
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Clone, Debug)]
pub struct RefConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope: RefRope,
    /// Query at position p sees keys at j with `p - w < j <= p`.
    pub sliding_window: Option<usize>,
}

impl RefConfig {
    /// Reads the fields of a Llama/Mistral `config.json`. `sliding_window` is honoured only
    /// for Mistral, as in `transformers` (Llama has no such field).
    pub fn from_json(v: &Value) -> RefConfig {
        let u = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("config: {k}")) as usize;
        let arch = v["architectures"][0].as_str().unwrap();
        let num_heads = u("num_attention_heads");
        let hidden_size = u("hidden_size");
        let head_dim = v["head_dim"]
            .as_u64()
            .map_or(hidden_size / num_heads, |x| x as usize);
        let rope = match v.get("rope_scaling").filter(|s| !s.is_null()) {
            None => RefRope::Default,
            Some(s) => {
                let kind = s["rope_type"].as_str().or(s["type"].as_str()).unwrap();
                let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("rope_scaling: {k}"));
                match kind {
                    "default" => RefRope::Default,
                    "linear" => RefRope::Linear {
                        factor: f("factor"),
                    },
                    "llama3" => RefRope::Llama3 {
                        factor: f("factor"),
                        low_freq_factor: f("low_freq_factor"),
                        high_freq_factor: f("high_freq_factor"),
                        original_max_position_embeddings: f("original_max_position_embeddings"),
                    },
                    other => panic!("reference: rope_scaling {other} not implemented"),
                }
            }
        };
        let sliding_window = if arch == "MistralForCausalLM" {
            v["sliding_window"].as_u64().map(|w| w as usize)
        } else {
            None
        };
        RefConfig {
            vocab_size: u("vocab_size"),
            hidden_size,
            intermediate_size: u("intermediate_size"),
            num_layers: u("num_hidden_layers"),
            num_heads,
            num_kv_heads: v["num_key_value_heads"]
                .as_u64()
                .map_or(num_heads, |x| x as usize),
            head_dim,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10000.0),
            rope,
            sliding_window,
        }
    }

    /// Inverse frequencies, following `transformers`' rope initialisation functions.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f64 / d))
            .collect();
        match self.rope {
            RefRope::Default => base,
            RefRope::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RefRope::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => base
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > old / low_freq_factor {
                        f / factor
                    } else {
                        f
                    };
                    let medium =
                        wavelen >= old / high_freq_factor && wavelen <= old / low_freq_factor;
                    if medium {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect(),
        }
    }
}

/// A dense matrix `[rows, cols]`, row-major (Hugging Face's `[out, in]`).
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    fn matvec(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.cols);
        self.data
            .chunks_exact(self.cols)
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }
    fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

struct Layer {
    input_norm: Vec<f64>,
    q: Mat,
    k: Mat,
    v: Mat,
    q_bias: Option<Vec<f64>>,
    k_bias: Option<Vec<f64>>,
    v_bias: Option<Vec<f64>>,
    o: Mat,
    post_norm: Vec<f64>,
    gate: Mat,
    up: Mat,
    down: Mat,
}

pub struct RefModel {
    pub cfg: RefConfig,
    embed: Mat,
    layers: Vec<Layer>,
    norm: Vec<f64>,
    /// None: tied to the embeddings.
    lm_head: Option<Mat>,
}

/// Every tensor of every `*.safetensors` file in `dir`, as f64.
fn read_tensors(dir: &Path) -> Tensors {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                other => panic!("reference: dtype {other:?} of {name} not handled"),
            };
            assert_eq!(values.len(), view.shape().iter().product::<usize>());
            out.insert(name, (view.shape().to_vec(), values));
        }
    }
    out
}

type Tensors = HashMap<String, (Vec<usize>, Vec<f64>)>;

fn take_opt(t: &mut Tensors, name: &str, shape: &[usize]) -> Option<Vec<f64>> {
    let (s, data) = t.remove(name)?;
    assert_eq!(s, shape, "shape of {name}");
    Some(data)
}

fn take(t: &mut Tensors, name: &str, shape: &[usize]) -> Vec<f64> {
    take_opt(t, name, shape).unwrap_or_else(|| panic!("missing tensor {name}"))
}

fn mat(t: &mut Tensors, name: &str, rows: usize, cols: usize) -> Mat {
    Mat {
        rows,
        cols,
        data: take(t, name, &[rows, cols]),
    }
}

impl RefModel {
    pub fn load(dir: &Path) -> RefModel {
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let cfg = RefConfig::from_json(&serde_json::from_str(&text).unwrap());
        let mut t = read_tensors(dir);
        let (h, hd, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        let (nq, nkv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let embed = mat(&mut t, "model.embed_tokens.weight", cfg.vocab_size, h);
        let mut layers = vec![];
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let t = &mut t;
            layers.push(Layer {
                input_norm: take(t, &format!("{p}.input_layernorm.weight"), &[h]),
                q: mat(t, &format!("{p}.self_attn.q_proj.weight"), nq, h),
                k: mat(t, &format!("{p}.self_attn.k_proj.weight"), nkv, h),
                v: mat(t, &format!("{p}.self_attn.v_proj.weight"), nkv, h),
                q_bias: take_opt(t, &format!("{p}.self_attn.q_proj.bias"), &[nq]),
                k_bias: take_opt(t, &format!("{p}.self_attn.k_proj.bias"), &[nkv]),
                v_bias: take_opt(t, &format!("{p}.self_attn.v_proj.bias"), &[nkv]),
                o: mat(t, &format!("{p}.self_attn.o_proj.weight"), h, nq),
                post_norm: take(t, &format!("{p}.post_attention_layernorm.weight"), &[h]),
                gate: mat(t, &format!("{p}.mlp.gate_proj.weight"), i, h),
                up: mat(t, &format!("{p}.mlp.up_proj.weight"), i, h),
                down: mat(t, &format!("{p}.mlp.down_proj.weight"), h, i),
            });
        }
        let norm = take(&mut t, "model.norm.weight", &[h]);
        let lm_head = take_opt(&mut t, "lm_head.weight", &[cfg.vocab_size, h]).map(|data| Mat {
            rows: cfg.vocab_size,
            cols: h,
            data,
        });
        RefModel {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
        }
    }

    fn rms_norm(&self, x: &[f64], w: &[f64]) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + self.cfg.rms_norm_eps).sqrt();
        x.iter().zip(w).map(|(v, w)| v * r * w).collect()
    }

    /// Rotate-half RoPE on every head of `x` (`[n_heads * head_dim]`) at position `pos`.
    fn rope(&self, x: &mut [f64], pos: usize, inv_freq: &[f64]) {
        let hd = self.cfg.head_dim;
        let half = hd / 2;
        for head in x.chunks_exact_mut(hd) {
            for (i, &f) in inv_freq.iter().enumerate() {
                let (sin, cos) = (pos as f64 * f).sin_cos();
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * cos - x2 * sin;
                head[i + half] = x2 * cos + x1 * sin;
            }
        }
    }

    /// Whether a query at position `p` may attend to a key at position `j`.
    pub fn visible(&self, p: usize, j: usize) -> bool {
        j <= p && self.cfg.sliding_window.is_none_or(|w| p - j < w)
    }

    /// Final hidden states (before the last norm) of every position of `ids`.
    fn hidden(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let (hd, t) = (c.head_dim, ids.len());
        let rep = c.num_heads / c.num_kv_heads;
        let inv_freq = c.inv_freq();
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .map(|&id| self.embed.row(id as usize).to_vec())
            .collect();
        let add = |v: &mut Vec<f64>, b: &Option<Vec<f64>>| {
            if let Some(b) = b {
                v.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
        };
        for layer in &self.layers {
            let mut q = vec![];
            let mut k = vec![];
            let mut v = vec![];
            for (p, xp) in x.iter().enumerate() {
                let h = self.rms_norm(xp, &layer.input_norm);
                let mut qp = layer.q.matvec(&h);
                let mut kp = layer.k.matvec(&h);
                let mut vp = layer.v.matvec(&h);
                add(&mut qp, &layer.q_bias);
                add(&mut kp, &layer.k_bias);
                add(&mut vp, &layer.v_bias);
                self.rope(&mut qp, p, &inv_freq);
                self.rope(&mut kp, p, &inv_freq);
                q.push(qp);
                k.push(kp);
                v.push(vp);
            }
            let scale = 1.0 / (hd as f64).sqrt();
            for p in 0..t {
                let mut attn = vec![0.0; c.num_heads * hd];
                for h in 0..c.num_heads {
                    let kvh = h / rep;
                    let qh = &q[p][h * hd..(h + 1) * hd];
                    // Dense scores over all t keys with the mask as -inf, as an eager
                    // attention with an additive mask does.
                    let scores: Vec<f64> = (0..t)
                        .map(|j| {
                            if self.visible(p, j) {
                                let kh = &k[j][kvh * hd..(kvh + 1) * hd];
                                qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f64>() * scale
                            } else {
                                f64::NEG_INFINITY
                            }
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    let out = &mut attn[h * hd..(h + 1) * hd];
                    for (j, wj) in w.iter().enumerate() {
                        let vh = &v[j][kvh * hd..(kvh + 1) * hd];
                        for (o, vv) in out.iter_mut().zip(vh) {
                            *o += wj / sum * vv;
                        }
                    }
                }
                let o = layer.o.matvec(&attn);
                x[p].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            }
            for xp in x.iter_mut() {
                let h = self.rms_norm(xp, &layer.post_norm);
                let g = layer.gate.matvec(&h);
                let u = layer.up.matvec(&h);
                let a: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = layer.down.matvec(&a);
                xp.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            }
        }
        x
    }

    fn head(&self, hidden: &[f64]) -> Vec<f64> {
        let h = self.rms_norm(hidden, &self.norm);
        self.lm_head.as_ref().unwrap_or(&self.embed).matvec(&h)
    }

    /// Logits at every position: row t is the distribution after `ids[..=t]`.
    pub fn logits(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        self.hidden(ids).iter().map(|h| self.head(h)).collect()
    }

    /// Logits at the last position only.
    pub fn last_logits(&self, ids: &[u32]) -> Vec<f64> {
        self.head(self.hidden(ids).last().unwrap())
    }

    /// `n` greedy tokens, recomputing the whole sequence each step; also each step's
    /// top-1 minus top-2 logit.
    pub fn greedy(&self, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f64>) {
        let mut seq = prompt.to_vec();
        let mut margins = vec![];
        for _ in 0..n {
            let l = self.last_logits(&seq);
            let (best, margin) = argmax_margin(&l);
            seq.push(best as u32);
            margins.push(margin);
        }
        (seq[prompt.len()..].to_vec(), margins)
    }
}

/// Index of the largest value (first on ties) and its lead over the runner-up.
pub fn argmax_margin(l: &[f64]) -> (usize, f64) {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    let second = l
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &v)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    (best, l[best] - second)
}
