//! Conversion of stored blocks to f32, exactly as ggml / gguf-py dequantize them.
//!
//! Block layouts (GGML, little-endian; `f16` is IEEE half precision):
//!
//! | type | values | bytes | layout |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | `d: f16, qs: [u8; 16]`; `x[j] = d * (lo(qs[j]) - 8)`, `x[j + 16] = d * (hi(qs[j]) - 8)` |
//! | Q4_1 | 32 | 20 | `d: f16, m: f16, qs: [u8; 16]`; `x = d * q + m` with the same nibble order |
//! | Q8_0 | 32 | 34 | `d: f16, qs: [i8; 32]`; `x = d * q` |
//! | Q4_K | 256 | 144 | `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: 8 sub-blocks of 32 with 6-bit scale and min |
//! | Q5_K | 256 | 176 | as Q4_K plus `qh: [u8; 32]` (fifth bit) before `qs` |
//! | Q6_K | 256 | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` |
//!
//! Every product of a scale and a quant is computed in f32 in the same order as gguf-py,
//! so the results are bitwise equal to `gguf.quants.dequantize` (tests/quant.rs checks this).

pub mod k_quants;
pub mod q4_0;
pub mod q4_1;
pub mod q8_0;

use super::DType;
use half::{bf16, f16};

/// Reads the little-endian f16 at `b[off..off + 2]` as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Converts `dst.len()` values stored as `dtype` in `src` to f32.
/// `src` must hold exactly the bytes of those values (whole blocks).
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        Some(src.len()),
        dtype.bytes_for(dst.len()),
        "dequantize {dtype}: {} bytes do not hold {} values",
        src.len(),
        dst.len()
    );
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::Q4_0 => blocks(dtype, src, dst, q4_0::dequantize_block),
        DType::Q4_1 => blocks(dtype, src, dst, q4_1::dequantize_block),
        DType::Q8_0 => blocks(dtype, src, dst, q8_0::dequantize_block),
        DType::Q4K => blocks(dtype, src, dst, k_quants::dequantize_q4k_block),
        DType::Q5K => blocks(dtype, src, dst, k_quants::dequantize_q5k_block),
        DType::Q6K => blocks(dtype, src, dst, k_quants::dequantize_q6k_block),
    }
}

#[inline]
fn blocks(dtype: DType, src: &[u8], dst: &mut [f32], f: fn(&[u8], &mut [f32])) {
    for (b, out) in src
        .chunks_exact(dtype.block_bytes())
        .zip(dst.chunks_exact_mut(dtype.block_len()))
    {
        f(b, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_formula() {
        // d = 0.5, m = -1.0, qs[j] = (j & 15) | ((15 - (j & 15)) << 4)
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let mut out = [0f32; 32];
        dequantize(DType::Q4_1, &b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q8_0_formula() {
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        for j in 0..32i8 {
            b.push((j - 16) as u8);
        }
        let mut out = [0f32; 32];
        dequantize(DType::Q8_0, &b, &mut out);
        for (j, v) in out.iter().enumerate() {
            assert_eq!(*v, 0.25 * (j as f32 - 16.0));
        }
    }
}
