//! AVX-512 VNNI kernels for `qdot_q8`: `vpdpbusd` (unsigned weight bytes x signed
//! activation bytes, four products per 32-bit lane). Same integer sums as
//! `qdot_q8_scalar`; results differ only in f32 summation order. Only called after
//! `qdot_q8::available(Isa::Avx512)` said yes.
//!
//! Row dots (few tokens) take two 32-value blocks (Q4_0, Q4_1, Q8_0) or 64 values of a
//! super-block (K-quants) per 512-bit `vpdpbusd`, then scale the 32-bit lane sums in f32
//! with a per-lane vector of `sc * dx`. The tile kernel (many tokens) multiplies 32
//! interleaved weight rows by broadcast 4-byte groups of 6 tokens.
#![cfg(target_arch = "x86_64")]

use super::qdot_q8::{Q8Acts, Q8Block, Q8Row, Tile, QK, TILE_ROWS, TOKEN_BLOCK};
use super::qdot_q8_scalar::sub_len;
use crate::tensor::quant::k_quants::scales_mins_k4;
use crate::tensor::DType;
use std::arch::x86_64::*;

/// A `T` at an unaligned address. Reading or writing a field of a packed struct compiles
/// to a plain unaligned access, without the precondition checks that `_mm*_loadu_*` and
/// `read_unaligned` carry in builds with debug assertions.
#[derive(Clone, Copy)]
#[repr(C, packed)]
pub(super) struct Unaligned<T: Copy>(T);

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn load<T: Copy>(p: *const u8) -> T {
    (*(p as *const Unaligned<T>)).0
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn store<T: Copy>(p: *mut u8, v: T) {
    *(p as *mut Unaligned<T>) = Unaligned(v);
}

/// The f32 at `p + 4 i`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn f32_at(p: *const f32, i: usize) -> f32 {
    load::<f32>(p.wrapping_add(i) as *const u8)
}

/// The little-endian f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f16p(p: *const u8) -> f32 {
    let bits = u16::from_le(load::<u16>(p));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Quantizes one row (see `qdot_q8_scalar::quantize_row`; bitwise the same results).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `x.len()` a multiple of 32, `qs` at least
/// as long, `ds` and `s16` at least `x.len() / 16` long.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_row(x: &[f32], qs: &mut [i8], ds: &mut [f32], s16: &mut [f32]) {
    let nb = x.len() / QK;
    assert!(qs.len() >= x.len() && ds.len() >= 2 * nb && s16.len() >= 2 * nb);
    let (xp, qp) = (x.as_ptr() as *const u8, qs.as_mut_ptr() as *mut u8);
    let flip = _mm256_set1_epi8(0x80u8 as i8);
    for b in 0..nb {
        let v0 = load::<__m512>(xp.wrapping_add(128 * b));
        let v1 = load::<__m512>(xp.wrapping_add(128 * b + 64));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        // |x * id| <= 127 (up to rounding) for finite x: the saturating pack is the clamp.
        let q0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)));
        let q1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
        let q = _mm256_set_m128i(q1, q0);
        store(qp.wrapping_add(32 * b), q);
        // Sums of 8 bytes (offset by 128 each), then of 16.
        let sad = _mm256_sad_epu8(_mm256_xor_si256(q, flip), _mm256_setzero_si256());
        let sad = _mm256_add_epi64(sad, _mm256_shuffle_epi32(sad, 0b01_00_11_10));
        let s0 = _mm256_extract_epi32(sad, 0) - 2048;
        let s1 = _mm256_extract_epi32(sad, 4) - 2048;
        ds[2 * b] = d;
        ds[2 * b + 1] = d * (s0 + s1) as f32;
        s16[2 * b] = d * s0 as f32;
        s16[2 * b + 1] = d * s1 as f32;
    }
}

/// Pointers to the activation rows of up to 4 tokens.
struct X<const T: usize> {
    qs: [*const u8; T],
    ds: [*const f32; T],
    s16: [*const f32; T],
}

impl<const T: usize> X<T> {
    fn new(xs: &[Q8Row]) -> Self {
        X {
            qs: std::array::from_fn(|t| xs[t].qs.as_ptr() as *const u8),
            ds: std::array::from_fn(|t| xs[t].ds.as_ptr()),
            s16: std::array::from_fn(|t| xs[t].s16.as_ptr()),
        }
    }
}

