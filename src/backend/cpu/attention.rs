//! Causal attention of each sequence's query rows over its paged KV context.
//!
//! Query row i of a sequence with `n_q` rows and context length `ctx` sits at position
//! `ctx - n_q + i` and attends to positions `0..=that` (or the sliding window before it).
//! Keys and values are found through the sequence's block table only.

use super::qdot::{available, best_isa, Isa};
use super::scratch::with_scratch;
use super::SyncPtr;
use crate::backend::AttnMeta;
use crate::kv::KvLayer;
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::OnceLock;

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
        if rows.len() >= MIN_ROWS_FOR_GEMM {
            // SAFETY: (row, head h) output slots are written by this task only.
            unsafe { attend_rows_gemm(q, h, rows, ctx, table, cache, meta, out_ptr) };
            return;
        }
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
                attend(qv, h, pos, table, cache, meta, &mut scores[..pos + 1], o);
            }
        });
    });
}

/// From this many query rows of a sequence on (prefill chunks), a head's attention runs as
/// two matrix products over its gathered keys and values instead of row by row.
const MIN_ROWS_FOR_GEMM: usize = 8;
/// Query rows per pair of products (bounds the scores buffer to this many rows x context).
const GEMM_ROW_TILE: usize = 128;

/// Per-thread buffers of the matrix-product path: one head's keys and values gathered
/// from the paged cache, and a tile's scores.
#[derive(Default)]
struct GemmScratch {
    k: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    static GEMM_SCRATCH: std::cell::RefCell<GemmScratch> = std::cell::RefCell::default();
}

