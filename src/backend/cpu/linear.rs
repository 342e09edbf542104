//! Matrix products against stored weights: `out[t, r] = x[t] · w[r] (+ bias[r])`.
//!
//! `MatmulPrecision::Exact`: dense f32 weights go to the `gemm` crate whole. Other types
//! are either dotted row by row straight from their stored blocks (few tokens: decode,
//! memory bound) or converted to f32 a tile of rows at a time into a per-thread buffer and
//! multiplied with `gemm` (many tokens: prefill, compute bound). Both keep f32 semantics.
//!
//! `MatmulPrecision::Int8Activations`, for Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K weights:
//! the token rows are quantized to 8 bits per 32 values once per call (into a per-thread
//! buffer that grows once), then multiplied with integer kernels (`qdot_q8`): row dots
//! for few tokens, 32-row tiles x 6-token blocks for many. Other weight types stay exact.

use super::packed::{self, Bf16Acts, Bf16Tile, PackedRows};
use super::qdot;
use super::qdot_q8::{self, Q8Acts, Q8Row};
use super::scratch::with_scratch;
use super::SyncPtr;
use crate::tensor::{DType, Weight};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

/// How `linear` multiplies activations by quantized weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulPrecision {
    /// f32 activations times exactly dequantized weights: the reference path, which the
    /// fidelity tests hold to transformers.
    #[default]
    Exact,
    /// Activations quantized to 8 bits per 32 values and integer dot products (as
    /// llama.cpp does) for Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K weights; faster, with an
    /// error of at most half an activation quantization step per value. F16/BF16 weights
    /// (on CPUs with AVX-512 BF16): weights rounded to bf16 once at load, activations to
    /// bf16 per call, f32 sums. F32 weights stay exact.
    Int8Activations,
}

/// Up to this many token rows, products are row dots from the stored blocks.
const MAX_ROWS_FOR_DOT: usize = 4;
/// Weight rows per parallel task.
const TILE_ROWS: usize = 64;

/// Up to this many token rows, the integer path dots rows from the stored blocks.
const Q8_MAX_ROWS_FOR_DOT: usize = 4;

