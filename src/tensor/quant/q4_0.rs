//! Q4_0: 32 values per 18-byte block, `d: f16, qs: [u8; 16]`, `x = d * (q - 8)`.

use super::f16_at;

pub const BLOCK_BYTES: usize = 18;

/// Dequantizes one block (`b.len() == 18`) into `out` (32 values).
#[inline]
pub fn dequantize_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
        out[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}
