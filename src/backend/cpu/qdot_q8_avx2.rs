//! AVX2 kernels for `qdot_q8` (CPUs without AVX-512 VNNI): `vpmaddubsw` (unsigned x signed
//! bytes to saturating i16 pairs) then `vpmaddwd` by ones to i32. No pair saturates: the
//! unsigned values are at most 63 (Q4, Q5, Q6), and Q8_0 is multiplied as `|w|` by
//! `sign(w) * q` (at most 2 * 128 * 127 < 32768). Same integer sums as `qdot_q8_scalar`.
//! Only called after `qdot_q8::available(Isa::Avx2)` said yes.
#![cfg(target_arch = "x86_64")]

use super::qdot_q8::{Q8Acts, Q8Block, Q8Row, Tile, QK, TILE_ROWS, TOKEN_BLOCK};
use super::qdot_q8_scalar::{sub_len, unpack_block};
use crate::tensor::DType;
use std::arch::x86_64::*;

/// A `T` at an unaligned address (plain unaligned access, no debug precondition checks).
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Unaligned<T: Copy>(T);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load<T: Copy>(p: *const u8) -> T {
    (*(p as *const Unaligned<T>)).0
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store<T: Copy>(p: *mut u8, v: T) {
    *(p as *mut Unaligned<T>) = Unaligned(v);
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_at(p: *const f32, i: usize) -> f32 {
    load::<f32>(p.wrapping_add(i) as *const u8)
}

/// Sum of the 32-bit products `w * x` per lane: bytes `w` (unsigned, or signed when
/// `SIGNED`) times signed bytes `x`, four per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4<const SIGNED: bool>(w: __m256i, x: __m256i) -> __m256i {
    let p = if SIGNED {
        _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
    } else {
        _mm256_maddubs_epi16(w, x)
    };
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// `out[r * xs.len() + t] = dot(row r, xs[t])` (see `qdot_q8::dot_rows`). Each block is
/// unpacked to bytes (as the scalar twin) and multiplied 32 bytes at a time.
///
/// # Safety
/// AVX2, FMA and F16C; sizes as checked by `qdot_q8::dot_rows`.
#[target_feature(enable = "avx2,fma,f16c")]
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
        match (tn, dtype == DType::Q8_0) {
            (1, false) => rows_t::<1, false>(dtype, w_rows, row_bytes, g, out, nt, t0),
            (2, false) => rows_t::<2, false>(dtype, w_rows, row_bytes, g, out, nt, t0),
            (3, false) => rows_t::<3, false>(dtype, w_rows, row_bytes, g, out, nt, t0),
            (_, false) => rows_t::<4, false>(dtype, w_rows, row_bytes, g, out, nt, t0),
            (1, true) => rows_t::<1, true>(dtype, w_rows, row_bytes, g, out, nt, t0),
            (2, true) => rows_t::<2, true>(dtype, w_rows, row_bytes, g, out, nt, t0),
            (3, true) => rows_t::<3, true>(dtype, w_rows, row_bytes, g, out, nt, t0),
            (_, true) => rows_t::<4, true>(dtype, w_rows, row_bytes, g, out, nt, t0),
        }
        t0 += tn;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_t<const T: usize, const SIGNED: bool>(
    dtype: DType,
    w_rows: &[u8],
    row_bytes: usize,
    xs: &[Q8Row],
    out: &mut [f32],
    ld: usize,
    t0: usize,
) {
    let (bl, bb, sub) = (dtype.block_len(), dtype.block_bytes(), sub_len(dtype));
    let nb = xs[0].qs.len() / bl;
    let qs: [*const u8; T] = std::array::from_fn(|t| xs[t].qs.as_ptr() as *const u8);
    let ds: [*const f32; T] = std::array::from_fn(|t| xs[t].ds.as_ptr());
    let s16: [*const f32; T] = std::array::from_fn(|t| xs[t].s16.as_ptr());
    let mut v = [0u8; 256];
    let mut sc = [0f32; 16];
    let mut mn = [0f32; 16];
    for r in 0..out.len() / ld {
        let row = &w_rows[r * row_bytes..(r + 1) * row_bytes];
        let small = match dtype {
            DType::Q4_0 => Some(dot_small::<T, 0>(row.as_ptr(), nb, &qs, &ds)),
            DType::Q4_1 => Some(dot_small::<T, 1>(row.as_ptr(), nb, &qs, &ds)),
            DType::Q8_0 => Some(dot_small::<T, 2>(row.as_ptr(), nb, &qs, &ds)),
            _ => None,
        };
        if let Some(res) = small {
            out[r * ld + t0..r * ld + t0 + T].copy_from_slice(&res);
            continue;
        }
        let mut acc = [_mm256_setzero_ps(); T];
        let mut accm = [0f32; T];
        for i in 0..nb {
            unpack_block(
                dtype,
                &row[i * bb..(i + 1) * bb],
                &mut v[..bl],
                &mut sc,
                &mut mn,
                SIGNED,
            );
            for c in 0..bl / QK {
                let wv = load::<__m256i>(v.as_ptr().wrapping_add(QK * c));
                let base = i * bl + QK * c;
                let blk = base / QK;
                for t in 0..T {
                    let xq = load::<__m256i>(qs[t].wrapping_add(base));
                    let f = _mm256_cvtepi32_ps(dot4::<SIGNED>(wv, xq));
                    let dx = f32_at(ds[t], 2 * blk);
                    if sub == QK {
                        acc[t] = _mm256_fmadd_ps(f, _mm256_set1_ps(sc[c] * dx), acc[t]);
                        accm[t] += mn[c] * f32_at(ds[t], 2 * blk + 1);
                    } else {
                        let s = _mm256_set_m128(
                            _mm_set1_ps(sc[2 * c + 1] * dx),
                            _mm_set1_ps(sc[2 * c] * dx),
                        );
                        acc[t] = _mm256_fmadd_ps(f, s, acc[t]);
                        accm[t] += mn[2 * c] * f32_at(s16[t], 2 * blk)
                            + mn[2 * c + 1] * f32_at(s16[t], 2 * blk + 1);
                    }
                }
            }
        }
        for t in 0..T {
            out[r * ld + t0 + t] = hsum(acc[t]) + accm[t];
        }
    }
}

/// The f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16p(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(load::<u16>(p) as i32)))
}

/// Q4_0 (`KIND` 0), Q4_1 (1), Q8_0 (2; signed by signed): one block per step.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_small<const T: usize, const KIND: usize>(
    w: *const u8,
    nb: usize,
    qs: &[*const u8; T],
    ds: &[*const f32; T],
) -> [f32; T] {
    let bb = [18usize, 20, 34][KIND];
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = [0f32; T];
    for i in 0..nb {
        let b = w.wrapping_add(i * bb);
        let d = f16p(b);
        let m = match KIND {
            0 => -8.0 * d,
            1 => f16p(b.wrapping_add(2)),
            _ => 0.0,
        };
        let wv = if KIND == 2 {
            load::<__m256i>(b.wrapping_add(2))
        } else {
            let q = load::<__m128i>(b.wrapping_add(if KIND == 0 { 2 } else { 4 }));
            _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4)
        };
        for t in 0..T {
            let xq = load::<__m256i>(qs[t].wrapping_add(QK * i));
            let dot = if KIND == 2 {
                dot4::<true>(wv, xq)
            } else {
                dot4::<false>(wv, xq)
            };
            let f = _mm256_cvtepi32_ps(dot);
            acc[t] = _mm256_fmadd_ps(f, _mm256_set1_ps(d * f32_at(ds[t], 2 * i)), acc[t]);
            if KIND != 2 {
                accm[t] += m * f32_at(ds[t], 2 * i + 1);
            }
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + accm[t])
}

