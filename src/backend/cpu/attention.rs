//! Causal attention of each sequence's query rows over its paged KV context.
//!
//! Query row i of a sequence with `n_q` rows and context length `ctx` sits at position
//! `ctx - n_q + i` and attends to positions `0..=that` (or the sliding window before it).
//! Keys and values are found through the sequence's block table only.

use super::scratch::with_scratch;
use super::SyncPtr;
use crate::backend::AttnMeta;
use crate::kv::KvLayer;
use rayon::prelude::*;

pub fn paged_attention(q: &[f32], cache: &KvLayer, meta: &AttnMeta, out: &mut [f32]) {
    let num_seqs = meta.seq_lens.len();
    let heads = meta.num_heads;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..num_seqs * heads).into_par_iter().for_each(|item| {
        let (s, h) = (item / heads, item % heads);
        let rows = meta.query_start_loc[s] as usize..meta.query_start_loc[s + 1] as usize;
        let ctx = meta.seq_lens[s] as usize;
        let table =
            &meta.block_tables[s * meta.max_blocks_per_seq..(s + 1) * meta.max_blocks_per_seq];
        with_scratch(ctx, |scores| {
            for (i, row) in rows.clone().enumerate() {
                let pos = ctx - rows.len() + i;
                // SAFETY: (row, head h) output slots are written by this task only.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.get().add((row * heads + h) * meta.head_dim),
                        meta.head_dim,
                    )
                };
                let qv = &q[(row * heads + h) * meta.head_dim..][..meta.head_dim];
                attend_one(qv, h, pos, table, cache, meta, &mut scores[..pos + 1], o);
            }
        });
    });
}

#[allow(clippy::too_many_arguments)]
fn attend_one(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    cache: &KvLayer,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = meta.head_dim;
    let kvh = h / (meta.num_heads / meta.num_kv_heads);
    let bs = cache.block_size;
    let lo = meta
        .sliding_window
        .map_or(0, |w| (pos + 1).saturating_sub(w));
    let row_of = |j: usize| (table[j / bs] as usize * bs + j % bs) * cache.row_len + kvh * hd;
    let mut max = f32::NEG_INFINITY;
    for j in lo..=pos {
        let kv = &cache.k[row_of(j)..][..hd];
        let s = dot(qv, kv) * meta.scale;
        scores[j] = s;
        max = max.max(s);
    }
    let mut sum = 0.0f32;
    for s in &mut scores[lo..=pos] {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for j in lo..=pos {
        let p = scores[j] * inv;
        let vv = &cache.v[row_of(j)..][..hd];
        for (o, v) in out.iter_mut().zip(vv) {
            *o += p * v;
        }
    }
}

/// f32 dot product with independent partial sums (vectorises without fast-math).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
