//! AVX-512 VNNI kernels over `packed::PackedRows` (layout described there). Each
//! `vpdpbusd` multiplies one line (a 4-byte group of 16 rows) by one broadcast 4-byte
//! group of a token: no shuffles in the inner loop; Q4 lines are split into their low and
//! high nibbles with an `and` and a shift. Per block the 16 lane sums are scaled in f32 by
//! the block's 16 row scales (one f16 vector) and the token's scale.
#![cfg(target_arch = "x86_64")]

use super::packed::{lines_per_block, PackedRows, DENSE_STEP, GROUP};
use super::qdot_q8::{Q8Acts, Q8Row, TILE_ROWS, TOKEN_BLOCK};
use super::qdot_q8_avx512::{f32_at, load, store};
use crate::tensor::DType;
use std::arch::x86_64::*;

/// The 32-bit word at `p` in every lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bcast(p: *const u8) -> __m512i {
    _mm512_set1_epi32(load::<i32>(p))
}

/// The f32 at `p + 4 i` in every lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bcast_f32(p: *const f32, i: usize) -> __m512 {
    _mm512_set1_ps(f32_at(p, i))
}

/// The 16 f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(load::<__m256i>(p))
}

/// Kind index: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0.
fn kind(dtype: DType) -> usize {
    match dtype {
        DType::Q4_0 => 0,
        DType::Q4_1 => 1,
        DType::Q8_0 => 2,
        _ => unreachable!("not packable: {dtype}"),
    }
}

/// Offset of the stored unsigned quants (Q4_0 and Q8_0; Q4_1 has per-row mins).
const OFFSET: [f32; 3] = [-8.0, 0.0, -128.0];

/// The pointers of one group: quant lines, scales, mins.
struct Group {
    q: *const u8,
    d: *const u8,
    m: *const u8,
}

impl Group {
    fn new(p: &PackedRows, g: usize) -> Group {
        let nb = p.k / 32;
        let q = p.group_ptr(g);
        let d = q.wrapping_add(nb * 64 * lines_per_block(p.dtype));
        Group {
            q,
            d,
            m: d.wrapping_add(nb * 32),
        }
    }
}

/// How far ahead of the quant line being read the row dots prefetch (bytes).
const PREFETCH: usize = 1024;