/// `out[r * xs.len() + t] = dot(row r, xs[t])` (see `qdot_q8::dot_rows`).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; sizes as checked by `qdot_q8::dot_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_rows(
    dtype: DType,
    w_rows: &[u8],
    row_bytes: usize,
    xs: &[Q8Row],
    out: &mut [f32],
) {
    let nt = xs.len();
    let mut t0 = 0;
    while t0 < nt {
        let tn = (nt - t0).min(4);
        let g = &xs[t0..t0 + tn];
        match tn {
            1 => rows_t::<1>(dtype, w_rows, row_bytes, g, out, nt, t0),
            2 => rows_t::<2>(dtype, w_rows, row_bytes, g, out, nt, t0),
            3 => rows_t::<3>(dtype, w_rows, row_bytes, g, out, nt, t0),
            _ => rows_t::<4>(dtype, w_rows, row_bytes, g, out, nt, t0),
        }
        t0 += tn;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_t<const T: usize>(
    dtype: DType,
    w_rows: &[u8],
    row_bytes: usize,
    xs: &[Q8Row],
    out: &mut [f32],
    ld: usize,
    t0: usize,
) {
    let x = X::<T>::new(xs);
    let nb = xs[0].qs.len() / dtype.block_len();
    let n = out.len() / ld;
    let mut r0 = 0;
    // Two rows at a time for the 32-value formats (shared activation loads, more ILP);
    // with more tokens the accumulators would not fit in registers.
    if T <= 2 && matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0) {
        while r0 + 2 <= n {
            let w = [0, 1].map(|i| w_rows.as_ptr().wrapping_add((r0 + i) * row_bytes));
            let res: [[f32; T]; 2] = match dtype {
                DType::Q4_0 => dot_small::<T, 0, 2>(w, nb, &x),
                DType::Q4_1 => dot_small::<T, 1, 2>(w, nb, &x),
                _ => dot_small::<T, 2, 2>(w, nb, &x),
            };
            for (i, rr) in res.iter().enumerate() {
                let o = (r0 + i) * ld + t0;
                out[o..o + T].copy_from_slice(rr);
            }
            r0 += 2;
        }
    }
    for r in r0..n {
        let w = w_rows.as_ptr().wrapping_add(r * row_bytes);
        let res: [f32; T] = match dtype {
            DType::Q4_0 => dot_small::<T, 0, 1>([w], nb, &x)[0],
            DType::Q4_1 => dot_small::<T, 1, 1>([w], nb, &x)[0],
            DType::Q8_0 => dot_small::<T, 2, 1>([w], nb, &x)[0],
            DType::Q4K => dot_q45k::<T, false>(w, nb, &x),
            DType::Q5K => dot_q45k::<T, true>(w, nb, &x),
            DType::Q6K => dot_q6k::<T>(w, nb, &x),
            _ => unreachable!(),
        };
        out[r * ld + t0..r * ld + t0 + T].copy_from_slice(&res);
    }
}

/// Sum of lanes 1 and 3.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn lanes13(v: __m128) -> f32 {
    let a: [f32; 4] = std::mem::transmute(v);
    a[1] + a[3]
}

/// Bytes per block of `KIND` (Q4_0, Q4_1, Q8_0).
const SMALL_BB: [usize; 3] = [18, 20, 34];

/// The weight bytes of blocks A (at `a`) and B (the next; zero when `!full`) as one
/// vector `[A 0..32, B 0..32]` of unsigned values (Q8_0: `q + 128`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn small_w<const KIND: usize>(a: *const u8, full: bool) -> __m512i {
    let b = a.wrapping_add(SMALL_BB[KIND]);
    if KIND == 2 {
        let qa = load::<__m256i>(a.wrapping_add(2));
        let qb = if full {
            load::<__m256i>(b.wrapping_add(2))
        } else {
            _mm256_setzero_si256()
        };
        let z = _mm512_inserti64x4(_mm512_castsi256_si512(qa), qb, 1);
        _mm512_xor_si512(z, _mm512_set1_epi8(0x80u8 as i8))
    } else {
        let off = if KIND == 0 { 2 } else { 4 };
        let qa = load::<__m128i>(a.wrapping_add(off));
        let qb = if full {
            load::<__m128i>(b.wrapping_add(off))
        } else {
            _mm_setzero_si128()
        };
        let t = _mm256_inserti128_si256(_mm256_castsi128_si256(qa), qb, 1);
        let z = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);
        let perm = _mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0);
        _mm512_and_si512(_mm512_permutexvar_epi64(perm, z), _mm512_set1_epi8(0x0F))
    }
}