/// Unpacks `n_rows <= 32` weight rows and multiplies them by every token row of `acts`:
/// `out[t * 32 + r]` (see `qdot_q8::gemm_tile`).
///
/// # Safety
/// AVX2, FMA and F16C; sizes as checked by `qdot_q8::gemm_tile`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_tile(
    dtype: DType,
    w_rows: &[u8],
    n_rows: usize,
    acts: &Q8Acts,
    tile: &mut Tile,
    out: &mut [f32],
) {
    let signed = dtype == DType::Q8_0;
    tile.repack(dtype, w_rows, n_rows, acts.k(), signed);
    let rows = acts.rows();
    assert!(out.len() >= rows * TILE_ROWS);
    let h2 = dtype == DType::Q6K;
    for t0 in (0..rows).step_by(TOKEN_BLOCK) {
        let xb = acts.block(t0 / TOKEN_BLOCK);
        let nt = (rows - t0).min(TOKEN_BLOCK);
        for part in 0..TILE_ROWS / 8 {
            for toff in (0..nt).step_by(4) {
                let tn = (nt - toff).min(4);
                let o = out
                    .as_mut_ptr()
                    .wrapping_add((t0 + toff) * TILE_ROWS + 8 * part);
                macro_rules! go {
                    ($($n:literal)*) => {
                        match (tn, h2, signed) {
                            $(($n, false, false) => tile_kernel::<$n, 1, false>(tile, xb, part, toff, o),
                              ($n, true, _) => tile_kernel::<$n, 2, false>(tile, xb, part, toff, o),
                              ($n, false, true) => tile_kernel::<$n, 1, true>(tile, xb, part, toff, o),)*
                            _ => unreachable!(),
                        }
                    };
                }
                go!(1 2 3 4);
            }
        }
    }
}

