//! The one decoder forward pass, written against `Backend` and configured by `ArchSpec`:
//! embed -> N x (norm, attention, residual, norm, mlp or moe, residual) -> final norm ->
//! lm_head for the rows that need logits.

use super::arch::ArchSpec;
use super::weights::{Ffn, LayerWeights, ModelWeights};
use crate::backend::{AttnMeta, Backend, MoeScratch, RopeTable};
use crate::kv::KvCache;

/// One step's tokens from many sequences, flattened (vLLM's model-runner input).
#[derive(Default, Debug, Clone)]
pub struct ForwardBatch {
    pub token_ids: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// KV slot of each token: `block * block_size + offset`.
    pub slot_mapping: Vec<u32>,
    /// `S + 1` offsets into the token rows.
    pub query_start_loc: Vec<u32>,
    /// Context length of each sequence after this step.
    pub seq_lens: Vec<u32>,
    /// `max_blocks_per_seq` block ids per sequence (unused entries 0).
    pub block_tables: Vec<u32>,
    pub max_blocks_per_seq: usize,
    /// Token rows whose logits are computed, in output order.
    pub logits_rows: Vec<u32>,
}

impl ForwardBatch {
    pub fn new(max_blocks_per_seq: usize) -> Self {
        ForwardBatch {
            max_blocks_per_seq,
            query_start_loc: vec![0],
            ..Default::default()
        }
    }

    /// Empties the batch, keeping its capacity.
    pub fn clear(&mut self) {
        self.token_ids.clear();
        self.positions.clear();
        self.slot_mapping.clear();
        self.query_start_loc.clear();
        self.query_start_loc.push(0);
        self.seq_lens.clear();
        self.block_tables.clear();
        self.logits_rows.clear();
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.seq_lens.len()
    }

    /// Appends `tokens` of one sequence starting at position `start`, whose KV lives in
    /// `block_table` (which must cover `start + tokens.len()` positions).
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        start: usize,
        block_table: &[u32],
        block_size: usize,
    ) {
        debug_assert!(block_table.len() <= self.max_blocks_per_seq);
        for (i, &t) in tokens.iter().enumerate() {
            let pos = start + i;
            self.token_ids.push(t);
            self.positions.push(pos as u32);
            self.slot_mapping.push(
                block_table[pos / block_size] * block_size as u32 + (pos % block_size) as u32,
            );
        }
        self.query_start_loc.push(self.token_ids.len() as u32);
        self.seq_lens.push((start + tokens.len()) as u32);
        self.block_tables.extend_from_slice(block_table);
        let pad = self.max_blocks_per_seq - block_table.len();
        self.block_tables.extend(std::iter::repeat_n(0, pad));
    }
}

/// Activation buffers sized once for the largest batch. The attention block's buffers
/// (q, k, v, its output) and the MLP's (gate, up, their product) are never live at the
/// same time, so the two share three buffers, each sized for the larger user.
struct Workspace<Buf> {
    hidden: Buf,
    residual: Buf,
    normed: Buf,
    /// q, then the MLP's gate projection.
    q_gate: Buf,
    /// The attention output, then the MLP's up projection.
    attn_up: Buf,
    /// k, then silu(gate) * up.
    k_act: Buf,
    v: Buf,
    moe: Option<MoeScratch<Buf>>,
}

pub struct Decoder<B: Backend> {
    pub backend: B,
    pub spec: ArchSpec,
    weights: ModelWeights,
    rope: RopeTable,
    ws: Workspace<B::Buf>,
    max_tokens: usize,
}