/// Attention of a sequence's query `rows` for head `h`: S = Q K^T * scale, a causal (and
/// sliding-window) softmax per row, O = P V, with the `gemm` crate on this thread.
///
/// # Safety
/// `out` must hold every (row, head) slot of `rows`, written by this call only.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_rows_gemm(
    q: &[f32],
    h: usize,
    rows: std::ops::Range<usize>,
    ctx: usize,
    table: &[u32],
    cache: &KvLayer,
    meta: &AttnMeta,
    out: SyncPtr,
) {
    let (hd, heads) = (meta.head_dim, meta.num_heads);
    let kvh = h / (heads / meta.num_kv_heads);
    let bs = cache.block_size;
    GEMM_SCRATCH.with(|cell| {
        let mut sc = cell.borrow_mut();
        let sc = &mut *sc;
        sc.k.resize(ctx * hd, 0.0);
        sc.v.resize(ctx * hd, 0.0);
        for j in 0..ctx {
            let src = (table[j / bs] as usize * bs + j % bs) * cache.row_len + kvh * hd;
            sc.k[j * hd..(j + 1) * hd].copy_from_slice(&cache.k[src..src + hd]);
            sc.v[j * hd..(j + 1) * hd].copy_from_slice(&cache.v[src..src + hd]);
        }
        let n_q = rows.len();
        let mut r0 = 0;
        while r0 < n_q {
            let tn = GEMM_ROW_TILE.min(n_q - r0);
            let first_pos = ctx - n_q + r0;
            // Keys past the tile's last row are masked for every row of it.
            let width = first_pos + tn;
            sc.scores.resize(tn * width, 0.0);
            let q0 = q.as_ptr().add(((rows.start + r0) * heads + h) * hd);
            gemm::gemm(
                tn,
                width,
                hd,
                sc.scores.as_mut_ptr(),
                1,
                width as isize,
                false,
                q0,
                1,
                (heads * hd) as isize,
                sc.k.as_ptr(),
                hd as isize,
                1,
                0.0,
                meta.scale,
                false,
                false,
                false,
                Parallelism::None,
            );
            for i in 0..tn {
                let pos = first_pos + i;
                let lo = meta
                    .sliding_window
                    .map_or(0, |w| (pos + 1).saturating_sub(w));
                softmax_row(&mut sc.scores[i * width..(i + 1) * width], lo, pos);
            }
            let o0 = out.get().add(((rows.start + r0) * heads + h) * hd);
            gemm::gemm(
                tn,
                hd,
                width,
                o0,
                1,
                (heads * hd) as isize,
                false,
                sc.scores.as_ptr(),
                1,
                width as isize,
                sc.v.as_ptr(),
                1,
                hd as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
            r0 += tn;
        }
    });
}

/// Softmax of `row[lo..=pos]` in place; every other entry becomes 0.
fn softmax_row(row: &mut [f32], lo: usize, pos: usize) {
    let max = row[lo..=pos]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in &mut row[lo..=pos] {
        *s = exp_nonpositive(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    row[lo..=pos].iter_mut().for_each(|s| *s *= inv);
    row[..lo].fill(0.0);
    row[pos + 1..].fill(0.0);
}

/// One query row of one head, with the widest vector unit the CPU has: the same code,
/// compiled for AVX-512 or AVX2 (this crate's baseline is SSE2).
#[allow(clippy::too_many_arguments)]
fn attend(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    cache: &KvLayer,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` found the features these variants are compiled for.
        Isa::Avx512 => unsafe { attend_avx512(qv, h, pos, table, cache, meta, scores, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { attend_avx2(qv, h, pos, table, cache, meta, scores, out) },
        _ => attend_one(qv, h, pos, table, cache, meta, scores, out),
    }
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| best_isa(available))
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn attend_avx512(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    cache: &KvLayer,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_one(qv, h, pos, table, cache, meta, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    cache: &KvLayer,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_one(qv, h, pos, table, cache, meta, scores, out)
}

#[inline(always)]
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
    for (j, score) in scores.iter_mut().enumerate().take(pos + 1).skip(lo) {
        let kv = &cache.k[row_of(j)..][..hd];
        *score = dot(qv, kv) * meta.scale;
        max = max.max(*score);
    }
    let mut sum = 0.0f32;
    for s in &mut scores[lo..=pos] {
        *s = exp_nonpositive(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for (j, score) in scores.iter().enumerate().take(pos + 1).skip(lo) {
        let p = score * inv;
        let vv = &cache.v[row_of(j)..][..hd];
        for (o, v) in out.iter_mut().zip(vv) {
            *o += p * v;
        }
    }
}

/// e^x for x <= 0 (scores minus their maximum) in plain arithmetic, so that loops over it
/// vectorise: x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial
/// (relative error below 2e-7), times 2^n built from the exponent bits. Below -87 the result
/// is 0 (e^-87 is under f32's normal range).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.max(-87.0);
    let n = (xc * LOG2E).round();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// f32 dot product with independent partial sums (vectorises without fast-math).
#[inline(always)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvCache;

    /// A small deterministic generator for test data.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// Dense causal attention over one sequence's full K/V, in f64.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        ctx: usize,
        n_q: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
        window: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; n_q * heads * hd];
        for i in 0..n_q {
            let pos = ctx - n_q + i;
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qv = &q[(i * heads + h) * hd..][..hd];
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let scores: Vec<f64> = (lo..=pos)
                    .map(|j| {
                        let kv = &k[(j * kv_heads + kvh) * hd..][..hd];
                        qv.iter()
                            .zip(kv)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let acc: f64 = (lo..=pos)
                        .map(|j| e[j - lo] / z * v[(j * kv_heads + kvh) * hd + d] as f64)
                        .sum();
                    out[(i * heads + h) * hd + d] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn exp_nonpositive_is_accurate() {
        for i in 0..=20000 {
            let x = -(i as f32) * 0.005;
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            // Below -87 the result is 0: an absolute error under 2e-38.
            assert!(
                (got - want).abs() <= 3e-7 * want + 2e-38,
                "e^{x}: {got} vs {want}"
            );
        }
        assert_eq!(exp_nonpositive(-200.0), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn paged_attention_matches_dense_reference() {
        let (heads, kv_heads, hd, bs) = (4, 2, 8, 4);
        // Two sequences: a chunk of 5 rows at the end of a 13-token context, and a decode row
        // at position 6; blocks deliberately scattered.
        // A third sequence's 20-row chunk takes the matrix-product path.
        let seqs = [
            (13usize, 5usize, vec![7u32, 2, 9, 0]),
            (7, 1, vec![5, 1]),
            (30, 20, vec![3, 8, 4, 6, 10, 11, 12, 13]),
        ];
        for window in [None, Some(4)] {
            let mut cache = KvCache::new(1, 14, bs, kv_heads * hd);
            let layer = &mut cache.layers[0];
            let (mut q_all, mut want, mut qsl, mut lens, mut tables) =
                (vec![], vec![], vec![0u32], vec![], vec![]);
            for (s, (ctx, n_q, table)) in seqs.iter().enumerate() {
                let k = values(ctx * kv_heads * hd, 10 + s as u64);
                let v = values(ctx * kv_heads * hd, 20 + s as u64);
                let q = values(n_q * heads * hd, 30 + s as u64);
                for j in 0..*ctx {
                    let slot = table[j / bs] as usize * bs + j % bs;
                    let n = kv_heads * hd;
                    layer.k[slot * n..(slot + 1) * n].copy_from_slice(&k[j * n..(j + 1) * n]);
                    layer.v[slot * n..(slot + 1) * n].copy_from_slice(&v[j * n..(j + 1) * n]);
                }
                want.extend(reference(
                    &q, &k, &v, *ctx, *n_q, heads, kv_heads, hd, window,
                ));
                q_all.extend(q);
                qsl.push(qsl.last().unwrap() + *n_q as u32);
                lens.push(*ctx as u32);
                let mut t = table.clone();
                t.resize(8, 0);
                tables.extend(t);
            }
            let meta = AttnMeta {
                query_start_loc: &qsl,
                seq_lens: &lens,
                block_tables: &tables,
                max_blocks_per_seq: 8,
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                sliding_window: window,
            };
            let mut out = vec![0f32; want.len()];
            paged_attention(&q_all, &cache.layers[0], &meta, &mut out);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "window {window:?} value {i}: {a} vs {b}"
                );
            }
        }
    }
}
