//! AVX2 + FMA (+ F16C) kernels for `qdot`. Same results as `qdot_scalar` up to f32
//! summation order. Only called after `is_x86_feature_detected!` said yes (see qdot.rs).
//!
//! Nibbles and 6-bit quants are unpacked with byte-wise SIMD ops, widened eight at a time
//! to f32 and multiply-added into independent accumulators. Scales that multiply a whole
//! group (Q4_0, Q8_0, Q6_K) are applied once per group to the group's sum.
#![cfg(target_arch = "x86_64")]

use crate::tensor::quant::k_quants::scales_mins_k4;
use crate::tensor::DType;
use std::arch::x86_64::*;

/// A `T` read from an unaligned address. Reading a field of a packed struct compiles to a
/// plain unaligned load, without the precondition checks that `copy_nonoverlapping`-based
/// loads (`_mm*_loadu_*`, `read_unaligned`) carry in builds with debug assertions.
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Unaligned<T: Copy>(T);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load<T: Copy>(p: *const u8) -> T {
    (*(p as *const Unaligned<T>)).0
}

/// `sum_i dequant(row)[i] * x[i]`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `row` must hold exactly `x.len()` values
/// of `dtype` (whole blocks).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(dtype.bytes_for(x.len()), Some(row.len()));
    let nb = x.len() / dtype.block_len();
    let (r, xp) = (row.as_ptr(), x.as_ptr());
    match dtype {
        DType::F32 => dot_f32(r as *const f32, xp, x.len()),
        DType::F16 => dot_f16(r as *const u16, xp, x.len()),
        DType::BF16 => dot_bf16(r as *const u16, xp, x.len()),
        DType::Q4_0 => dot_q4_0(r, xp, nb),
        DType::Q4_1 => dot_q4_1(r, xp, nb),
        DType::Q8_0 => dot_q8_0(r, xp, nb),
        DType::Q4K => dot_q4k(r, xp, nb),
        DType::Q5K => dot_q5k(r, xp, nb),
        DType::Q6K => dot_q6k(r, xp, nb),
    }
}

