//! The "K" super-block formats (256 values per block): Q4_K, Q5_K, Q6_K.

use super::f16_at;

pub const QK_K: usize = 256;

/// Unpacks the 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K block from its 12
/// packed bytes (ggml's `get_scale_min_k4`).
#[inline]
pub fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for j in 4..8 {
        sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
    (sc, mn)
}

/// Q4_K block (144 bytes): `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
/// Sub-block `2c` is the low nibbles of `qs[32c..32c + 32]`, sub-block `2c + 1` the high
/// nibbles; `x = (d * sc) * q - dmin * m`.
#[inline]
pub fn dequantize_q4k_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = scales_mins_k4(&b[4..16]);
    let qs = &b[16..144];
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (d1, m1) = (d * sc[2 * c] as f32, dmin * mn[2 * c] as f32);
        let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * mn[2 * c + 1] as f32);
        for l in 0..32 {
            out[64 * c + l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K block (176 bytes): `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
/// As Q4_K, with bit `j` of `qh[l]` as the fifth bit of value `l` of sub-block `j`.
#[inline]
pub fn dequantize_q5k_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, mn) = scales_mins_k4(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let q = &qs[32 * c..32 * c + 32];
        let (j1, j2) = (2 * c, 2 * c + 1);
        let (d1, m1) = (d * sc[j1] as f32, dmin * mn[j1] as f32);
        let (d2, m2) = (d * sc[j2] as f32, dmin * mn[j2] as f32);
        for l in 0..32 {
            let lo = (q[l] & 0x0F) | (((qh[l] >> j1) & 1) << 4);
            let hi = (q[l] >> 4) | (((qh[l] >> j2) & 1) << 4);
            out[64 * c + l] = d1 * lo as f32 - m1;
            out[64 * c + 32 + l] = d2 * hi as f32 - m2;
        }
    }
}

/// Q6_K block (210 bytes): `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
/// Two halves of 128 values; in half `h`, value `32k + l` (k < 4, l < 32) has low bits
/// from nibble `k / 2` of `ql[64h + 32(k % 2) + l]` and high bits `(qh[32h + l] >> 2k) & 3`;
/// `x = (d * scales[i / 16]) * (q - 32)`.
#[inline]
pub fn dequantize_q6k_block(b: &[u8], out: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for h in 0..2 {
        let ql = &ql[64 * h..64 * h + 64];
        let qh = &qh[32 * h..32 * h + 32];
        let sc = &scales[8 * h..8 * h + 8];
        let o = &mut out[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = (d * (sc[is] as i8) as f32) * q1 as f32;
            o[l + 32] = (d * (sc[is + 2] as i8) as f32) * q2 as f32;
            o[l + 64] = (d * (sc[is + 4] as i8) as f32) * q3 as f32;
            o[l + 96] = (d * (sc[is + 6] as i8) as f32) * q4 as f32;
        }
    }
}
