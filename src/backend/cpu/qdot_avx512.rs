//! AVX-512 (F + BW) kernels for `qdot`: 16 f32 lanes per op. Same results as
//! `qdot_scalar` up to f32 summation order. Only called after `is_x86_feature_detected!`
//! said yes (see qdot.rs).
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
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn load<T: Copy>(p: *const u8) -> T {
    (*(p as *const Unaligned<T>)).0
}

/// `sum_i dequant(row)[i] * x[i]`.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW, AVX2, FMA and F16C, and `row` must hold
/// exactly `x.len()` values of `dtype` (whole blocks).
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dot(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(dtype.bytes_for(x.len()), Some(row.len()));
    let nb = x.len() / dtype.block_len();
    let (r, xp) = (row.as_ptr(), x.as_ptr());
    match dtype {
        DType::F32 => dot_dense::<F32>(r, xp, x.len()),
        DType::F16 => dot_dense::<F16>(r, xp, x.len()),
        DType::BF16 => dot_dense::<BF16>(r, xp, x.len()),
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
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dot_rows(dtype: DType, w_rows: &[u8], row_bytes: usize, x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w_rows.chunks_exact(row_bytes)) {
        *o = dot(dtype, row, x);
    }
}

/// The little-endian f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn f16p(p: *const u8) -> f32 {
    let bits = u16::from_le(load::<u16>(p));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn ld(x: *const f32, i: usize) -> __m512 {
    load::<__m512>(x.wrapping_add(i) as *const u8)
}

/// 16 unsigned bytes as 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn u8x16(v: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
}

/// 16 signed bytes as 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn i8x16(v: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn reduce4(a: [__m512; 4]) -> f32 {
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(a[0], a[1]),
        _mm512_add_ps(a[2], a[3]),
    ))
}

/// A dense element type: how to load 16 values (all, or the first `n < 16` under a mask).
trait Dense {
    const BYTES: usize;
    unsafe fn get(p: *const u8, n: usize) -> __m512;
}

struct F32;
struct F16;
struct BF16;

impl Dense for F32 {
    const BYTES: usize = 4;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn get(p: *const u8, n: usize) -> __m512 {
        if n >= 16 {
            load::<__m512>(p)
        } else {
            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p as *const f32)
        }
    }
}

impl Dense for F16 {
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn get(p: *const u8, n: usize) -> __m512 {
        let h = if n >= 16 {
            load::<__m256i>(p)
        } else {
            _mm256_maskz_loadu_epi16(((1u32 << n) - 1) as u16, p as *const i16)
        };
        _mm512_cvtph_ps(h)
    }
}

impl Dense for BF16 {
    const BYTES: usize = 2;
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn get(p: *const u8, n: usize) -> __m512 {
        let h = if n >= 16 {
            load::<__m256i>(p)
        } else {
            _mm256_maskz_loadu_epi16(((1u32 << n) - 1) as u16, p as *const i16)
        };
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn dot_dense<T: Dense>(w: *const u8, x: *const f32, n: usize) -> f32 {
    let mut a = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, acc) in a.iter_mut().enumerate() {
            let j = i + 16 * k;
            *acc = _mm512_fmadd_ps(T::get(w.wrapping_add(j * T::BYTES), 16), ld(x, j), *acc);
        }
        i += 64;
    }
    while i < n {
        let r = n - i;
        let xv = if r >= 16 {
            ld(x, i)
        } else {
            _mm512_maskz_loadu_ps(((1u32 << r) - 1) as u16, x.wrapping_add(i))
        };
        a[0] = _mm512_fmadd_ps(T::get(w.wrapping_add(i * T::BYTES), r), xv, a[0]);
        i += 16;
    }
    reduce4(a)
}

/// Q4_0: `d * sum((q - 8) * x)` per block.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn dot_q4_0(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm_set1_epi8(0x0F);
    let eight = _mm_set1_epi8(8);
    let mut a = [_mm512_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.wrapping_add(i * 18);
        let xb = x.wrapping_add(i * 32);
        let d = _mm512_set1_ps(f16p(b));
        let qs = load::<__m128i>(b.wrapping_add(2));
        let lo = _mm_sub_epi8(_mm_and_si128(qs, m4), eight);
        let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), m4), eight);
        let s = _mm512_fmadd_ps(i8x16(lo), ld(xb, 0), _mm512_mul_ps(i8x16(hi), ld(xb, 16)));
        a[i & 3] = _mm512_fmadd_ps(d, s, a[i & 3]);
    }
    reduce4(a)
}

