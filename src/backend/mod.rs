//! The narrow interface between the decoder and the hardware.
//!
//! The decoder calls only these ops. Every op handles a flat batch of tokens from many
//! sequences; the row counts are passed explicitly so that buffers sized once for the
//! largest batch are reused every step (no allocation in the step loop).

pub mod cpu;

use crate::kv::{KvCache, KvLayer};
use crate::model::arch::MoeSpec;
use crate::model::weights::MoeWeights;
use crate::tensor::Weight;

/// Per-sequence layout of one step's tokens, for attention over the paged KV cache.
pub struct AttnMeta<'a> {
    /// `S + 1` offsets: the query rows of sequence `s` are `query_start_loc[s]..query_start_loc[s+1]`.
    pub query_start_loc: &'a [u32],
    /// Context length of each sequence after this step (cached tokens + this step's tokens).
    pub seq_lens: &'a [u32],
    /// Block ids, `max_blocks_per_seq` per sequence, flattened.
    pub block_tables: &'a [u32],
    pub max_blocks_per_seq: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Attend only to the last `w` positions (Mistral-style sliding window).
    pub sliding_window: Option<usize>,
}

/// cos/sin of RoPE, rotate-half form, for positions `0..max_positions`.
pub struct RopeTable {
    pub half_dim: usize,
    pub max_positions: usize,
    /// `[max_positions][half_dim]` each.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// Builds the table from inverse frequencies, in f64 for exact angles.
    pub fn new(inv_freq: &[f64], max_positions: usize) -> Self {
        let half_dim = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half_dim);
        let mut sin = Vec::with_capacity(max_positions * half_dim);
        for p in 0..max_positions {
            for &f in inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeTable {
            half_dim,
            max_positions,
            cos,
            sin,
        }
    }
}

/// Scratch space the MoE op reuses between steps.
pub struct MoeScratch<B> {
    pub gathered: B,
    pub gate: B,
    pub up: B,
    pub act: B,
    pub expert_out: B,
    pub router_logits: B,
}

pub trait Backend: Send + Sync {
    /// Activation memory.
    type Buf: Send;

    /// Runs `f` (a whole forward pass) where the backend's ops are cheapest to call, e.g.
    /// on its worker pool.
    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R;
    /// A buffer of `len` f32 values.
    fn alloc(&self, len: usize) -> Self::Buf;
    /// `out[t] = table[ids[t]]`.
    fn embed(&self, ids: &[u32], table: &Weight, out: &mut Self::Buf);
    /// `out = rms_norm(x) * w` over `rows` rows of `w.numel()` values.
    fn rms_norm(&self, x: &Self::Buf, rows: usize, w: &Weight, eps: f32, out: &mut Self::Buf);
    /// `residual += x; out = rms_norm(residual) * w`.
    fn add_rms_norm(
        &self,
        x: &Self::Buf,
        residual: &mut Self::Buf,
        rows: usize,
        w: &Weight,
        eps: f32,
        out: &mut Self::Buf,
    );
    /// RMSNorm of each `w.numel()`-sized head in the first `len` values, in place (Qwen3's q/k norm).
    fn head_rms_norm(&self, x: &mut Self::Buf, len: usize, w: &Weight, eps: f32);
    /// `out[rows, w.rows] = x[rows, w.cols] · wᵀ (+ bias)`.
    fn linear(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Weight,
        bias: Option<&Weight>,
        out: &mut Self::Buf,
    );
    /// `linear` for several weights over the same input (q/k/v, gate/up; at most
    /// `cpu::linear::MAX_FUSED`), which a backend may run as one operation.
    fn linear_many(
        &self,
        x: &Self::Buf,
        rows: usize,
        ws: &[(&Weight, Option<&Weight>)],
        outs: &mut [&mut Self::Buf],
    ) {
        for ((w, b), out) in ws.iter().zip(outs.iter_mut()) {
            self.linear(x, rows, w, *b, out);
        }
    }
    /// Rotates q (`num_heads` heads per row) and k (`num_kv_heads`) by each row's position.
    fn rope(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        positions: &[u32],
        num_heads: usize,
        num_kv_heads: usize,
        rope: &RopeTable,
    );
    /// Stores row t of k and v at slot `slots[t]` of the layer's cache.
    fn write_kv(&self, k: &Self::Buf, v: &Self::Buf, slots: &[u32], cache: &mut KvLayer);
    /// Causal attention of each sequence's query rows over its cached context.
    fn paged_attention(&self, q: &Self::Buf, cache: &KvLayer, meta: &AttnMeta, out: &mut Self::Buf);
    /// `acc += x` over the first `n` values.
    fn add(&self, x: &Self::Buf, acc: &mut Self::Buf, n: usize);
    /// `out = silu(gate) * up` over `n` values.
    fn silu_mul(&self, gate: &Self::Buf, up: &Self::Buf, n: usize, out: &mut Self::Buf);
    /// Mixture-of-experts feed-forward of `rows` rows.
    fn moe(
        &self,
        x: &Self::Buf,
        rows: usize,
        experts: &MoeWeights,
        spec: &MoeSpec,
        scratch: &mut MoeScratch<Self::Buf>,
        out: &mut Self::Buf,
    );
    /// Copies whole blocks `src -> dst` in every layer (copy-on-write of shared blocks).
    fn copy_blocks(&self, cache: &mut KvCache, pairs: &[(u32, u32)]);
    /// Final norm and output projection for the listed rows; `out` is `[rows.len(), vocab]`.
    #[allow(clippy::too_many_arguments)]
    fn logits(
        &self,
        hidden: &Self::Buf,
        rows: &[u32],
        norm: &Weight,
        eps: f32,
        head: &Weight,
        scratch: &mut Self::Buf,
        out: &mut [f32],
    );
}