/// See `packed::dot_groups`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; sizes and `out` as `packed::dot_groups`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_groups(
    p: &PackedRows,
    g0: usize,
    g1: usize,
    xs: &[Q8Row],
    out: *mut f32,
    ld: usize,
) {
    macro_rules! go {
        ($t:literal) => {
            match kind(p.dtype) {
                0 => groups_t::<$t, 0>(p, g0, g1, xs, out, ld),
                1 => groups_t::<$t, 1>(p, g0, g1, xs, out, ld),
                _ => groups_t::<$t, 2>(p, g0, g1, xs, out, ld),
            }
        };
    }
    match xs.len() {
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        _ => go!(4),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn groups_t<const T: usize, const KIND: usize>(
    p: &PackedRows,
    g0: usize,
    g1: usize,
    xs: &[Q8Row],
    o: *mut f32,
    ld: usize,
) {
    let nb = p.k / 32;
    let xq: [*const u8; T] = std::array::from_fn(|t| xs[t].qs.as_ptr() as *const u8);
    let xd: [*const f32; T] = std::array::from_fn(|t| xs[t].ds.as_ptr());
    let m4 = _mm512_set1_epi8(0x0F);
    for g in g0..g1 {
        let grp = Group::new(p, g);
        let mut accf = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            // Two integer accumulators per token: two dependency chains per block.
            let mut acc = [[_mm512_setzero_si512(); 2]; T];
            if KIND == 2 {
                for j in 0..8 {
                    let line = grp.q.wrapping_add((b * 8 + j) * 64);
                    _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH) as *const i8);
                    let w = load::<__m512i>(line);
                    for t in 0..T {
                        let x = bcast(xq[t].wrapping_add(32 * b + 4 * j));
                        acc[t][j & 1] = _mm512_dpbusd_epi32(acc[t][j & 1], w, x);
                    }
                }
            } else {
                for j in 0..4 {
                    let line = grp.q.wrapping_add((b * 4 + j) * 64);
                    _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(PREFETCH) as *const i8);
                    let v = load::<__m512i>(line);
                    let lo = _mm512_and_si512(v, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                    for t in 0..T {
                        let xl = bcast(xq[t].wrapping_add(32 * b + 4 * j));
                        let xh = bcast(xq[t].wrapping_add(32 * b + 16 + 4 * j));
                        acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], lo, xl);
                        acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], hi, xh);
                    }
                }
            }
            let d = f16x16(grp.d.wrapping_add(32 * b));
            let m = if KIND == 1 {
                f16x16(grp.m.wrapping_add(32 * b))
            } else {
                _mm512_setzero_ps()
            };
            for t in 0..T {
                let s = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[t][0], acc[t][1]));
                let dx = bcast_f32(xd[t], 2 * b);
                let sx = bcast_f32(xd[t], 2 * b + 1);
                accf[t] = if KIND == 1 {
                    _mm512_fmadd_ps(m, sx, _mm512_fmadd_ps(s, _mm512_mul_ps(d, dx), accf[t]))
                } else {
                    let c = _mm512_mul_ps(sx, _mm512_set1_ps(OFFSET[KIND]));
                    _mm512_fmadd_ps(d, _mm512_fmadd_ps(s, dx, c), accf[t])
                };
            }
        }
        let valid = (p.rows - g * GROUP).min(GROUP);
        let mask = ((1u32 << valid) - 1) as u16;
        for (t, a) in accf.iter().enumerate() {
            _mm512_mask_storeu_ps(o.wrapping_add(t * ld + g * GROUP), mask, *a);
        }
    }
}

/// Runs `$go!(T, tb0, tb1)` over the token blocks of `$rows` token rows: the full
/// 6-token blocks with `T` = 6, then the last partial block with its own `T` (the kernels
/// take the token count as a constant).
macro_rules! token_blocks {
    ($rows:expr, $go:ident) => {{
        let rows: usize = $rows;
        let full = rows / TOKEN_BLOCK;
        if full > 0 {
            $go!(TOKEN_BLOCK, 0, full);
        }
        match rows - full * TOKEN_BLOCK {
            0 => {}
            1 => $go!(1, full, full + 1),
            2 => $go!(2, full, full + 1),
            3 => $go!(3, full, full + 1),
            4 => $go!(4, full, full + 1),
            _ => $go!(5, full, full + 1),
        }
    }};
}

/// See `packed::gemm_tile`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; sizes as checked by `packed::gemm_tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_tile(p: &PackedRows, g0: usize, acts: &Q8Acts, out: &mut [f32]) {
    let two = g0 + 1 < p.groups();
    let rows = acts.rows();
    let o = out.as_mut_ptr();
    macro_rules! go {
        ($t:expr, $b0:expr, $b1:expr) => {
            match (kind(p.dtype), two) {
                (0, false) => tile_t::<$t, 0, 1>(p, g0, acts, $b0, $b1, o),
                (0, true) => tile_t::<$t, 0, 2>(p, g0, acts, $b0, $b1, o),
                (1, false) => tile_t::<$t, 1, 1>(p, g0, acts, $b0, $b1, o),
                (1, true) => tile_t::<$t, 1, 2>(p, g0, acts, $b0, $b1, o),
                (_, false) => tile_t::<$t, 2, 1>(p, g0, acts, $b0, $b1, o),
                (_, true) => tile_t::<$t, 2, 2>(p, g0, acts, $b0, $b1, o),
            }
        };
    }
    token_blocks!(rows, go);
}