/// `[cA, mA, cB, mB]` of blocks A (at `a`) and B (zero when `!full`): Q4_1 stores
/// `(d, m)`; Q4_0 and Q8_0 give `(d, d)` (their offset is applied at the end).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn small_meta<const KIND: usize>(a: *const u8, full: bool) -> __m128 {
    let bits = |p: *const u8| -> i32 {
        if KIND == 1 {
            load::<i32>(p)
        } else {
            let d = load::<u16>(p) as u32;
            (d | (d << 16)) as i32
        }
    };
    let ma = bits(a);
    let mb = if full {
        bits(a.wrapping_add(SMALL_BB[KIND]))
    } else {
        0
    };
    _mm_cvtph_ps(_mm_set_epi32(0, 0, mb, ma))
}

/// Q4_0 (`KIND` 0), Q4_1 (1), Q8_0 (2) for `R` rows at once, two blocks per step. The
/// weight bytes of blocks A and B form one 512-bit vector `[A 0..32, B 0..32]`; the f16
/// scales give `[cA, mA, cB, mB]` which, times the activations' `[dA, sA, dB, sB]`, are
/// the two lane scales and the two min terms.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_small<const T: usize, const KIND: usize, const R: usize>(
    w: [*const u8; R],
    nb: usize,
    x: &X<T>,
) -> [[f32; T]; R] {
    let bb = SMALL_BB[KIND];
    let sidx = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut accm = [[_mm_setzero_ps(); T]; R];
    let mut i = 0;
    while i < nb {
        let full = i + 1 < nb;
        let (wz, meta): ([__m512i; R], [__m128; R]) = if full {
            (
                std::array::from_fn(|r| small_w::<KIND>(w[r].wrapping_add(i * bb), true)),
                std::array::from_fn(|r| small_meta::<KIND>(w[r].wrapping_add(i * bb), true)),
            )
        } else {
            (
                std::array::from_fn(|r| small_w::<KIND>(w[r].wrapping_add(i * bb), false)),
                std::array::from_fn(|r| small_meta::<KIND>(w[r].wrapping_add(i * bb), false)),
            )
        };
        for t in 0..T {
            let xp = x.qs[t].wrapping_add(32 * i);
            let dp = x.ds[t].wrapping_add(2 * i) as *const u8;
            let (xq, xm) = if full {
                (load::<__m512i>(xp), load::<__m128>(dp))
            } else {
                (
                    _mm512_maskz_loadu_epi8(0xFFFF_FFFF, xp as *const i8),
                    _mm_castsi128_ps(_mm_cvtsi64_si128(load::<i64>(dp))),
                )
            };
            for r in 0..R {
                let p = _mm_mul_ps(meta[r], xm);
                accm[r][t] = _mm_add_ps(accm[r][t], p);
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wz[r], xq);
                let sc = _mm512_permutexvar_ps(sidx, _mm512_castps128_ps512(p));
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r][t]);
            }
        }
        i += 2;
    }
    let coef = [-8.0f32, 1.0, -128.0][KIND];
    std::array::from_fn(|r| {
        std::array::from_fn(|t| _mm512_reduce_add_ps(acc[r][t]) + coef * lanes13(accm[r][t]))
    })
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// 8 unsigned bytes as 8 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn u8x8(b: [u8; 8]) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(
        b,
    ))))
}