/// `T <= 4` tokens (`toff..toff + T` of the token block) x rows `8 part..8 part + 8` of
/// the tile; writes 8 floats per token at `out + 32 t`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_kernel<const T: usize, const H: usize, const SIGNED: bool>(
    tile: &Tile,
    x: Q8Block,
    part: usize,
    toff: usize,
    out: *mut f32,
) {
    let g_per = 8 / H;
    // Rows 8 part.. sit in lane vector `part / 2`, at byte 32 (part % 2) of it.
    let off = 64 * (part / 2) + 32 * (part % 2);
    let qp = (tile.q.as_ptr() as *const u8).wrapping_add(off);
    let scp = (tile.sc.as_ptr() as *const u8).wrapping_add(off);
    let mnp = (tile.mn.as_ptr() as *const u8).wrapping_add(off);
    let tb = TOKEN_BLOCK;
    let mut accf = [_mm256_setzero_ps(); T];
    for b in 0..x.nb {
        for h in 0..H {
            let mut acci = [_mm256_setzero_si256(); T];
            for g in 0..g_per {
                let j = b * 8 + h * g_per + g;
                let wv = load::<__m256i>(qp.wrapping_add(128 * j));
                let xj = x.q.wrapping_add(4 * (tb * j + toff));
                for (t, a) in acci.iter_mut().enumerate() {
                    let xv = _mm256_set1_epi32(load::<i32>(xj.wrapping_add(4 * t)));
                    *a = _mm256_add_epi32(*a, dot4::<SIGNED>(wv, xv));
                }
            }
            let s = b * H + h;
            let scv = load::<__m256>(scp.wrapping_add(128 * s));
            let mnv = load::<__m256>(mnp.wrapping_add(128 * s));
            for t in 0..T {
                let i = b * tb + toff + t;
                let dx = _mm256_set1_ps(f32_at(x.d, i));
                let f = _mm256_cvtepi32_ps(acci[t]);
                accf[t] = _mm256_fmadd_ps(f, _mm256_mul_ps(scv, dx), accf[t]);
                if !SIGNED {
                    let sx = if H == 1 {
                        f32_at(x.s, i)
                    } else {
                        f32_at(x.s16, (2 * b + h) * tb + toff + t)
                    };
                    accf[t] = _mm256_fmadd_ps(mnv, _mm256_set1_ps(sx), accf[t]);
                }
            }
        }
    }
    for (t, a) in accf.iter().enumerate() {
        store(out.wrapping_add(TILE_ROWS * t) as *mut u8, *a);
    }
}