/// Token blocks `tb0..tb1` (their first `T <= 6` tokens) x `G` groups from `g0`:
/// `T * G` integer accumulators per block, each line fed to `T` `vpdpbusd`.
/// Writes `out[t * 32 + 16 gi + lane]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_t<const T: usize, const KIND: usize, const G: usize>(
    p: &PackedRows,
    g0: usize,
    acts: &Q8Acts,
    tb0: usize,
    tb1: usize,
    out: *mut f32,
) {
    let tb = TOKEN_BLOCK;
    let grp: [Group; G] = std::array::from_fn(|i| Group::new(p, g0 + i));
    let m4 = _mm512_set1_epi8(0x0F);
    for blk in tb0..tb1 {
        let x = acts.block(blk);
        let mut accf = [[_mm512_setzero_ps(); G]; T];
        for b in 0..x.nb {
            let mut acc = [[_mm512_setzero_si512(); G]; T];
            // Line `j` of the block holds value group `c` (`c` = 4-byte group in the row).
            let mut feed = |w: [__m512i; G], c: usize| {
                let xc = x.q.wrapping_add(4 * tb * (b * 8 + c));
                for (t, a) in acc.iter_mut().enumerate() {
                    let xv = bcast(xc.wrapping_add(4 * t));
                    for i in 0..G {
                        a[i] = _mm512_dpbusd_epi32(a[i], w[i], xv);
                    }
                }
            };
            if KIND == 2 {
                for j in 0..8 {
                    feed(
                        std::array::from_fn(|i| load(grp[i].q.wrapping_add((b * 8 + j) * 64))),
                        j,
                    );
                }
            } else {
                for j in 0..4 {
                    let v: [__m512i; G] =
                        std::array::from_fn(|i| load(grp[i].q.wrapping_add((b * 4 + j) * 64)));
                    feed(v.map(|v| _mm512_and_si512(v, m4)), j);
                    feed(
                        v.map(|v| _mm512_and_si512(_mm512_srli_epi16(v, 4), m4)),
                        4 + j,
                    );
                }
            }
            let d: [__m512; G] = std::array::from_fn(|i| f16x16(grp[i].d.wrapping_add(32 * b)));
            let m: [__m512; G] = std::array::from_fn(|i| {
                if KIND == 1 {
                    f16x16(grp[i].m.wrapping_add(32 * b))
                } else {
                    _mm512_mul_ps(d[i], _mm512_set1_ps(OFFSET[KIND]))
                }
            });
            for t in 0..T {
                let dx = bcast_f32(x.d, b * tb + t);
                let sx = bcast_f32(x.s, b * tb + t);
                for i in 0..G {
                    let s = _mm512_cvtepi32_ps(acc[t][i]);
                    let a = _mm512_fmadd_ps(s, _mm512_mul_ps(d[i], dx), accf[t][i]);
                    accf[t][i] = _mm512_fmadd_ps(m[i], sx, a);
                }
            }
        }
        let o = out.wrapping_add(blk * tb * TILE_ROWS);
        for (t, a) in accf.iter().enumerate() {
            for (i, v) in a.iter().enumerate() {
                _mm512_storeu_ps(o.wrapping_add(TILE_ROWS * t + GROUP * i), *v);
            }
        }
    }
}

/// The 16 bf16 values of a dense line at `p` as f32 (exact).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn bf16x16(p: *const u8) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(load::<__m256i>(p)),
        16,
    ))
}