/// `out[r] = dot(dtype, rows[r], x)` for `out.len()` consecutive rows of `row_bytes` bytes.
///
/// # Safety
/// As `dot`, for every row; `w_rows` must hold at least `out.len() * row_bytes` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows(dtype: DType, w_rows: &[u8], row_bytes: usize, x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w_rows.chunks_exact(row_bytes)) {
        *o = dot(dtype, row, x);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The low 8 unsigned bytes of `v` as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8_lo(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

/// The high 8 unsigned bytes of `v` as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn u8_hi(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i8_lo(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn i8_hi(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld(x: *const f32, i: usize) -> __m256 {
    load::<__m256>(x.wrapping_add(i) as *const u8)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn reduce4(a: [__m256; 4]) -> f32 {
    hsum(_mm256_add_ps(
        _mm256_add_ps(a[0], a[1]),
        _mm256_add_ps(a[2], a[3]),
    ))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(w: *const f32, x: *const f32, n: usize) -> f32 {
    let mut a = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(
                load::<__m256>(w.wrapping_add(i + 8 * k) as *const u8),
                ld(x, i + 8 * k),
                *acc,
            );
        }
        i += 32;
    }
    while i + 8 <= n {
        a[0] = _mm256_fmadd_ps(
            load::<__m256>(w.wrapping_add(i) as *const u8),
            ld(x, i),
            a[0],
        );
        i += 8;
    }
    let mut s = reduce4(a);
    while i < n {
        s += w.wrapping_add(i).read_unaligned() * *x.wrapping_add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(w: *const u16, x: *const f32, n: usize) -> f32 {
    let mut a = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    let load = |i: usize| _mm256_cvtph_ps(load::<__m128i>(w.wrapping_add(i) as *const u8));
    while i + 32 <= n {
        for (k, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load(i + 8 * k), ld(x, i + 8 * k), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        a[0] = _mm256_fmadd_ps(load(i), ld(x, i), a[0]);
        i += 8;
    }
    let mut s = reduce4(a);
    while i < n {
        s += half::f16::from_bits(w.wrapping_add(i).read_unaligned()).to_f32() * *x.wrapping_add(i);
        i += 1;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_bf16(w: *const u16, x: *const f32, n: usize) -> f32 {
    let mut a = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    let load = |i: usize| {
        let h = _mm256_cvtepu16_epi32(load::<__m128i>(w.wrapping_add(i) as *const u8));
        _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
    };
    while i + 32 <= n {
        for (k, acc) in a.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(load(i + 8 * k), ld(x, i + 8 * k), *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        a[0] = _mm256_fmadd_ps(load(i), ld(x, i), a[0]);
        i += 8;
    }
    let mut s = reduce4(a);
    while i < n {
        s +=
            half::bf16::from_bits(w.wrapping_add(i).read_unaligned()).to_f32() * *x.wrapping_add(i);
        i += 1;
    }
    s
}

/// The little-endian f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16p(p: *const u8) -> f32 {
    let bits = u16::from_le(load::<u16>(p));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Q4_0: `d * sum((q - 8) * x)` per block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm_set1_epi8(0x0F);
    let eight = _mm_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in 0..nb {
        let b = w.wrapping_add(i * 18);
        let xb = x.wrapping_add(i * 32);
        let d = _mm256_set1_ps(f16p(b));
        let qs = load::<__m128i>(b.wrapping_add(2));
        let lo = _mm_sub_epi8(_mm_and_si128(qs, m4), eight);
        let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), eight);
        let s0 = _mm256_fmadd_ps(i8_lo(lo), ld(xb, 0), _mm256_mul_ps(i8_hi(lo), ld(xb, 8)));
        let s1 = _mm256_fmadd_ps(i8_lo(hi), ld(xb, 16), _mm256_mul_ps(i8_hi(hi), ld(xb, 24)));
        acc[i & 1] = _mm256_fmadd_ps(d, _mm256_add_ps(s0, s1), acc[i & 1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Q4_1: `w = d * q + m` (exact, as the scalar twin), then `w * x`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm_set1_epi8(0x0F);
    let mut a = [_mm256_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.wrapping_add(i * 20);
        let xb = x.wrapping_add(i * 32);
        let d = _mm256_set1_ps(f16p(b));
        let m = _mm256_set1_ps(f16p(b.wrapping_add(2)));
        let qs = load::<__m128i>(b.wrapping_add(4));
        let lo = _mm_and_si128(qs, m4);
        let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), m4);
        let q = [u8_lo(lo), u8_hi(lo), u8_lo(hi), u8_hi(hi)];
        for k in 0..4 {
            let wv = _mm256_fmadd_ps(q[k], d, m);
            a[k] = _mm256_fmadd_ps(wv, ld(xb, 8 * k), a[k]);
        }
    }
    reduce4(a)
}

/// Q8_0: `d * sum(q * x)` per block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in 0..nb {
        let b = w.wrapping_add(i * 34);
        let xb = x.wrapping_add(i * 32);
        let d = _mm256_set1_ps(f16p(b));
        let q0 = load::<__m128i>(b.wrapping_add(2));
        let q1 = load::<__m128i>(b.wrapping_add(18));
        let s0 = _mm256_fmadd_ps(i8_lo(q0), ld(xb, 0), _mm256_mul_ps(i8_hi(q0), ld(xb, 8)));
        let s1 = _mm256_fmadd_ps(i8_lo(q1), ld(xb, 16), _mm256_mul_ps(i8_hi(q1), ld(xb, 24)));
        acc[i & 1] = _mm256_fmadd_ps(d, _mm256_add_ps(s0, s1), acc[i & 1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// 32 unsigned byte quants of one sub-block, dequantized as `q * scale - min` and
/// multiply-added with `x[0..32]` into the four accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sub_block_u8(q: __m256i, scale: f32, min: f32, x: *const f32, a: &mut [__m256; 4]) {
    let s = _mm256_set1_ps(scale);
    let nm = _mm256_set1_ps(-min);
    let l = _mm256_castsi256_si128(q);
    let h = _mm256_extracti128_si256(q, 1);
    let qf = [u8_lo(l), u8_hi(l), u8_lo(h), u8_hi(h)];
    for k in 0..4 {
        let wv = _mm256_fmadd_ps(qf[k], s, nm);
        a[k] = _mm256_fmadd_ps(wv, ld(x, 8 * k), a[k]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4k(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut a = [_mm256_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.wrapping_add(i * 144);
        let xb = x.wrapping_add(i * 256);
        let d = f16p(b);
        let dmin = f16p(b.wrapping_add(2));
        let (sc, mn) = scales_mins_k4(&load::<[u8; 12]>(b.wrapping_add(4)));
        for c in 0..4 {
            let q = load::<__m256i>(b.wrapping_add(16 + 32 * c));
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let (j1, j2) = (2 * c, 2 * c + 1);
            sub_block_u8(
                lo,
                d * sc[j1] as f32,
                dmin * mn[j1] as f32,
                xb.wrapping_add(32 * j1),
                &mut a,
            );
            sub_block_u8(
                hi,
                d * sc[j2] as f32,
                dmin * mn[j2] as f32,
                xb.wrapping_add(32 * j2),
                &mut a,
            );
        }
    }
    reduce4(a)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5k(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let b16 = _mm256_set1_epi8(0x10);
    let mut a = [_mm256_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.wrapping_add(i * 176);
        let xb = x.wrapping_add(i * 256);
        let d = f16p(b);
        let dmin = f16p(b.wrapping_add(2));
        let (sc, mn) = scales_mins_k4(&load::<[u8; 12]>(b.wrapping_add(4)));
        let qh = load::<__m256i>(b.wrapping_add(16));
        // Fifth bit of sub-block j: 0x10 where bit j of qh is set.
        let high = |j: usize| {
            let bit = _mm256_set1_epi8((1u8 << j) as i8);
            _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), b16)
        };
        for c in 0..4 {
            let q = load::<__m256i>(b.wrapping_add(48 + 32 * c));
            let (j1, j2) = (2 * c, 2 * c + 1);
            let lo = _mm256_or_si256(_mm256_and_si256(q, m4), high(j1));
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), high(j2));
            sub_block_u8(
                lo,
                d * sc[j1] as f32,
                dmin * mn[j1] as f32,
                xb.wrapping_add(32 * j1),
                &mut a,
            );
            sub_block_u8(
                hi,
                d * sc[j2] as f32,
                dmin * mn[j2] as f32,
                xb.wrapping_add(32 * j2),
                &mut a,
            );
        }
    }
    reduce4(a)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6k(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let k32 = _mm256_set1_epi8(32);
    let mut a = [_mm256_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.wrapping_add(i * 210);
        let xb = x.wrapping_add(i * 256);
        let d = f16p(b.wrapping_add(208));
        let sc = load::<[u8; 16]>(b.wrapping_add(192));
        for h in 0..2 {
            let ql0 = load::<__m256i>(b.wrapping_add(64 * h));
            let ql1 = load::<__m256i>(b.wrapping_add(64 * h + 32));
            let qh = load::<__m256i>(b.wrapping_add(128 + 32 * h));
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    _mm256_and_si256(qh, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                ),
            ];
            for (k, qk) in q.iter().enumerate() {
                let qs = _mm256_sub_epi8(*qk, k32);
                let xk = xb.wrapping_add(128 * h + 32 * k);
                let l = _mm256_castsi256_si128(qs);
                let hh = _mm256_extracti128_si256(qs, 1);
                let s0 = _mm256_fmadd_ps(i8_lo(l), ld(xk, 0), _mm256_mul_ps(i8_hi(l), ld(xk, 8)));
                let s1 =
                    _mm256_fmadd_ps(i8_lo(hh), ld(xk, 16), _mm256_mul_ps(i8_hi(hh), ld(xk, 24)));
                let is = 8 * h + 2 * k;
                let d0 = _mm256_set1_ps(d * (sc[is] as i8) as f32);
                let d1 = _mm256_set1_ps(d * (sc[is + 1] as i8) as f32);
                a[k] = _mm256_fmadd_ps(d0, s0, a[k]);
                a[k] = _mm256_fmadd_ps(d1, s1, a[k]);
            }
        }
    }
    reduce4(a)
}