/// Q4_1: `w = d * q + m` (exact, as the scalar twin), then `w * x`.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn dot_q4_1(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm_set1_epi8(0x0F);
    let mut a = [_mm512_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.wrapping_add(i * 20);
        let xb = x.wrapping_add(i * 32);
        let d = _mm512_set1_ps(f16p(b));
        let m = _mm512_set1_ps(f16p(b.wrapping_add(2)));
        let qs = load::<__m128i>(b.wrapping_add(4));
        let lo = u8x16(_mm_and_si128(qs, m4));
        let hi = u8x16(_mm_and_si128(_mm_srli_epi16(qs, 4), m4));
        let k = 2 * (i & 1);
        a[k] = _mm512_fmadd_ps(_mm512_fmadd_ps(lo, d, m), ld(xb, 0), a[k]);
        a[k + 1] = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, d, m), ld(xb, 16), a[k + 1]);
    }
    reduce4(a)
}

/// Q8_0: `d * sum(q * x)` per block.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn dot_q8_0(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let mut a = [_mm512_setzero_ps(); 4];
    for i in 0..nb {
        let b = w.wrapping_add(i * 34);
        let xb = x.wrapping_add(i * 32);
        let d = _mm512_set1_ps(f16p(b));
        let q0 = i8x16(load::<__m128i>(b.wrapping_add(2)));
        let q1 = i8x16(load::<__m128i>(b.wrapping_add(18)));
        let s = _mm512_fmadd_ps(q0, ld(xb, 0), _mm512_mul_ps(q1, ld(xb, 16)));
        a[i & 3] = _mm512_fmadd_ps(d, s, a[i & 3]);
    }
    reduce4(a)
}

/// 32 unsigned byte quants of one sub-block, dequantized as `q * scale - min` and
/// multiply-added with `x[0..32]` into two of the accumulators.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn sub_block_u8(q: __m256i, scale: f32, min: f32, x: *const f32, a: &mut [__m512]) {
    let s = _mm512_set1_ps(scale);
    let nm = _mm512_set1_ps(-min);
    let l = u8x16(_mm256_castsi256_si128(q));
    let h = u8x16(_mm256_extracti128_si256(q, 1));
    a[0] = _mm512_fmadd_ps(_mm512_fmadd_ps(l, s, nm), ld(x, 0), a[0]);
    a[1] = _mm512_fmadd_ps(_mm512_fmadd_ps(h, s, nm), ld(x, 16), a[1]);
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn dot_q4k(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut a = [_mm512_setzero_ps(); 4];
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
            let (a01, a23) = a.split_at_mut(2);
            sub_block_u8(
                lo,
                d * sc[j1] as f32,
                dmin * mn[j1] as f32,
                xb.wrapping_add(32 * j1),
                a01,
            );
            sub_block_u8(
                hi,
                d * sc[j2] as f32,
                dmin * mn[j2] as f32,
                xb.wrapping_add(32 * j2),
                a23,
            );
        }
    }
    reduce4(a)
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn dot_q5k(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let b16 = _mm256_set1_epi8(0x10);
    let mut a = [_mm512_setzero_ps(); 4];
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
            let (a01, a23) = a.split_at_mut(2);
            sub_block_u8(
                lo,
                d * sc[j1] as f32,
                dmin * mn[j1] as f32,
                xb.wrapping_add(32 * j1),
                a01,
            );
            sub_block_u8(
                hi,
                d * sc[j2] as f32,
                dmin * mn[j2] as f32,
                xb.wrapping_add(32 * j2),
                a23,
            );
        }
    }
    reduce4(a)
}

#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn dot_q6k(w: *const u8, x: *const f32, nb: usize) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let k32 = _mm256_set1_epi8(32);
    let mut a = [_mm512_setzero_ps(); 4];
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
                let is = 8 * h + 2 * k;
                // (d * scale) * q, rounded as the scalar twin, then times x.
                let d0 = _mm512_set1_ps(d * (sc[is] as i8) as f32);
                let d1 = _mm512_set1_ps(d * (sc[is + 1] as i8) as f32);
                let w0 = _mm512_mul_ps(i8x16(_mm256_castsi256_si128(qs)), d0);
                let w1 = _mm512_mul_ps(i8x16(_mm256_extracti128_si256(qs, 1)), d1);
                a[k] = _mm512_fmadd_ps(w0, ld(xk, 0), a[k]);
                a[k] = _mm512_fmadd_ps(w1, ld(xk, 16), a[k]);
            }
        }
    }
    reduce4(a)
}
