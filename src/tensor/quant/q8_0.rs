//! Q8_0: 32 values per 34-byte block, `d: f16, qs: [i8; 32]`, `x = d * q`.

use super::f16_at;

pub const BLOCK_BYTES: usize = 34;

/// Dequantizes one block (`b.len() == 34`) into `out` (32 values).
#[inline]
pub fn dequantize_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}
