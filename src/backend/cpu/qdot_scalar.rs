//! Scalar reference for `qdot`: dequantize each block exactly, then multiply-add in f32.
//! The SIMD kernels (qdot_avx2.rs, qdot_avx512.rs) are tested against these functions.

use crate::tensor::quant::{k_quants, q4_0, q4_1, q8_0};
use crate::tensor::DType;
use half::{bf16, f16};

/// `sum_i dequant(row)[i] * x[i]` in f32. `row` must hold exactly `x.len()` values.
pub fn dot(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    match dtype {
        DType::F32 => dense(row.chunks_exact(4), x, |s| {
            f32::from_le_bytes([s[0], s[1], s[2], s[3]])
        }),
        DType::F16 => dense(row.chunks_exact(2), x, |s| {
            f16::from_le_bytes([s[0], s[1]]).to_f32()
        }),
        DType::BF16 => dense(row.chunks_exact(2), x, |s| {
            bf16::from_le_bytes([s[0], s[1]]).to_f32()
        }),
        DType::Q4_0 => blocks(dtype, row, x, q4_0::dequantize_block),
        DType::Q4_1 => blocks(dtype, row, x, q4_1::dequantize_block),
        DType::Q8_0 => blocks(dtype, row, x, q8_0::dequantize_block),
        DType::Q4K => blocks(dtype, row, x, k_quants::dequantize_q4k_block),
        DType::Q5K => blocks(dtype, row, x, k_quants::dequantize_q5k_block),
        DType::Q6K => blocks(dtype, row, x, k_quants::dequantize_q6k_block),
    }
}

/// `out[r] = dot(dtype, rows[r], x)` for `out.len()` consecutive rows of `row_bytes` bytes.
pub fn dot_rows(dtype: DType, w_rows: &[u8], row_bytes: usize, x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w_rows.chunks_exact(row_bytes)) {
        *o = dot(dtype, row, x);
    }
}

/// Eight interleaved partial sums, added pairwise at the end.
#[inline]
fn sum8(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

fn dense<'a>(row: impl Iterator<Item = &'a [u8]>, x: &[f32], conv: impl Fn(&[u8]) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (s, &xv)) in row.zip(x).enumerate() {
        acc[i % 8] += conv(s) * xv;
    }
    sum8(acc)
}

fn blocks(dtype: DType, row: &[u8], x: &[f32], f: fn(&[u8], &mut [f32])) -> f32 {
    let n = dtype.block_len();
    let mut buf = [0f32; 256];
    let mut acc = [0f32; 8];
    for (b, xs) in row.chunks_exact(dtype.block_bytes()).zip(x.chunks_exact(n)) {
        let w = &mut buf[..n];
        f(b, w);
        for (i, (&wv, &xv)) in w.iter().zip(xs).enumerate() {
            acc[i % 8] += wv * xv;
        }
    }
    sum8(acc)
}