impl<B: Backend> Decoder<B> {
    /// A decoder for batches of at most `max_tokens` tokens at positions below `max_positions`.
    pub fn new(
        backend: B,
        spec: ArchSpec,
        weights: ModelWeights,
        max_tokens: usize,
        max_positions: usize,
    ) -> Self {
        let rope = RopeTable::new(&spec.rope_inv_freq(), max_positions);
        let t = max_tokens;
        let h = spec.hidden_size;
        let inter = weights
            .layers
            .iter()
            .map(|l| match &l.ffn {
                Ffn::Dense(m) => m.gate.rows(),
                Ffn::Moe(_) => 0,
            })
            .max()
            .unwrap_or(0);
        let moe = spec.moe.map(|m| {
            let moe_inter = weights
                .layers
                .iter()
                .filter_map(|l| match &l.ffn {
                    Ffn::Moe(w) => Some(
                        w.experts
                            .iter()
                            .map(|e| e.gate.rows())
                            .chain(w.shared.iter().map(|(s, _)| s.gate.rows()))
                            .max()
                            .unwrap_or(0),
                    ),
                    Ffn::Dense(_) => None,
                })
                .max()
                .unwrap_or(0);
            MoeScratch {
                gathered: backend.alloc(t * h),
                gate: backend.alloc(t * moe_inter),
                up: backend.alloc(t * moe_inter),
                act: backend.alloc(t * moe_inter),
                expert_out: backend.alloc(t * h),
                router_logits: backend.alloc(t * m.num_experts.max(1)),
            }
        });
        let ws = Workspace {
            hidden: backend.alloc(t * h),
            residual: backend.alloc(t * h),
            normed: backend.alloc(t * h),
            q_gate: backend.alloc(t * spec.q_size().max(inter)),
            attn_up: backend.alloc(t * spec.q_size().max(inter)),
            k_act: backend.alloc(t * spec.kv_size().max(inter)),
            v: backend.alloc(t * spec.kv_size()),
            moe,
        };
        Decoder {
            backend,
            spec,
            weights,
            rope,
            ws,
            max_tokens,
        }
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn max_positions(&self) -> usize {
        self.rope.max_positions
    }

    /// Runs the batch, writing K/V into `kv` and `batch.logits_rows.len() x vocab` logits
    /// into `logits`. The caller guarantees the batch fits (`max_tokens`, positions, ids).
    pub fn forward(&mut self, batch: &ForwardBatch, kv: &mut KvCache, logits: &mut [f32]) {
        // One hand-off to the backend's workers per step instead of one per op.
        let backend = &self.backend;
        let (weights, spec, rope, ws, max_tokens) = (
            &self.weights,
            &self.spec,
            &self.rope,
            &mut self.ws,
            self.max_tokens,
        );
        backend.run(|| {
            forward_pass(
                backend, weights, spec, rope, ws, max_tokens, batch, kv, logits,
            )
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_pass<B: Backend>(
    backend: &B,
    weights: &ModelWeights,
    spec: &ArchSpec,
    rope: &RopeTable,
    ws: &mut Workspace<B::Buf>,
    max_tokens: usize,
    batch: &ForwardBatch,
    kv: &mut KvCache,
    logits: &mut [f32],
) {
    let n = batch.num_tokens();
    assert!(n <= max_tokens, "batch of {n} tokens exceeds the workspace");
    let (b, w, s) = (backend, weights, spec);
    b.embed(&batch.token_ids, &w.embed, &mut ws.hidden);
    let meta = AttnMeta {
        query_start_loc: &batch.query_start_loc,
        seq_lens: &batch.seq_lens,
        block_tables: &batch.block_tables,
        max_blocks_per_seq: batch.max_blocks_per_seq,
        num_heads: s.num_heads,
        num_kv_heads: s.num_kv_heads,
        head_dim: s.head_dim,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        sliding_window: s.sliding_window,
    };
    for (l, layer) in w.layers.iter().enumerate() {
        // The residual stream starts as the embeddings; afterwards each block's output
        // (in `hidden`) is added to it while normalising.
        if l == 0 {
            std::mem::swap(&mut ws.residual, &mut ws.hidden);
            b.rms_norm(
                &ws.residual,
                n,
                &layer.attn_norm,
                s.rms_norm_eps,
                &mut ws.normed,
            );
        } else {
            b.add_rms_norm(
                &ws.hidden,
                &mut ws.residual,
                n,
                &layer.attn_norm,
                s.rms_norm_eps,
                &mut ws.normed,
            );
        }
        attention_block(b, s, layer, n, batch, &meta, rope, kv, l, ws);
        b.add_rms_norm(
            &ws.hidden,
            &mut ws.residual,
            n,
            &layer.ffn_norm,
            s.rms_norm_eps,
            &mut ws.normed,
        );
        ffn_block(b, s, layer, n, ws);
    }
    // Final residual add, then norm + head only for the rows that need logits (normalised
    // into `normed`, free by now).
    b.add(&ws.hidden, &mut ws.residual, n * s.hidden_size);
    b.logits(
        &ws.residual,
        &batch.logits_rows,
        &w.norm,
        s.rms_norm_eps,
        &w.lm_head,
        &mut ws.normed,
        logits,
    );
}

#[allow(clippy::too_many_arguments)]
fn attention_block<B: Backend>(
    b: &B,
    s: &ArchSpec,
    layer: &LayerWeights,
    n: usize,
    batch: &ForwardBatch,
    meta: &AttnMeta,
    rope: &RopeTable,
    kv: &mut KvCache,
    l: usize,
    ws: &mut Workspace<B::Buf>,
) {
    b.linear_many(
        &ws.normed,
        n,
        &[
            (&layer.q, layer.q_bias.as_ref()),
            (&layer.k, layer.k_bias.as_ref()),
            (&layer.v, layer.v_bias.as_ref()),
        ],
        &mut [&mut ws.q_gate, &mut ws.k_act, &mut ws.v],
    );
    let (q, k, attn) = (&mut ws.q_gate, &mut ws.k_act, &mut ws.attn_up);
    if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
        b.head_rms_norm(q, n * s.q_size(), qn, s.rms_norm_eps);
        b.head_rms_norm(k, n * s.kv_size(), kn, s.rms_norm_eps);
    }
    b.rope(q, k, &batch.positions, s.num_heads, s.num_kv_heads, rope);
    b.write_kv(k, &ws.v, &batch.slot_mapping, &mut kv.layers[l]);
    b.paged_attention(q, &kv.layers[l], meta, attn);
    b.linear(attn, n, &layer.o, None, &mut ws.hidden);
}

fn ffn_block<B: Backend>(
    b: &B,
    s: &ArchSpec,
    layer: &LayerWeights,
    n: usize,
    ws: &mut Workspace<B::Buf>,
) {
    match &layer.ffn {
        Ffn::Dense(m) => {
            b.linear_many(
                &ws.normed,
                n,
                &[(&m.gate, None), (&m.up, None)],
                &mut [&mut ws.q_gate, &mut ws.attn_up],
            );
            b.silu_mul(&ws.q_gate, &ws.attn_up, n * m.gate.rows(), &mut ws.k_act);
            b.linear(&ws.k_act, n, &m.down, None, &mut ws.hidden);
        }
        Ffn::Moe(m) => {
            let spec = s.moe.as_ref().expect("MoE layer without MoE spec");
            let scratch = ws.moe.as_mut().expect("MoE scratch");
            b.moe(&ws.normed, n, m, spec, scratch, &mut ws.hidden);
        }
    }
}
