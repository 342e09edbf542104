//! Matrix products against stored weights: `out[t, r] = x[t] · w[r] (+ bias[r])`.
//!
//! Dense f32 weights go to the `gemm` crate whole. Other types are either dotted row by
//! row straight from their stored blocks (few tokens: decode, memory bound) or converted
//! to f32 a tile of rows at a time into a per-thread buffer and multiplied with `gemm`
//! (many tokens: prefill, compute bound). Both keep f32 semantics.

use super::qdot;
use super::scratch::with_scratch;
use super::SyncPtr;
use crate::tensor::{DType, Weight};
use gemm::Parallelism;
use rayon::prelude::*;

/// Up to this many token rows, products are row dots from the stored blocks.
const MAX_ROWS_FOR_DOT: usize = 4;
/// Weight rows per parallel task.
const TILE_ROWS: usize = 64;

pub fn linear(x: &[f32], rows: usize, w: &Weight, bias: Option<&Weight>, out: &mut [f32]) {
    let (n_out, k) = (w.rows(), w.cols());
    let x = &x[..rows * k];
    let out = &mut out[..rows * n_out];
    if w.dtype == DType::F32 && rows > MAX_ROWS_FOR_DOT {
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
}
