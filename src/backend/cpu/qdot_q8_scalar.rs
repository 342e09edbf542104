//! Scalar reference for `qdot_q8`: activation quantization, the unpacked form of every
//! weight block, and integer dot products. The SIMD kernels (qdot_q8_avx2.rs,
//! qdot_q8_avx512.rs) compute the same integer sums and are tested against these.
//!
//! Every supported weight block is viewed as unsigned 8-bit values `v` with, per sub-block
//! `j` of `SUB` values (32, or 16 for Q6_K), a scale `sc[j]` and a min coefficient `mn[j]`,
//! such that the dequantized weight is `sc[j] * v + mn[j] * 1`. Against activations
//! `x = dx * q` (per 32 values) the dot product of a sub-block is then
//! `sc[j] * dx * sum(v * q) + mn[j] * sx`, where `sx = dx * sum(q)` over the sub-block.
//!
//! | type | v | sc | mn |
//! |---|---|---|---|
//! | Q4_0 | nibble | d | -8 d |
//! | Q4_1 | nibble | d | m |
//! | Q8_0 | q + 128 | d | -128 d |
//! | Q4_K | nibble | d * scale_j | -dmin * min_j |
//! | Q5_K | 5-bit | d * scale_j | -dmin * min_j |
//! | Q6_K | 6-bit | d * scale_j | -32 d * scale_j |
//!
//! (`mn * sx` is exact algebra: `sum((sc v + mn) dx q) = sc dx sum(v q) + mn dx sum(q)`.)

use super::qdot_q8::{Q8Row, QK};
use crate::tensor::quant::f16_at;
use crate::tensor::quant::k_quants::scales_mins_k4;
use crate::tensor::DType;

/// Values per scale of `dtype`'s sub-blocks (16 for Q6_K, else 32).
#[inline(always)]
pub const fn sub_len(dtype: DType) -> usize {
    match dtype {
        DType::Q6K => 16,
        _ => 32,
    }
}

/// Quantizes one row: per 32 values `d = max|x| / 127`, `q = round_ties_even(x / d)`
/// (computed as `x * (1 / d)`), `ds = [d, d * sum(q)]` per block and `s16 = d * sum(q)`
/// per 16 values. `x.len()` must be a multiple of 32.
#[inline(always)]
pub fn quantize_row(x: &[f32], qs: &mut [i8], ds: &mut [f32], s16: &mut [f32]) {
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sums = [0i32; 2];
        for (i, &v) in xb.iter().enumerate() {
            let q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i32;
            qs[b * QK + i] = q as i8;
            sums[i / 16] += q;
        }
        ds[2 * b] = d;
        ds[2 * b + 1] = d * (sums[0] + sums[1]) as f32;
        s16[2 * b] = d * sums[0] as f32;
        s16[2 * b + 1] = d * sums[1] as f32;
    }
}

/// Unpacks one stored block of `dtype` into `v` (`block_len` values) and per-sub-block
/// `sc`, `mn` (see the module table). With `signed_q8`, Q8_0 values are the stored
/// signed bytes (as u8 bits) with `mn = 0`, for kernels that multiply signed by signed.
#[inline(always)]
pub fn unpack_block(
    dtype: DType,
    b: &[u8],
    v: &mut [u8],
    sc: &mut [f32],
    mn: &mut [f32],
    signed_q8: bool,
) {
    match dtype {
        DType::Q4_0 | DType::Q4_1 => {
            let d = f16_at(b, 0);
            let (m, qs) = if dtype == DType::Q4_0 {
                (-8.0 * d, &b[2..18])
            } else {
                (f16_at(b, 2), &b[4..20])
            };
            for j in 0..16 {
                v[j] = qs[j] & 0x0F;
                v[j + 16] = qs[j] >> 4;
            }
            sc[0] = d;
            mn[0] = m;
        }
        DType::Q8_0 => {
            let d = f16_at(b, 0);
            let flip = if signed_q8 { 0 } else { 0x80 };
            for (o, &q) in v[..32].iter_mut().zip(&b[2..34]) {
                *o = q ^ flip;
            }
            sc[0] = d;
            mn[0] = if signed_q8 { 0.0 } else { -128.0 * d };
        }
        DType::Q4K | DType::Q5K => {
            let d = f16_at(b, 0);
            let dmin = f16_at(b, 2);
            let (s, m) = scales_mins_k4(&b[4..16]);
            for j in 0..8 {
                sc[j] = d * s[j] as f32;
                mn[j] = -(dmin * m[j] as f32);
            }
            if dtype == DType::Q4K {
                let qs = &b[16..144];
                for c in 0..4 {
                    for l in 0..32 {
                        v[64 * c + l] = qs[32 * c + l] & 0x0F;
                        v[64 * c + 32 + l] = qs[32 * c + l] >> 4;
                    }
                }
            } else {
                let qh = &b[16..48];
                let qs = &b[48..176];
                for c in 0..4 {
                    for l in 0..32 {
                        let h = qh[l] >> (2 * c);
                        v[64 * c + l] = (qs[32 * c + l] & 0x0F) | ((h & 1) << 4);
                        v[64 * c + 32 + l] = (qs[32 * c + l] >> 4) | ((h & 2) << 3);
                    }
                }
            }
        }
        DType::Q6K => {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for h in 0..2 {
                let (ql, qh) = (&ql[64 * h..64 * h + 64], &qh[32 * h..32 * h + 32]);
                let o = &mut v[128 * h..128 * h + 128];
                for l in 0..32 {
                    o[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
                    o[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
                    o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for g in 0..16 {
                sc[g] = d * (scales[g] as i8) as f32;
                mn[g] = -32.0 * sc[g];
            }
        }
        _ => unreachable!("qdot_q8: {dtype} has no integer kernel"),
    }
}

/// `sum_i dequant(row)[i] * dx_i q_i`: per sub-block the exact integer `sum(v * q)`,
/// scaled in f32 as `(sc * dx) * isum + mn * sx`. `row` holds exactly `x.qs.len()` values.
pub fn dot(dtype: DType, row: &[u8], x: Q8Row) -> f32 {
    let bl = dtype.block_len();
    let sub = sub_len(dtype);
    let mut v = [0u8; 256];
    let mut sc = [0f32; 16];
    let mut mn = [0f32; 16];
    let (mut acc, mut accm) = (0f32, 0f32);
    for (bi, blk) in row.chunks_exact(dtype.block_bytes()).enumerate() {
        unpack_block(dtype, blk, &mut v[..bl], &mut sc, &mut mn, false);
        for j in 0..bl / sub {
            let base = bi * bl + j * sub;
            let isum: i32 = v[j * sub..(j + 1) * sub]
                .iter()
                .zip(&x.qs[base..base + sub])
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            let dx = x.ds[2 * (base / QK)];
            let sx = if sub == QK {
                x.ds[2 * (base / QK) + 1]
            } else {
                x.s16[base / 16]
            };
            acc += (sc[j] * dx) * isum as f32;
            accm += mn[j] * sx;
        }
    }
    acc + accm
}

/// `out[r * xs.len() + t] = dot(dtype, row r, xs[t])` for `out.len() / xs.len()` rows of
/// `row_bytes` bytes.
pub fn dot_rows(dtype: DType, w_rows: &[u8], row_bytes: usize, xs: &[Q8Row], out: &mut [f32]) {
    for (o, row) in out
        .chunks_exact_mut(xs.len())
        .zip(w_rows.chunks_exact(row_bytes))
    {
        for (ot, x) in o.iter_mut().zip(xs) {
            *ot = dot(dtype, row, *x);
        }
    }
}