/// Q4_K / Q5_K: per super-block, 4 vectors of 64 values (sub-blocks 2c and 2c + 1); lane
/// scales `d * sc_j * dx_j` picked from an 8-float vector; mins `dmin * mn_j * sx_j`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q45k<const T: usize, const Q5: bool>(w: *const u8, nb: usize, x: &X<T>) -> [f32; T] {
    let (bb, qoff) = if Q5 { (176, 48) } else { (144, 16) };
    let m4 = _mm256_set1_epi8(0x0F);
    let k16 = _mm512_set1_epi8(16);
    // [d0..d7, s0..s7] from the interleaved (d, s) pairs.
    let didx = _mm512_set_epi32(15, 13, 11, 9, 7, 5, 3, 1, 14, 12, 10, 8, 6, 4, 2, 0);
    let cidx: [__m512i; 4] = std::array::from_fn(|c| {
        _mm512_mask_set1_epi32(_mm512_set1_epi32(2 * c as i32), 0xFF00, 2 * c as i32 + 1)
    });
    let bits: [__m512i; 4] = std::array::from_fn(|c| {
        let lo = _mm256_set1_epi8((1u8 << (2 * c)) as i8);
        let hi = _mm256_set1_epi8((1u8 << (2 * c + 1)) as i8);
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    });
    let mut acc = [_mm512_setzero_ps(); T];
    let mut accm = [_mm256_setzero_ps(); T];
    for i in 0..nb {
        let b = w.wrapping_add(i * bb);
        let (d, dmin) = (f16p(b), f16p(b.wrapping_add(2)));
        let (sc, mn) = scales_mins_k4(&load::<[u8; 12]>(b.wrapping_add(4)));
        let scf = _mm256_mul_ps(u8x8(sc), _mm256_set1_ps(d));
        let mnf = _mm256_mul_ps(u8x8(mn), _mm256_set1_ps(dmin));
        let qh = if Q5 {
            _mm512_broadcast_i64x4(load::<__m256i>(b.wrapping_add(16)))
        } else {
            _mm512_setzero_si512()
        };
        let wz: [__m512i; 4] = std::array::from_fn(|c| {
            let q = load::<__m256i>(b.wrapping_add(qoff + 32 * c));
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            if Q5 {
                _mm512_mask_add_epi8(z, _mm512_test_epi8_mask(qh, bits[c]), z, k16)
            } else {
                z
            }
        });
        for t in 0..T {
            let dsz = _mm512_permutexvar_ps(
                didx,
                load::<__m512>(x.ds[t].wrapping_add(16 * i) as *const u8),
            );
            let dv = _mm512_castps512_ps256(dsz);
            let sv = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(dsz), 1));
            accm[t] = _mm256_fmadd_ps(mnf, sv, accm[t]);
            let s = _mm512_castps256_ps512(_mm256_mul_ps(scf, dv));
            for (c, wc) in wz.iter().enumerate() {
                let xq = load::<__m512i>(x.qs[t].wrapping_add(256 * i + 64 * c));
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), *wc, xq);
                let scz = _mm512_permutexvar_ps(cidx[c], s);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scz, acc[t]);
            }
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]) - hsum256(accm[t]))
}

/// Q6_K: 6-bit unsigned values, 16 groups of 16 with i8 scales; the `-32` offset is
/// `-32 * sum_g d sc_g s16_g`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q6k<const T: usize>(w: *const u8, nb: usize, x: &X<T>) -> [f32; T] {
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    // Group g takes the d of block g / 2 (at 2 (g / 2) in the interleaved pairs).
    let eidx = _mm512_set_epi32(14, 14, 12, 12, 10, 10, 8, 8, 6, 6, 4, 4, 2, 2, 0, 0);
    // Lane l of chunk c belongs to group 4c + l / 4.
    let gidx: [__m512i; 4] = std::array::from_fn(|c| {
        let g = 4 * c as i32;
        _mm512_set_epi32(
            g + 3,
            g + 3,
            g + 3,
            g + 3,
            g + 2,
            g + 2,
            g + 2,
            g + 2,
            g + 1,
            g + 1,
            g + 1,
            g + 1,
            g,
            g,
            g,
            g,
        )
    });
    let mut acc = [_mm512_setzero_ps(); T];
    let mut accm = [_mm512_setzero_ps(); T];
    for i in 0..nb {
        let b = w.wrapping_add(i * 210);
        let d = _mm512_set1_ps(f16p(b.wrapping_add(208)));
        let scv = _mm512_mul_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load::<__m128i>(b.wrapping_add(192)))),
            d,
        );
        let mut wz = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            let ql = load::<__m512i>(b.wrapping_add(64 * h));
            let qh = load::<__m256i>(b.wrapping_add(128 + 32 * h));
            let qhz = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
            wz[2 * h] = _mm512_or_si512(
                _mm512_and_si512(ql, m4),
                _mm512_and_si512(_mm512_slli_epi16(qhz, 4), m30),
            );
            wz[2 * h + 1] = _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                _mm512_and_si512(qhz, m30),
            );
        }
        for t in 0..T {
            let dsz = load::<__m512>(x.ds[t].wrapping_add(16 * i) as *const u8);
            let sg = _mm512_mul_ps(scv, _mm512_permutexvar_ps(eidx, dsz));
            let s16 = load::<__m512>(x.s16[t].wrapping_add(16 * i) as *const u8);
            accm[t] = _mm512_fmadd_ps(scv, s16, accm[t]);
            for (c, wc) in wz.iter().enumerate() {
                let xq = load::<__m512i>(x.qs[t].wrapping_add(256 * i + 64 * c));
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), *wc, xq);
                let scz = _mm512_permutexvar_ps(gidx[c], sg);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scz, acc[t]);
            }
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]) - 32.0 * _mm512_reduce_add_ps(accm[t]))
}

