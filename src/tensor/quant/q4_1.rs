//! Q4_1: 32 values per 20-byte block, `d: f16, m: f16, qs: [u8; 16]`, `x = d * q + m`.

use super::f16_at;

pub const BLOCK_BYTES: usize = 20;

/// Dequantizes one block (`b.len() == 20`) into `out` (32 values).
#[inline]
pub fn dequantize_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = d * (qs[j] & 0x0F) as f32 + m;
        out[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}
