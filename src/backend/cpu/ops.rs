//! Element-wise and per-row ops: embedding, RMSNorm, RoPE, KV writes, SiLU-and-multiply.

use super::SyncPtr;
use crate::backend::RopeTable;
use crate::kv::{KvData, KvLayer};
use crate::tensor::Weight;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Rows per parallel task for cheap per-row ops.
const ROWS_PER_TASK: usize = 16;

pub fn embed(ids: &[u32], table: &Weight, out: &mut [f32]) {
    let h = table.cols();
    out[..ids.len() * h]
        .par_chunks_mut(h)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| table.dequantize_row(id as usize, row));
}

/// The norm weight as f32 (vectors are converted to f32 once at load).
fn weight_f32(w: &Weight, f: impl FnOnce(&[f32])) {
    f(w.as_f32()
        .expect("norm weights are f32 (converted at load)"))
}

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * inv);
    }
}

pub fn rms_norm(x: &[f32], rows: usize, w: &Weight, eps: f32, out: &mut [f32]) {
    let h = w.numel();
    weight_f32(w, |wv| {
        out[..rows * h]
            .par_chunks_mut(h * ROWS_PER_TASK)
            .zip(x[..rows * h].par_chunks(h * ROWS_PER_TASK))
            .for_each(|(o, xi)| {
                for (orow, xrow) in o.chunks_exact_mut(h).zip(xi.chunks_exact(h)) {
                    rms_norm_row(xrow, wv, eps, orow);
                }
            });
    });
}

pub fn add_rms_norm(
    x: &[f32],
    residual: &mut [f32],
    rows: usize,
    w: &Weight,
    eps: f32,
    out: &mut [f32],
) {
    let h = w.numel();
    weight_f32(w, |wv| {
        out[..rows * h]
            .par_chunks_mut(h * ROWS_PER_TASK)
            .zip(residual[..rows * h].par_chunks_mut(h * ROWS_PER_TASK))
            .zip(x[..rows * h].par_chunks(h * ROWS_PER_TASK))
            .for_each(|((o, r), xi)| {
                for ((orow, rrow), xrow) in o
                    .chunks_exact_mut(h)
                    .zip(r.chunks_exact_mut(h))
                    .zip(xi.chunks_exact(h))
                {
                    for (rv, xv) in rrow.iter_mut().zip(xrow) {
                        *rv += xv;
                    }
                    rms_norm_row(rrow, wv, eps, orow);
                }
            });
    });
}

/// RMSNorm of `rows` rows of `w.numel()` values, in place.
pub fn rms_norm_inplace(x: &mut [f32], rows: usize, w: &Weight, eps: f32) {
    head_rms_norm(x, rows * w.numel(), w, eps);
}

/// In-place RMSNorm of every `w.numel()`-sized head in the first `rows * row_len` values.
pub fn head_rms_norm(x: &mut [f32], len: usize, w: &Weight, eps: f32) {
    let hd = w.numel();
    weight_f32(w, |wv| {
        x[..len].par_chunks_mut(hd * ROWS_PER_TASK).for_each(|c| {
            for head in c.chunks_exact_mut(hd) {
                let ss: f32 = head.iter().map(|v| v * v).sum::<f32>() / hd as f32;
                let inv = 1.0 / (ss + eps).sqrt();
                for (v, &g) in head.iter_mut().zip(wv) {
                    *v = g * (*v * inv);
                }
            }
        });
    });
}

fn rope_row(row: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in row.chunks_exact_mut(2 * half).take(heads) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

pub fn rope(
    q: &mut [f32],
    k: &mut [f32],
    positions: &[u32],
    num_heads: usize,
    num_kv_heads: usize,
    t: &RopeTable,
) {
    let half = t.half_dim;
    let (qrow, krow) = (num_heads * 2 * half, num_kv_heads * 2 * half);
    let n = positions.len();
    q[..n * qrow]
        .par_chunks_mut(qrow)
        .zip(k[..n * krow].par_chunks_mut(krow))
        .zip(positions.par_iter())
        .for_each(|((qr, kr), &p)| {
            let p = p as usize;
            let (cos, sin) = (
                &t.cos[p * half..(p + 1) * half],
                &t.sin[p * half..(p + 1) * half],
            );
            rope_row(qr, num_heads, cos, sin);
            rope_row(kr, num_kv_heads, cos, sin);
        });
}

/// Stores row t of `k` and `v` at slot `slots[t]`, rounding to f16 (to nearest even) for
/// an f16 cache.
pub fn write_kv(k: &[f32], v: &[f32], slots: &[u32], cache: &mut KvLayer) {
    let n = cache.row_len;
    store_rows(k, slots, n, &mut cache.k);
    store_rows(v, slots, n, &mut cache.v);
}

fn store_rows(src: &[f32], slots: &[u32], n: usize, dst: &mut KvData) {
    for (t, &slot) in slots.iter().enumerate() {
        let (d, s) = (slot as usize * n, &src[t * n..(t + 1) * n]);
        match dst {
            KvData::F32(c) => c[d..d + n].copy_from_slice(s),
            KvData::F16(c) => c[d..d + n].convert_from_f32_slice(s),
        }
    }
}

pub fn silu_mul(gate: &[f32], up: &[f32], n: usize, out: &mut [f32]) {
    out[..n]
        .par_chunks_mut(4096)
        .zip(gate[..n].par_chunks(4096).zip(up[..n].par_chunks(4096)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
}

/// Copies block `src` to block `dst` (all slots) in K and V.
pub fn copy_block(layer: &mut KvLayer, src: u32, dst: u32) {
    let n = layer.block_size * layer.row_len;
    let (s, d) = (src as usize * n, dst as usize * n);
    layer.k.copy_within(s, d, n);
    layer.v.copy_within(s, d, n);
}

/// Scatters `values[i]` onto output rows (used by MoE): `out[rows[i]] += scale[i] * values[i]`.
pub fn scatter_add_rows(values: &[f32], rows: &[u32], scale: &[f32], h: usize, out: &mut [f32]) {
    let out_ptr = SyncPtr(out.as_mut_ptr());
    // Rows are distinct within one expert, so the writes never overlap.
    rows.par_iter().enumerate().for_each(|(i, &r)| {
        // SAFETY: distinct rows; in bounds by construction.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r as usize * h), h) };
        for (o, v) in o.iter_mut().zip(&values[i * h..(i + 1) * h]) {
            *o += scale[i] * v;
        }
    });
}
