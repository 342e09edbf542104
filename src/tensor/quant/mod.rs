//! Conversion of stored blocks to f32. (Block formats: filled in by the quant module work.)

use super::DType;
use half::{bf16, f16};

/// Converts `dst.len()` values stored as `dtype` in `src` to f32.
/// `src` must hold exactly the bytes of those values (whole blocks).
pub fn dequantize(dtype: DType, src: &[u8], dst: &mut [f32]) {
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
        _ => unimplemented!("dequantize {dtype}"),
    }
}