pub fn linear(
    x: &[f32],
    rows: usize,
    w: &Weight,
    bias: Option<&Weight>,
    out: &mut [f32],
    precision: MatmulPrecision,
) {
    let (n_out, k) = (w.rows(), w.cols());
    let x = &x[..rows * k];
    let out = &mut out[..rows * n_out];
    if precision == MatmulPrecision::Int8Activations && qdot_q8::supported(w.dtype) {
        q8_linear(x, rows, w, out);
    } else if is_dense_packed(w) {
        dense_packed_linear(x, rows, &[w], &mut [out]);
    } else if w.dtype == DType::F32 && rows > MAX_ROWS_FOR_DOT {
        dense_gemm(x, rows, w.as_f32().expect("f32 weight"), n_out, k, out);
    } else if rows <= MAX_ROWS_FOR_DOT {
        row_dots(x, rows, w, out);
    } else {
        tiled_gemm(x, rows, w, out);
    }
    if let Some(b) = bias {
        let b = b.as_f32().expect("biases are f32 (converted at load)");
        for row in out.chunks_exact_mut(n_out) {
            for (o, bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
}

/// Whether `w` is an F16/BF16 weight packed at load (only with int8 activations).
fn is_dense_packed(w: &Weight) -> bool {
    w.dtype.block_len() == 1 && w.packed::<PackedRows>().is_some()
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` with `out` row stride `ld_out`.
///
/// # Safety
/// `out` must be valid for writes of `m` rows of `n` values at stride `ld_out`.
unsafe fn gemm_xwt(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    out: *mut f32,
    ld_out: usize,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        out,
        1,
        ld_out as isize,
        false,
        x.as_ptr(),
        1,
        k as isize,
        w.as_ptr(),
        k as isize,
        1,
        0.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

fn dense_gemm(x: &[f32], rows: usize, w: &[f32], n_out: usize, k: usize, out: &mut [f32]) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: out holds rows * n_out values.
    unsafe { gemm_xwt(x, rows, w, n_out, k, out.as_mut_ptr(), n_out, par) };
}

fn row_dots(x: &[f32], rows: usize, w: &Weight, out: &mut [f32]) {
    let (n_out, k) = (w.rows(), w.cols());
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..n_out.div_ceil(TILE_ROWS))
        .into_par_iter()
        .for_each(|tile| {
            let start = tile * TILE_ROWS;
            let end = (start + TILE_ROWS).min(n_out);
            for r in start..end {
                let wr = w.row_bytes(r);
                for t in 0..rows {
                    let v = qdot::dot(w.dtype, wr, &x[t * k..(t + 1) * k]);
                    // SAFETY: each (t, r) is written by exactly one task; index is in bounds.
                    unsafe { *out_ptr.get().add(t * n_out + r) = v };
                }
            }
        });
}

fn tiled_gemm(x: &[f32], rows: usize, w: &Weight, out: &mut [f32]) {
    let (n_out, k) = (w.rows(), w.cols());
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..n_out.div_ceil(TILE_ROWS))
        .into_par_iter()
        .for_each(|tile| {
            let start = tile * TILE_ROWS;
            let n = (start + TILE_ROWS).min(n_out) - start;
            with_scratch(n * k, |buf| {
                for i in 0..n {
                    w.dequantize_row(start + i, &mut buf[i * k..(i + 1) * k]);
                }
                // SAFETY: this task alone writes columns start..start+n of every output row.
                unsafe {
                    gemm_xwt(
                        x,
                        rows,
                        buf,
                        n,
                        k,
                        out_ptr.get().add(start),
                        n_out,
                        Parallelism::None,
                    )
                };
            });
        });
}

thread_local! {
    /// The quantized activations of the current call (grows once per thread).
    static ACTS: RefCell<Q8Acts> = RefCell::new(Q8Acts::new());
    /// A tile's output, `rows x 16` (grows once per thread).
    static TILE_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The bf16 activations of the current dense call (grows once per thread).
    static BF16_ACTS: RefCell<Bf16Acts> = RefCell::new(Bf16Acts::default());
    /// Few token rows rounded to bf16, for dense row dots (grows once per thread).
    static DENSE_X: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A dense tile in bf16 (grows once per thread).
    static BF16_TILE: RefCell<Bf16Tile> = RefCell::new(Bf16Tile::default());
}

fn q8_linear(x: &[f32], rows: usize, w: &Weight, out: &mut [f32]) {
    q8_linear_many(x, rows, &[w], &mut [out]);
}

/// Several weights over the same input (q/k/v, gate/up): the activations are quantized
/// once and every weight's rows are shared out in one parallel dispatch.
fn q8_linear_many(x: &[f32], rows: usize, ws: &[&Weight], outs: &mut [&mut [f32]]) {
    ACTS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut acts) => q8_linear_with(&mut acts, x, rows, ws, outs),
        // Re-entered on this thread (not the case in this crate): a temporary buffer.
        Err(_) => q8_linear_with(&mut Q8Acts::new(), x, rows, ws, outs),
    })
}

/// Weight `w`'s output rows `start..start + n`.
#[derive(Clone, Copy)]
struct Job {
    start: usize,
    n: usize,
}

/// Most weights `linear_many` runs in one dispatch (q/k/v).
pub const MAX_FUSED: usize = 4;

fn q8_linear_with(
    acts: &mut Q8Acts,
    x: &[f32],
    rows: usize,
    ws: &[&Weight],
    outs: &mut [&mut [f32]],
) {
    let k = ws[0].cols();
    if rows == 0 || ws.iter().all(|w| w.rows() == 0) {
        return;
    }
    acts.quantize(x, rows, k);
    let acts = &*acts;
    let few = rows <= Q8_MAX_ROWS_FOR_DOT;
    let xs: [Q8Row; Q8_MAX_ROWS_FOR_DOT] = std::array::from_fn(|t| acts.row(t.min(rows - 1)));
    let xs = &xs[..rows.min(Q8_MAX_ROWS_FOR_DOT)];
    for_each_job(ws, outs, few, |w, job, out| {
        if let Some(p) = w.packed::<PackedRows>() {
            packed_job(p, few, xs, acts, job, out);
            return;
        }
        let rb = w.row_bytes_len();
        let wb = &w.bytes()[job.start * rb..(job.start + job.n) * rb];
        if few {
            dot_job(w, wb, k, xs, job, out);
        } else {
            tile_job(w, wb, rows, acts, job, w.rows(), out);
        }
    });
}

/// Shares the output rows of all of `ws` out as jobs in one parallel dispatch; `f` gets
/// the weight, its rows and its output. Few tokens: chunks of up to 512 weight rows, one
/// chunk a thread for small matrices (a task costs microseconds: a task per 64 rows made
/// the 49k-row output projection dispatch-bound). Many tokens: tiles of 32 rows.
fn for_each_job(
    ws: &[&Weight],
    outs: &mut [&mut [f32]],
    few: bool,
    f: impl Fn(&Weight, Job, SyncPtr) + Sync,
) {
    assert!(ws.len() <= MAX_FUSED && ws.len() == outs.len());
    let mut out_ptrs = [SyncPtr(std::ptr::null_mut()); MAX_FUSED];
    for (p, o) in out_ptrs.iter_mut().zip(outs.iter_mut()) {
        *p = SyncPtr(o.as_mut_ptr());
    }
    let threads = rayon::current_num_threads();
    let total: usize = ws.iter().map(|w| w.rows()).sum();
    let chunk = if few {
        total
            .div_ceil(threads)
            .next_multiple_of(16)
            .clamp(16, DOT_CHUNK)
    } else {
        qdot_q8::TILE_ROWS
    };
    // Jobs are numbered weight after weight; no list is built.
    let mut first_job = [0usize; MAX_FUSED + 1];
    for (i, w) in ws.iter().enumerate() {
        first_job[i + 1] = first_job[i] + w.rows().div_ceil(chunk);
    }
    let num_jobs = first_job[ws.len()];
    (0..num_jobs).into_par_iter().for_each(|j| {
        let wi = (0..ws.len())
            .rfind(|&i| first_job[i] <= j)
            .expect("job 0 exists");
        let w = ws[wi];
        let start = (j - first_job[wi]) * chunk;
        let job = Job {
            start,
            n: chunk.min(w.rows() - start),
        };
        f(w, job, out_ptrs[wi]);
    });
}

/// Dense (F16/BF16) weights packed at load (in bf16): f32 row dots of bf16-rounded
/// activations for few tokens, bf16 tiles (`vdpbf16ps`, f32 sums) for many: the same
/// products either way, so results differ only in summation order.
fn dense_packed_linear(x: &[f32], rows: usize, ws: &[&Weight], outs: &mut [&mut [f32]]) {
    let k = ws[0].cols();
    if rows == 0 || ws.iter().all(|w| w.rows() == 0) {
        return;
    }
    let few = rows <= Q8_MAX_ROWS_FOR_DOT;
    if few {
        // Activations rounded to bf16 as the tiles round them: a token's result must not
        // depend on how many others share its batch.
        DENSE_X.with(|cell| {
            let mut xr = cell.borrow_mut();
            xr.clear();
            xr.extend(
                x[..rows * k]
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32()),
            );
            let xs: [&[f32]; Q8_MAX_ROWS_FOR_DOT] =
                std::array::from_fn(|t| &xr[t.min(rows - 1) * k..(t.min(rows - 1) + 1) * k]);
            dense_dots(&xs[..rows], ws, outs);
        });
        return;
    }
    dense_tiles(x, rows, ws, outs);
}

/// Dense packed weights by f32 row dots (at most 4 token rows).
fn dense_dots(xs: &[&[f32]], ws: &[&Weight], outs: &mut [&mut [f32]]) {
    for_each_job(ws, outs, true, |w, job, out| {
        let p = w.packed::<PackedRows>().expect("dense weights are packed");
        let (g0, g1) = (
            job.start / packed::GROUP,
            (job.start + job.n).div_ceil(packed::GROUP),
        );
        // SAFETY: this job alone writes rows start..start + n of every token's output
        // row, which holds p.rows values per token.
        unsafe { packed::dot_groups_f32(p, g0, g1, xs, out.get(), p.rows) };
    });
}

/// Dense packed weights by bf16 tiles (any number of token rows).
fn dense_tiles(x: &[f32], rows: usize, ws: &[&Weight], outs: &mut [&mut [f32]]) {
    let k = ws[0].cols();
    BF16_ACTS.with(|cell| {
        let mut acts = cell.borrow_mut();
        acts.convert(x, rows, k);
        let acts = &*acts;
        for_each_job(ws, outs, false, |w, job, out| {
            let p = w.packed::<PackedRows>().expect("dense weights are packed");
            let tr = qdot_q8::TILE_ROWS;
            BF16_TILE.with(|tile| {
                TILE_OUT.with(|cell| {
                    let mut buf = cell.borrow_mut();
                    if buf.len() < acts.out_rows() * tr {
                        buf.resize(acts.out_rows() * tr, 0.0);
                    }
                    let g0 = job.start / packed::GROUP;
                    packed::gemm_tile_bf16(p, g0, acts, &mut tile.borrow_mut(), &mut buf);
                    copy_tile(&buf, rows, job, p.rows, out);
                })
            });
        });
    });
}

/// A job over rows repacked at load (`packed`): row dots straight into the output for few
/// tokens, 32-row tiles for many. Jobs start on a 16-row group (chunks are multiples of 16).
fn packed_job(p: &PackedRows, few: bool, xs: &[Q8Row], acts: &Q8Acts, job: Job, out: SyncPtr) {
    let g0 = job.start / packed::GROUP;
    if few {
        let g1 = (job.start + job.n).div_ceil(packed::GROUP);
        // SAFETY: this job alone writes rows start..start + n of every token's output row,
        // which holds p.rows values per token.
        unsafe { packed::dot_groups(p, g0, g1, xs, out.get(), p.rows) };
        return;
    }
    let rows = acts.rows();
    let tr = qdot_q8::TILE_ROWS;
    TILE_OUT.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < rows * tr {
            buf.resize(rows * tr, 0.0);
        }
        packed::gemm_tile(p, g0, acts, &mut buf);
        copy_tile(&buf, rows, job, p.rows, out);
    });
}

/// Copies a tile's output (`rows x 32`) to columns `start..start + n` of `out`.
fn copy_tile(buf: &[f32], rows: usize, job: Job, n_out: usize, out: SyncPtr) {
    let tr = qdot_q8::TILE_ROWS;
    for t in 0..rows {
        let src = &buf[t * tr..t * tr + job.n];
        // SAFETY: this job alone writes columns start..start+n of every row.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(out.get().add(t * n_out + job.start), job.n) };
        dst.copy_from_slice(src);
    }
}

/// Weight rows per task at most, with few tokens.
const DOT_CHUNK: usize = 512;

/// Few tokens: row dots from the stored blocks.
fn dot_job(w: &Weight, wb: &[u8], k: usize, xs: &[Q8Row], job: Job, out: SyncPtr) {
    let rows = xs.len();
    let n_out = w.rows();
    let mut buf = [0f32; DOT_CHUNK * Q8_MAX_ROWS_FOR_DOT];
    let buf = &mut buf[..job.n * rows];
    qdot_q8::dot_rows(w.dtype, wb, k, xs, buf);
    for (i, o) in buf.chunks_exact(rows).enumerate() {
        for (t, &v) in o.iter().enumerate() {
            // SAFETY: each (t, r) is written by exactly one job; index in bounds.
            unsafe { *out.get().add(t * n_out + job.start + i) = v };
        }
    }
}

/// Many tokens: one tile of the integer matrix product.
fn tile_job(
    w: &Weight,
    wb: &[u8],
    rows: usize,
    acts: &Q8Acts,
    job: Job,
    n_out: usize,
    out: SyncPtr,
) {
    let tr = qdot_q8::TILE_ROWS;
    TILE_OUT.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < rows * tr {
            buf.resize(rows * tr, 0.0);
        }
        qdot_q8::gemm_tile(w.dtype, wb, job.n, acts, &mut buf);
        copy_tile(&buf, rows, job, n_out, out);
    });
}

/// `outs[i] = x · ws[i]ᵀ + bias[i]` for weights sharing the input `x` (`rows` rows of
/// `ws[i].cols()` values, equal for all). With int8 activations and quantized weights the
/// input is quantized once and all weights run in one parallel dispatch, and likewise for
/// dense weights packed at load; otherwise each weight runs as `linear`.
pub fn linear_many(
    x: &[f32],
    rows: usize,
    ws: &[(&Weight, Option<&Weight>)],
    outs: &mut [&mut [f32]],
    precision: MatmulPrecision,
) {
    let k = ws[0].0.cols();
    let int8 = precision == MatmulPrecision::Int8Activations;
    let quantized = int8
        && ws
            .iter()
            .all(|(w, _)| qdot_q8::supported(w.dtype) && w.cols() == k);
    let dense = ws.iter().all(|(w, _)| is_dense_packed(w) && w.cols() == k);
    if !quantized && !dense {
        for ((w, b), out) in ws.iter().zip(outs.iter_mut()) {
            linear(x, rows, w, *b, out, precision);
        }
        return;
    }
    assert!(ws.len() <= MAX_FUSED && ws.len() == outs.len());
    let mut weights: [&Weight; MAX_FUSED] = [ws[0].0; MAX_FUSED];
    for (slot, (w, _)) in weights.iter_mut().zip(ws) {
        *slot = w;
    }
    let weights = &weights[..ws.len()];
    for (o, w) in outs.iter_mut().zip(weights) {
        let n = rows * w.rows();
        *o = &mut std::mem::take(o)[..n];
    }
    if quantized {
        q8_linear_many(&x[..rows * k], rows, weights, outs);
    } else {
        dense_packed_linear(&x[..rows * k], rows, weights, outs);
    }
    for ((w, bias), out) in ws.iter().zip(outs.iter_mut()) {
        if let Some(b) = bias {
            let b = b.as_f32().expect("biases are f32 (converted at load)");
            for row in out.chunks_exact_mut(w.rows()) {
                for (o, bv) in row.iter_mut().zip(b) {
                    *o += bv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::AlignedBytes;
    use std::sync::Arc;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    fn f16_weight(rows: usize, cols: usize, v: &[f32]) -> Weight {
        let bytes: Vec<u8> = v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        Weight::new(
            DType::F16,
            vec![rows, cols],
            Arc::new(AlignedBytes::from_slice(&bytes)),
            0,
            bytes.len(),
        )
        .unwrap()
    }

    /// Every path (row dots, tiled f32 conversion + gemm, dense gemm) equals a naive product.
    #[test]
    fn linear_paths_match_naive_product() {
        let (n_out, k) = (150, 96);
        let wv = values(n_out * k, 1);
        let bias = values(n_out, 2);
        for weight in [
            Weight::from_f32(vec![n_out, k], &wv),
            f16_weight(n_out, k, &wv),
        ] {
            let dense = weight.to_f32_vec();
            for rows in [1, 3, 4, 5, 37] {
                let x = values(rows * k, 3 + rows as u64);
                let mut out = vec![0f32; rows * n_out];
                linear(
                    &x,
                    rows,
                    &weight,
                    Some(&Weight::from_f32(vec![n_out], &bias)),
                    &mut out,
                    MatmulPrecision::Exact,
                );
                for t in 0..rows {
                    for r in 0..n_out {
                        let want: f64 = (0..k)
                            .map(|i| x[t * k + i] as f64 * dense[r * k + i] as f64)
                            .sum::<f64>()
                            + bias[r] as f64;
                        let got = out[t * n_out + r] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{:?} rows {rows} ({t},{r}): {got} vs {want}",
                            weight.dtype
                        );
                    }
                }
            }
        }
    }

    /// F16 weights packed for the fast path give a token the same result (up to f32
    /// summation order) whether it is computed alone (row dots) or in a batch (tiles).
    #[test]
    fn dense_packed_is_batch_independent() {
        if !packed::packable(DType::F16, 64) {
            return;
        }
        let (n, k) = (48, 64);
        let mut w = f16_weight(n, k, &values(n * k, 3));
        let p = PackedRows::pack(DType::F16, w.bytes(), n, k);
        w.set_packed(Arc::new(p));
        let x = values(9 * k, 4);
        let p = MatmulPrecision::Int8Activations;
        let mut batch = vec![0f32; 9 * n];
        linear(&x, 9, &w, None, &mut batch, p);
        for t in [0, 4, 8] {
            let mut alone = vec![0f32; n];
            linear(&x[t * k..(t + 1) * k], 1, &w, None, &mut alone, p);
            for (r, (a, b)) in alone.iter().zip(&batch[t * n..(t + 1) * n]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "t{t} r{r}: {a} vs {b}"
                );
            }
        }
    }

    fn quant_weight(dtype: DType, rows: usize, cols: usize, seed: u64) -> Weight {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let bytes: Vec<u8> = (0..rows)
            .flat_map(|_| qdot_q8::tests::random_row(&mut rng, dtype, cols))
            .collect();
        Weight::new(
            dtype,
            vec![rows, cols],
            Arc::new(AlignedBytes::from_slice(&bytes)),
            0,
            bytes.len(),
        )
        .unwrap()
    }

    /// The integer path (row dots and tiles, every token-block remainder, a partial last
    /// tile) agrees with the exact f64 product within the activation rounding bound
    /// `sum_i |w_i| d_i / 2`, and dense weights stay exact under it.
    #[test]
    fn linear_int8_within_activation_rounding_bound() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for dtype in qdot_q8::tests::TYPES {
            let k = 2 * dtype.block_len().max(64);
            let n_out = 150;
            let w = quant_weight(dtype, n_out, k, 10 + dtype as u64);
            let dense = w.to_f32_vec();
            let bias = values(n_out, 4);
            let bias_w = Weight::from_f32(vec![n_out], &bias);
            for rows in [1, 2, 4, 5, 8, 9, 23] {
                let x: Vec<f32> = (0..rows)
                    .flat_map(|_| qdot_q8::tests::random_x(&mut rng, k))
                    .collect();
                let mut out = vec![f32::NAN; rows * n_out];
                let p = MatmulPrecision::Int8Activations;
                linear(&x, rows, &w, Some(&bias_w), &mut out, p);
                for t in 0..rows {
                    let xt = &x[t * k..(t + 1) * k];
                    let steps: Vec<f64> = xt
                        .chunks_exact(32)
                        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0)
                        .collect();
                    for r in 0..n_out {
                        let wr = &dense[r * k..(r + 1) * k];
                        let want: f64 = wr
                            .iter()
                            .zip(xt)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            + bias[r] as f64;
                        let bound: f64 = wr
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| a.abs() as f64 * steps[i / 32] * 0.5)
                            .sum::<f64>()
                            * 1.01
                            + 1e-4 * (1.0 + want.abs());
                        let got = out[t * n_out + r] as f64;
                        assert!(
                            (got - want).abs() <= bound,
                            "{dtype} rows {rows} ({t},{r}): {got} vs {want} (bound {bound})"
                        );
                    }
                }
            }
        }
        // Dense weights ignore the setting.
        let (n_out, k) = (40, 64);
        let wv = values(n_out * k, 5);
        let w = f16_weight(n_out, k, &wv);
        let x = values(3 * k, 6);
        let mut a = vec![0f32; 3 * n_out];
        let mut b = vec![0f32; 3 * n_out];
        linear(&x, 3, &w, None, &mut a, MatmulPrecision::Exact);
        linear(&x, 3, &w, None, &mut b, MatmulPrecision::Int8Activations);
        assert_eq!(a, b);
    }

    /// Requantizes values to Q8_0 (per 32: `d = max|x| / 127`) or Q4_1 (`d = (max - min) / 15`,
    /// `m = min`), for benchmark weights of the same shapes in the other format.
    fn requantize(dtype: DType, v: &[f32], rows: usize, cols: usize) -> Weight {
        use half::f16;
        let mut bytes = Vec::new();
        for b in v.chunks_exact(32) {
            match dtype {
                DType::Q8_0 => {
                    let d = b.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    bytes.extend(f16::from_f32(d).to_le_bytes());
                    bytes.extend(b.iter().map(|x| (x * id).round() as i8 as u8));
                }
                DType::Q4_1 => {
                    let lo = b.iter().cloned().fold(f32::INFINITY, f32::min);
                    let hi = b.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let d = (hi - lo) / 15.0;
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    bytes.extend(f16::from_f32(d).to_le_bytes());
                    bytes.extend(f16::from_f32(lo).to_le_bytes());
                    let q: Vec<u8> = b
                        .iter()
                        .map(|x| ((x - lo) * id).round().clamp(0.0, 15.0) as u8)
                        .collect();
                    bytes.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
                }
                _ => unreachable!(),
            }
        }
        Weight::new(
            dtype,
            vec![rows, cols],
            Arc::new(AlignedBytes::from_slice(&bytes)),
            0,
            bytes.len(),
        )
        .unwrap()
    }

    /// Seconds per call of `f`: the best of 5 batches of calls, each batch at least 40 ms.
    fn time_it(mut f: impl FnMut()) -> f64 {
        f();
        let mut n = 1;
        loop {
            let t = std::time::Instant::now();
            for _ in 0..n {
                f();
            }
            if t.elapsed().as_secs_f64() >= 0.04 {
                break;
            }
            n *= 2;
        }
        (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..n {
                    f();
                }
                t.elapsed().as_secs_f64() / n as f64
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// On the default model (SmolLM2-135M Q4_1): agreement of the integer path with the
    /// exact one on real layers, and G values/s of both (1 and 2 threads, 1 and 512 rows):
    /// `cargo test --release --lib linear_q8_real_model_bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn linear_q8_real_model_bench() {
        use crate::model::weights::Ffn;
        let path = crate::default_model_path();
        if !path.exists() {
            eprintln!("{} missing: skipped", path.display());
            return;
        }
        let model = crate::Model::load(&path).unwrap();
        let wts = &model.weights;
        let eps = model.config.rms_norm_eps;
        let h = wts.embed.cols();
        let n_tok = 512;
        let ids: Vec<u32> = (0..n_tok as u32)
            .map(|i| (i * 7919 + 13) % wts.embed.rows() as u32)
            .collect();
        let mut emb = vec![0f32; n_tok * h];
        super::super::ops::embed(&ids, &wts.embed, &mut emb);

        // Accuracy: real weights, realistic inputs (normed embeddings; silu(gate) * up).
        eprintln!("accuracy of Int8Activations vs Exact (max |diff| / max |exact|, rms ratio):");
        let run = |x: &[f32], rows: usize, w: &Weight, p: MatmulPrecision| {
            let mut o = vec![0f32; rows * w.rows()];
            linear(x, rows, w, None, &mut o, p);
            o
        };
        let compare = |name: &str, x: &[f32], w: &Weight| {
            let mut line = format!("  {name:<10} {:<5} {}x{}:", w.dtype, w.rows(), w.cols());
            for rows in [1, n_tok] {
                let e = run(x, rows, w, MatmulPrecision::Exact);
                let q = run(x, rows, w, MatmulPrecision::Int8Activations);
                let maxe = e.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let maxd = e
                    .iter()
                    .zip(&q)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
                let rms = |v: &mut dyn Iterator<Item = f64>| {
                    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x * x, n + 1));
                    (s / n as f64).sqrt()
                };
                let rd = rms(&mut e.iter().zip(&q).map(|(a, b)| (a - b) as f64));
                let re = rms(&mut e.iter().map(|&a| a as f64));
                line += &format!(
                    "  rows {rows}: max {:.2e}, rms {:.2e}",
                    maxd / maxe,
                    rd / re
                );
            }
            eprintln!("{line}");
        };
        for li in [0, wts.layers.len() / 2, wts.layers.len() - 1] {
            let l = &wts.layers[li];
            let Ffn::Dense(m) = &l.ffn else { continue };
            let mut xa = vec![0f32; n_tok * h];
            super::super::ops::rms_norm(&emb, n_tok, &l.attn_norm, eps, &mut xa);
            let mut xf = vec![0f32; n_tok * h];
            super::super::ops::rms_norm(&emb, n_tok, &l.ffn_norm, eps, &mut xf);
            eprintln!(" layer {li}:");
            for (name, w) in [("q", &l.q), ("k", &l.k), ("v", &l.v), ("o", &l.o)] {
                compare(name, &xa, w);
            }
            compare("gate", &xf, &m.gate);
            compare("up", &xf, &m.up);
            let inter = m.gate.rows();
            let g = run(&xf, n_tok, &m.gate, MatmulPrecision::Exact);
            let u = run(&xf, n_tok, &m.up, MatmulPrecision::Exact);
            let mut act = vec![0f32; n_tok * inter];
            super::super::ops::silu_mul(&g, &u, n_tok * inter, &mut act);
            compare("down", &act, &m.down);
        }
        let mut xn = vec![0f32; n_tok * h];
        super::super::ops::rms_norm(&emb, n_tok, &wts.norm, eps, &mut xn);
        compare("lm_head", &xn, &wts.lm_head);

        // All linears of one forward step (30 layers + head), 1 row (decode) and 512 rows
        // (prefill; head on 1 row), weights cold as in a real step.
        let mut all: Vec<&Weight> = Vec::new();
        for l in &wts.layers {
            let Ffn::Dense(m) = &l.ffn else { continue };
            all.extend([&l.q, &l.k, &l.v, &l.o, &m.gate, &m.up, &m.down]);
        }
        let xin: Vec<f32> = (0..n_tok * 1536)
            .map(|i| emb[i % emb.len()] * 40.0)
            .collect();
        let mut obuf = vec![0f32; n_tok * 1536];
        let mut hbuf = vec![0f32; wts.lm_head.rows()];
        eprintln!("all linears of one step (ms), exact -> int8:");
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut line = format!("  {threads} threads:");
            for rows in [1, n_tok] {
                let mut step = |p: MatmulPrecision| {
                    pool.install(|| {
                        time_it(|| {
                            for w in &all {
                                let x = &xin[..rows * w.cols()];
                                linear(x, rows, w, None, &mut obuf, p);
                            }
                            linear(&xin[..h], 1, &wts.lm_head, None, &mut hbuf, p);
                        })
                    }) * 1e3
                };
                let e = step(MatmulPrecision::Exact);
                let q = step(MatmulPrecision::Int8Activations);
                line += &format!("  rows {rows}: {e:8.2} -> {q:7.2} ({:.1}x)", e / q);
            }
            eprintln!("{line}");
        }

        // Speed: the real tensors and the same shapes requantized to the other format.
        let l0 = &wts.layers[0];
        let Ffn::Dense(m0) = &l0.ffn else { return };
        let mut weights: Vec<(&str, Weight)> = Vec::new();
        for (name, w) in [
            ("q", &l0.q),
            ("gate", &m0.gate),
            ("down", &m0.down),
            ("lm_head", &wts.lm_head),
        ] {
            let other = if w.dtype == DType::Q8_0 {
                DType::Q4_1
            } else {
                DType::Q8_0
            };
            let re = requantize(other, &w.to_f32_vec(), w.rows(), w.cols());
            let (a, b) = if w.dtype == DType::Q4_1 {
                (w.clone(), re)
            } else {
                (re, w.clone())
            };
            weights.push((name, a));
            weights.push((name, b));
        }
        let big = vec![0.5f32; n_tok * 1536];
        let xs: Vec<f32> = (0..n_tok * 1536)
            .map(|i| emb[i % emb.len()] * 40.0 + big[i] * 0.0)
            .collect();
        eprintln!("speed, G values/s (rows x out x in / s); exact -> int8 (ratio):");
        for (name, w) in &weights {
            let mut line = format!("  {name:<8} {:<5} {:>5}x{:<5}", w.dtype, w.rows(), w.cols());
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for rows in [1, n_tok] {
                    let mut o = vec![0f32; rows * w.rows()];
                    let x = &xs[..rows * w.cols()];
                    let mut speed = |p: MatmulPrecision| {
                        let s = pool.install(|| time_it(|| linear(x, rows, w, None, &mut o, p)));
                        (rows * w.rows() * w.cols()) as f64 / s / 1e9
                    };
                    let e = speed(MatmulPrecision::Exact);
                    let q = speed(MatmulPrecision::Int8Activations);
                    line += &format!("  {threads}t r{rows:<3} {e:6.2} -> {q:6.2} ({:.1}x)", q / e);
                }
            }
            eprintln!("{line}");
        }
    }

    /// End to end on the default model, Exact vs Int8Activations: prefill of 512 tokens
    /// and 128 teacher-forced decode steps (the exact run's greedy tokens), tok/s and how
    /// the logits agree. `LLMRT_BENCH_THREADS` (default 2) sets the threads:
    /// `cargo test --release --lib linear_q8_end_to_end_bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn linear_q8_end_to_end_bench() {
        use crate::backend::cpu::CpuBackend;
        use crate::kv::KvCache;
        use crate::model::arch::ArchSpec;
        use crate::model::decoder::{Decoder, ForwardBatch};
        let path = crate::default_model_path();
        if !path.exists() {
            eprintln!("{} missing: skipped", path.display());
            return;
        }
        let threads: usize = std::env::var("LLMRT_BENCH_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        let (n_prompt, n_gen, bs, max_len) = (512usize, 128usize, 16usize, 1024usize);
        let run = |p: MatmulPrecision, forced: Option<&[u32]>| {
            let model = crate::Model::load(&path).unwrap();
            let spec = ArchSpec::from_config(&model.config);
            let vocab = spec.vocab_size;
            let nblocks = max_len / bs;
            let mut kv = KvCache::new(spec.num_layers, nblocks, bs, spec.kv_size());
            let backend = CpuBackend::with_precision(threads, p);
            let mut dec = Decoder::new(backend, spec, model.weights, n_prompt, max_len);
            let table: Vec<u32> = (0..nblocks as u32).collect();
            let prompt: Vec<u32> = (0..n_prompt as u32)
                .map(|i| (i * 7919 + 13) % vocab as u32)
                .collect();
            let mut batch = ForwardBatch::new(nblocks);
            let mut logits = vec![0f32; vocab];
            let mut all_logits = Vec::new();
            batch.push_seq(&prompt, 0, &table, bs);
            batch.logits_rows.push(n_prompt as u32 - 1);
            let t = std::time::Instant::now();
            dec.forward(&batch, &mut kv, &mut logits);
            let prefill = n_prompt as f64 / t.elapsed().as_secs_f64();
            all_logits.push(logits.clone());
            let mut tokens = Vec::new();
            let t = std::time::Instant::now();
            for i in 0..n_gen {
                let next =
                    match forced {
                        Some(f) => f[i],
                        None => {
                            let (arg, _) = logits.iter().enumerate().fold(
                                (0, f32::NEG_INFINITY),
                                |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                            );
                            arg as u32
                        }
                    };
                tokens.push(next);
                batch.clear();
                batch.push_seq(&[next], n_prompt + i, &table, bs);
                batch.logits_rows.push(0);
                dec.forward(&batch, &mut kv, &mut logits);
                all_logits.push(logits.clone());
            }
            let decode = n_gen as f64 / t.elapsed().as_secs_f64();
            (prefill, decode, tokens, all_logits)
        };
        if std::env::var("LLMRT_BENCH_ONLY").is_ok_and(|v| v == "int8") {
            // For profiling: the integer path alone (greedy, not teacher-forced).
            let (p, d, _, _) = run(MatmulPrecision::Int8Activations, None);
            eprintln!("Int8Activations: prefill {p:.1} tok/s, decode {d:.1} tok/s");
            return;
        }
        let (pe, de, toks, le) = run(MatmulPrecision::Exact, None);
        let (pq, dq, _, lq) = run(MatmulPrecision::Int8Activations, Some(&toks));
        let (pe2, de2, _, _) = run(MatmulPrecision::Exact, Some(&toks));
        let (pq2, dq2, _, _) = run(MatmulPrecision::Int8Activations, Some(&toks));
        eprintln!("{threads} threads, prompt {n_prompt}, {n_gen} decode steps (two runs each):");
        eprintln!("  Exact:           prefill {pe:7.1} / {pe2:7.1} tok/s, decode {de:6.1} / {de2:6.1} tok/s");
        eprintln!("  Int8Activations: prefill {pq:7.1} / {pq2:7.1} tok/s, decode {dq:6.1} / {dq2:6.1} tok/s");
        let argmax = |l: &[f32]| {
            l.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                )
                .0
        };
        let same = le
            .iter()
            .zip(&lq)
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        let maxd = le
            .iter()
            .zip(&lq)
            .map(|(a, b)| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())))
            .fold(0f32, f32::max);
        let spread = le
            .iter()
            .map(|a| {
                let mx = a.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let mn = a.iter().cloned().fold(f32::INFINITY, f32::min);
                mx - mn
            })
            .fold(0f32, f32::max);
        eprintln!(
            "  agreement: top-1 same at {same}/{} steps, max |logit diff| {maxd:.3} (logit range {spread:.1})",
            le.len()
        );
    }
}