/// See `packed::dot_groups_f32`.
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2, FMA and F16C; sizes and `out` as `packed::dot_groups_f32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_groups_f32(
    p: &PackedRows,
    g0: usize,
    g1: usize,
    xs: &[&[f32]],
    out: *mut f32,
    ld: usize,
) {
    match xs.len() {
        1 => dense_t::<1>(p, g0, g1, xs, out, ld),
        2 => dense_t::<2>(p, g0, g1, xs, out, ld),
        3 => dense_t::<3>(p, g0, g1, xs, out, ld),
        _ => dense_t::<4>(p, g0, g1, xs, out, ld),
    }
}

/// How far ahead the dense row dots prefetch (bytes).
const DENSE_PREFETCH: usize = 8192;

/// Dense row dots, `T` tokens: per group, `DENSE_STEP` accumulators per token (the FMA
/// latency chain), each line converted once and fed to `T` FMAs with a broadcast value.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dense_t<const T: usize>(
    p: &PackedRows,
    g0: usize,
    g1: usize,
    xs: &[&[f32]],
    o: *mut f32,
    ld: usize,
) {
    const U: usize = DENSE_STEP;
    let x: [*const f32; T] = std::array::from_fn(|t| xs[t].as_ptr());
    for g in g0..g1 {
        let q = p.group_ptr(g);
        let mut acc = [[_mm512_setzero_ps(); T]; U];
        for c in (0..p.k).step_by(U) {
            // Four 32-byte lines: two cache lines, prefetched well ahead (memory bound).
            let ahead = q.wrapping_add(32 * c + DENSE_PREFETCH);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
            for (u, au) in acc.iter_mut().enumerate() {
                let w = bf16x16(q.wrapping_add(32 * (c + u)));
                for (a, xt) in au.iter_mut().zip(x) {
                    *a = _mm512_fmadd_ps(w, bcast_f32(xt, c + u), *a);
                }
            }
        }
        let valid = (p.rows - g * GROUP).min(GROUP);
        let mask = ((1u32 << valid) - 1) as u16;
        for t in 0..T {
            let s01 = _mm512_add_ps(acc[0][t], acc[1][t]);
            let s = _mm512_add_ps(s01, _mm512_add_ps(acc[2][t], acc[3][t]));
            _mm512_mask_storeu_ps(o.wrapping_add(t * ld + g * GROUP), mask, s);
        }
    }
}

/// Converts `n <= 6` token rows of `k` values (`k` even) to bf16 into one token block of
/// `packed::Bf16Acts`: `out[p * 6 + t]` = values `2p, 2p + 1` of token `t` (zero past `n`).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and BF16; `x` holds `n * k` values, `out` `k / 2 * 6`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
pub unsafe fn bf16_block(x: &[f32], n: usize, k: usize, out: &mut [u32]) {
    assert!(x.len() >= n * k && out.len() >= k / 2 * TOKEN_BLOCK && k.is_multiple_of(2));
    let tb = TOKEN_BLOCK;
    for t in 0..tb {
        if t >= n {
            (0..k / 2).for_each(|p| out[p * tb + t] = 0);
            continue;
        }
        let row = &x[t * k..(t + 1) * k];
        let mut c = 0;
        while c + 32 <= k {
            let a = load::<__m512>(row.as_ptr().add(c) as *const u8);
            let b = load::<__m512>(row.as_ptr().add(c + 16) as *const u8);
            // Low half: the first 16 values; as 32-bit words: the pairs in order.
            let v: [u32; 16] = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
            for (i, w) in v.iter().enumerate() {
                out[(c / 2 + i) * tb + t] = *w;
            }
            c += 32;
        }
        for pi in c / 2..k / 2 {
            let lo = half::bf16::from_f32(row[2 * pi]).to_bits() as u32;
            let hi = half::bf16::from_f32(row[2 * pi + 1]).to_bits() as u32;
            out[pi * tb + t] = lo | (hi << 16);
        }
    }
}

/// Builds the bf16 tile of groups `g0..g0 + G` of a dense copy: line `p * G + i` holds,
/// per lane `r`, the bf16 pair (value `2p`, value `2p + 1`) of row `r` of group `g0 + i`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and BF16; `tile` holds `k / 2 * G` lines.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
pub unsafe fn bf16_tile<const G: usize>(p: &PackedRows, g0: usize, tile: *mut u8) {
    // Word r of the result takes halves r (value 2p) and 16 + r (value 2p + 1).
    let idx: [i16; 32] = std::array::from_fn(|i| (i / 2 + 16 * (i % 2)) as i16);
    let idx = load::<__m512i>(idx.as_ptr() as *const u8);
    for i in 0..G {
        let q = p.group_ptr(g0 + i);
        for pi in 0..p.k / 2 {
            // Lines 2p and 2p + 1 side by side, then each row's two values next to each other.
            let a = load::<__m256i>(q.wrapping_add(64 * pi));
            let pk = _mm512_inserti64x4(
                _mm512_castsi256_si512(a),
                load(q.wrapping_add(64 * pi + 32)),
                1,
            );
            let line = _mm512_permutexvar_epi16(idx, pk);
            _mm512_storeu_si512(tile.wrapping_add(64 * (pi * G + i)) as *mut _, line);
        }
    }
}

/// `bf16_tile_dots` over every token block of `rows` token rows, for the tile of `G` = 2
/// groups (`two`) or 1.
///
/// # Safety
/// As `bf16_tile_dots`, with `xb` holding `rows.div_ceil(6)` blocks.
pub unsafe fn bf16_tile_all(
    tile: *const u8,
    two: bool,
    pairs: usize,
    xb: *const u32,
    rows: usize,
    out: *mut f32,
) {
    macro_rules! go {
        ($n:expr, $b0:expr, $b1:expr) => {
            if two {
                bf16_tile_dots::<$n, 2>(tile, pairs, xb, $b0, $b1, out)
            } else {
                bf16_tile_dots::<$n, 1>(tile, pairs, xb, $b0, $b1, out)
            }
        };
    }
    token_blocks!(rows, go);
}

/// Token blocks `tb0..tb1` (first `T` tokens each) x the bf16 tile of `G` groups:
/// `vdpbf16ps` of each tile line with a broadcast bf16 pair of each token; writes
/// `out[t * 32 + 16 i + lane]`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and BF16; `tile` as built by `bf16_tile::<G>`, `xb` holds the blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
unsafe fn bf16_tile_dots<const T: usize, const G: usize>(
    tile: *const u8,
    pairs: usize,
    xb: *const u32,
    tb0: usize,
    tb1: usize,
    out: *mut f32,
) {
    let tb = TOKEN_BLOCK;
    for blk in tb0..tb1 {
        let x = xb.wrapping_add(blk * pairs * tb) as *const u8;
        let mut acc = [[_mm512_setzero_ps(); G]; T];
        for pi in 0..pairs {
            let w: [__m512bh; G] =
                std::array::from_fn(|i| load(tile.wrapping_add(64 * (pi * G + i))));
            for (t, a) in acc.iter_mut().enumerate() {
                let xv: __m512bh = std::mem::transmute(bcast(x.wrapping_add(4 * (pi * tb + t))));
                for i in 0..G {
                    a[i] = _mm512_dpbf16_ps(a[i], w[i], xv);
                }
            }
        }
        let o = out.wrapping_add(blk * tb * TILE_ROWS);
        for (t, a) in acc.iter().enumerate() {
            for (i, v) in a.iter().enumerate() {
                _mm512_storeu_ps(o.wrapping_add(TILE_ROWS * t + GROUP * i), *v);
            }
        }
    }
}

/// `out[i] = bf16(x[i])` (round to nearest even), `out.len() == x.len()`.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")]
pub unsafe fn bf16_row(x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    let mut i = 0;
    while i + 16 <= x.len() {
        let v = _mm512_cvtneps_pbh(load::<__m512>(x.as_ptr().add(i) as *const u8));
        store(out.as_mut_ptr().add(i) as *mut u8, v);
        i += 16;
    }
    for j in i..x.len() {
        out[j] = half::bf16::from_f32(x[j]).to_bits();
    }
}