/// Unpacks `n_rows <= 32` weight rows and multiplies them by every token row of `acts`:
/// `out[t * 32 + r]` (see `qdot_q8::gemm_tile`).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; sizes as checked by `qdot_q8::gemm_tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_tile(
    dtype: DType,
    w_rows: &[u8],
    n_rows: usize,
    acts: &Q8Acts,
    tile: &mut Tile,
    out: &mut [f32],
) {
    repack(dtype, w_rows, n_rows, acts.k(), tile);
    let rows = acts.rows();
    assert!(out.len() >= rows * TILE_ROWS);
    let h2 = dtype == DType::Q6K;
    let full = rows / TOKEN_BLOCK;
    let o = out.as_mut_ptr();
    if full > 0 {
        if h2 {
            tile_blocks::<TOKEN_BLOCK, 2>(tile, acts, 0, full, o);
        } else {
            tile_blocks::<TOKEN_BLOCK, 1>(tile, acts, 0, full, o);
        }
    }
    macro_rules! go {
        ($($n:literal)*) => {
            match (rows - full * TOKEN_BLOCK, h2) {
                (0, _) => {}
                $(($n, false) => tile_blocks::<$n, 1>(tile, acts, full, full + 1, o),
                  ($n, true) => tile_blocks::<$n, 2>(tile, acts, full, full + 1, o),)*
                _ => unreachable!(),
            }
        };
    }
    go!(1 2 3 4 5);
}

/// Token blocks `tb0..tb1` (their first `T <= 6` tokens) x the tile's 32 rows, with `H`
/// scales per 32 values (2 for Q6_K): 16 accumulators of 16 rows x 1 token; per 4-byte
/// group one broadcast activation feeds two `vpdpbusd`. Writes `out[t * 32 + r]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_blocks<const T: usize, const H: usize>(
    tile: &Tile,
    acts: &Q8Acts,
    tb0: usize,
    tb1: usize,
    out: *mut f32,
) {
    let g_per = 8 / H;
    let qp = tile.q.as_ptr() as *const u8;
    let scp = tile.sc.as_ptr() as *const u8;
    let mnp = tile.mn.as_ptr() as *const u8;
    let tb = TOKEN_BLOCK;
    for blk in tb0..tb1 {
        let x: Q8Block = acts.block(blk);
        let mut accf = [[_mm512_setzero_ps(); 2]; T];
        for b in 0..x.nb {
            for h in 0..H {
                let mut acci = [[_mm512_setzero_si512(); 2]; T];
                for g in 0..g_per {
                    let j = b * 8 + h * g_per + g;
                    let w0 = load::<__m512i>(qp.wrapping_add(128 * j));
                    let w1 = load::<__m512i>(qp.wrapping_add(128 * j + 64));
                    let xj = x.q.wrapping_add(4 * tb * j);
                    for (t, a) in acci.iter_mut().enumerate() {
                        let xv = _mm512_set1_epi32(load::<i32>(xj.wrapping_add(4 * t)));
                        a[0] = _mm512_dpbusd_epi32(a[0], w0, xv);
                        a[1] = _mm512_dpbusd_epi32(a[1], w1, xv);
                    }
                }
                let s = b * H + h;
                let sc = [
                    load::<__m512>(scp.wrapping_add(128 * s)),
                    load::<__m512>(scp.wrapping_add(128 * s + 64)),
                ];
                let mn = [
                    load::<__m512>(mnp.wrapping_add(128 * s)),
                    load::<__m512>(mnp.wrapping_add(128 * s + 64)),
                ];
                for t in 0..T {
                    let dx = _mm512_set1_ps(f32_at(x.d, b * tb + t));
                    let sx = _mm512_set1_ps(if H == 1 {
                        f32_at(x.s, b * tb + t)
                    } else {
                        f32_at(x.s16, (2 * b + h) * tb + t)
                    });
                    for r in 0..2 {
                        let f = _mm512_cvtepi32_ps(acci[t][r]);
                        accf[t][r] = _mm512_fmadd_ps(f, _mm512_mul_ps(sc[r], dx), accf[t][r]);
                        accf[t][r] = _mm512_fmadd_ps(mn[r], sx, accf[t][r]);
                    }
                }
            }
        }
        let o = out.wrapping_add(blk * tb * TILE_ROWS);
        for (t, a) in accf.iter().enumerate() {
            store(o.wrapping_add(TILE_ROWS * t) as *mut u8, a[0]);
            store(o.wrapping_add(TILE_ROWS * t + 16) as *mut u8, a[1]);
        }
    }
}

/// `Tile::repack` (the same values) with 16-row gathers: each gathered vector holds one
/// 4-byte group of 16 rows, which is the tile's layout. Rows `n_rows..32` are zero.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `w_rows` holds `n_rows <= 32` rows of `k`
/// values of `dtype`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn repack(dtype: DType, w_rows: &[u8], n_rows: usize, k: usize, tile: &mut Tile) {
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    let row_bytes = k / bl * bb;
    assert!(n_rows <= TILE_ROWS && w_rows.len() >= n_rows * row_bytes);
    assert!(row_bytes * TILE_ROWS < i32::MAX as usize);
    tile.reserve(k, k / sub_len(dtype));
    for half in 0..2 {
        let n = n_rows.saturating_sub(16 * half).min(16);
        let base = w_rows.as_ptr().wrapping_add(16 * half * row_bytes);
        repack16(dtype, base, row_bytes, n, k, tile, half);
    }
}

/// Rows `16 half..16 half + n` of the tile from the `n <= 16` rows at `base`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn repack16(
    dtype: DType,
    base: *const u8,
    row_bytes: usize,
    n: usize,
    k: usize,
    tile: &mut Tile,
    half: usize,
) {
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    let mask = ((1u32 << n) - 1) as u16;
    let vidx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    );
    let q = (tile.q.as_mut_ptr() as *mut u8).wrapping_add(64 * half);
    let scp = (tile.sc.as_mut_ptr() as *mut u8).wrapping_add(64 * half);
    let mnp = (tile.mn.as_mut_ptr() as *mut u8).wrapping_add(64 * half);
    // The 4 bytes at `off` of every row (zero for missing rows).
    let g = |off: usize| -> __m512i {
        _mm512_mask_i32gather_epi32::<1>(
            _mm512_setzero_si512(),
            mask,
            vidx,
            base.wrapping_add(off) as *const i32,
        )
    };
    let put_q = |j: usize, v: __m512i| store(q.wrapping_add(128 * j), v);
    let put_s = |s: usize, sc: __m512, mn: __m512| {
        store(scp.wrapping_add(128 * s), sc);
        store(mnp.wrapping_add(128 * s), mn);
    };
    // f16 in the low (`HI` false) or high half of each lane, as f32.
    let half = |v: __m512i, hi: bool| -> __m512 {
        let v = if hi { _mm512_srli_epi32(v, 16) } else { v };
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
    };
    let m4 = _mm512_set1_epi32(0x0F0F_0F0F);
    let m1 = _mm512_set1_epi32(0x0101_0101);
    let m3 = _mm512_set1_epi32(0x0303_0303);
    let m6 = _mm512_set1_epi32(63);
    let srl = |v: __m512i, n: usize| _mm512_srl_epi32(v, _mm_cvtsi32_si128(n as i32));
    let sll = |v: __m512i, n: usize| _mm512_sll_epi32(v, _mm_cvtsi32_si128(n as i32));
    for bi in 0..k / bl {
        let b0 = bi * bb;
        match dtype {
            DType::Q4_0 | DType::Q4_1 => {
                let meta = g(b0);
                let d = half(meta, false);
                let (mn, off) = if dtype == DType::Q4_0 {
                    (_mm512_mul_ps(d, _mm512_set1_ps(-8.0)), 2)
                } else {
                    (half(meta, true), 4)
                };
                put_s(bi, d, mn);
                for c in 0..4 {
                    let v = g(b0 + off + 4 * c);
                    put_q(bi * 8 + c, _mm512_and_si512(v, m4));
                    put_q(
                        bi * 8 + 4 + c,
                        _mm512_and_si512(_mm512_srli_epi32(v, 4), m4),
                    );
                }
            }
            DType::Q8_0 => {
                let d = half(g(b0), false);
                put_s(bi, d, _mm512_mul_ps(d, _mm512_set1_ps(-128.0)));
                let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
                for c in 0..8 {
                    let v = g(b0 + 2 + 4 * c);
                    put_q(bi * 8 + c, _mm512_maskz_xor_epi32(mask, v, flip));
                }
            }
            DType::Q4K | DType::Q5K => {
                let dd = g(b0);
                let (d, dmin) = (half(dd, false), half(dd, true));
                let (s0, s1, s2) = (g(b0 + 4), g(b0 + 8), g(b0 + 12));
                for j in 0..4 {
                    let sh = 8 * j;
                    let sc = _mm512_and_si512(srl(s0, sh), m6);
                    let mn = _mm512_and_si512(srl(s1, sh), m6);
                    let sc4 = _mm512_or_si512(
                        _mm512_and_si512(srl(s2, sh), _mm512_set1_epi32(0x0F)),
                        sll(_mm512_and_si512(srl(s0, sh + 6), _mm512_set1_epi32(3)), 4),
                    );
                    let mn4 = _mm512_or_si512(
                        _mm512_and_si512(srl(s2, sh + 4), _mm512_set1_epi32(0x0F)),
                        sll(_mm512_and_si512(srl(s1, sh + 6), _mm512_set1_epi32(3)), 4),
                    );
                    for (jj, sc, mn) in [(j, sc, mn), (j + 4, sc4, mn4)] {
                        let scf = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
                        let mnf = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mn));
                        let neg = _mm512_castsi512_ps(_mm512_xor_si512(
                            _mm512_castps_si512(mnf),
                            _mm512_set1_epi32(i32::MIN),
                        ));
                        put_s(bi * 8 + jj, scf, neg);
                    }
                }
                let q5 = dtype == DType::Q5K;
                let qoff = if q5 { 48 } else { 16 };
                let qh: [__m512i; 8] = std::array::from_fn(|l| {
                    if q5 {
                        g(b0 + 16 + 4 * l)
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                for c in 0..4 {
                    for (l, h) in qh.iter().enumerate() {
                        let v = g(b0 + qoff + 32 * c + 4 * l);
                        let mut lo = _mm512_and_si512(v, m4);
                        let mut hi = _mm512_and_si512(_mm512_srli_epi32(v, 4), m4);
                        if q5 {
                            let bl = _mm512_and_si512(srl(*h, 2 * c), m1);
                            let bh = _mm512_and_si512(srl(*h, 2 * c + 1), m1);
                            lo = _mm512_or_si512(lo, _mm512_slli_epi32(bl, 4));
                            hi = _mm512_or_si512(hi, _mm512_slli_epi32(bh, 4));
                        }
                        put_q(bi * 64 + 16 * c + l, lo);
                        put_q(bi * 64 + 16 * c + 8 + l, hi);
                    }
                }
            }
            DType::Q6K => {
                // Bytes 206..210 are scales 14, 15 and d (reading at 208 would pass the block).
                let d = half(g(b0 + 206), true);
                for c in 0..4 {
                    let sv = g(b0 + 192 + 4 * c);
                    for i in 0..4 {
                        let s = _mm512_srai_epi32(sll(sv, 24 - 8 * i), 24);
                        let sc = _mm512_mul_ps(d, _mm512_cvtepi32_ps(s));
                        put_s(
                            bi * 16 + 4 * c + i,
                            sc,
                            _mm512_mul_ps(sc, _mm512_set1_ps(-32.0)),
                        );
                    }
                }
                for h in 0..2 {
                    for l in 0..8 {
                        let a = g(b0 + 64 * h + 4 * l);
                        let b = g(b0 + 64 * h + 32 + 4 * l);
                        let hq = g(b0 + 128 + 32 * h + 4 * l);
                        let hb = |n: usize| sll(_mm512_and_si512(srl(hq, n), m3), 4);
                        let j = bi * 64 + 32 * h + l;
                        put_q(j, _mm512_or_si512(_mm512_and_si512(a, m4), hb(0)));
                        put_q(j + 8, _mm512_or_si512(_mm512_and_si512(b, m4), hb(2)));
                        put_q(
                            j + 16,
                            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(a, 4), m4), hb(4)),
                        );
                        put_q(
                            j + 24,
                            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(b, 4), m4), hb(6)),
                        );
                    }
                }
            }
            _ => unreachable!(),
        }
    }
}
