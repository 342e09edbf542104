//! Integer dot products of stored weight rows against activations quantized to 8 bits.
//!
//! This is the fast, approximate matmul path (`MatmulPrecision::Int8Activations`). Each
//! activation row is quantized once per matmul (`Q8Acts::quantize`): per 32 values a
//! scale `d = max|x| / 127` and `q = round(x / d)` in i8, plus `d * sum(q)` per 32 and per
//! 16 values for the weight formats with a min or an offset term. The dot products then
//! run on integers (`vpdpbusd` with AVX-512 VNNI, `vpmaddubsw` with AVX2) and are scaled in
//! f32 once per 32 (Q6_K: 16) values; see `qdot_q8_scalar` for the exact arithmetic.
//!
//! Two entry points:
//! - `dot_rows`: a few token rows against consecutive weight rows, straight from the stored
//!   blocks (decode; memory bound).
//! - `gemm_tile`: up to 32 weight rows against any number of token rows. The rows are
//!   unpacked once into a per-thread buffer, interleaved so that one 64-byte vector holds
//!   a 4-byte group of 16 rows; the AVX-512 kernel multiplies two such vectors by a
//!   broadcast 4-byte group of each of 6 tokens (prefill; compute bound). Activations are
//!   also kept in a token-blocked copy (`TOKEN_BLOCK` tokens interleaved per 4 bytes).
//!
//! The error against the exact path is that of rounding the activations: at most
//! `d / 2 = max|x| / 254` per value of each 32-value block (tested).
//!
//! The kernel level is picked once per process (AVX-512 VNNI > AVX2 > scalar; `LLMRT_ISA`
//! caps it as for `qdot`). Every SIMD kernel is tested against the scalar twin.

use super::qdot::Isa;
use super::qdot_q8_scalar as scalar;
use crate::tensor::DType;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Values per activation block (one scale).
pub const QK: usize = 32;
/// Weight rows per `gemm_tile` call.
pub const TILE_ROWS: usize = 32;
/// Token rows per `dot_rows` kernel call (more are done in groups).
pub const MAX_DOT_TOKENS: usize = 4;

/// Whether `dtype` has integer kernels.
pub fn supported(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 | DType::Q4K | DType::Q5K | DType::Q6K
    )
}

/// Token rows quantized to 8 bits, reused between calls (grows, never shrinks).
#[derive(Default)]
pub struct Q8Acts {
    rows: usize,
    k: usize,
    qs: Vec<i8>,
    /// Per 32-value block: `[d, d * sum(q)]`.
    ds: Vec<f32>,
    /// Per 16 values: `d * sum(q)`.
    s16: Vec<f32>,
    /// Token-blocked copies for `gemm_tile`, per block of `TOKEN_BLOCK` (6) tokens
    /// (missing tokens are zero): `qb[j * 6 + t]` = bytes `4j..4j + 4` of token `t`
    /// (little-endian); `db[b * 6 + t]`, `sb[b * 6 + t]` = `d`, `d * sum(q)` of block `b`;
    /// `s16b[h * 6 + t]` = `d * sum(q)` of 16-value group `h`.
    qb: Vec<u32>,
    db: Vec<f32>,
    sb: Vec<f32>,
    s16b: Vec<f32>,
}

/// Tokens per block of the token-blocked layout.
pub const TOKEN_BLOCK: usize = 6;

/// Raw pointers to one token block of a `Q8Acts` (valid while it is borrowed).
#[derive(Clone, Copy)]
pub(crate) struct Q8Block {
    pub q: *const u8,
    pub d: *const f32,
    pub s: *const f32,
    pub s16: *const f32,
    /// 32-value blocks per token row.
    pub nb: usize,
}

type Job<'a> = (
    (
        (((&'a [f32], &'a mut [i8]), &'a mut [f32]), &'a mut [f32]),
        &'a mut [u32],
    ),
    ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]),
);

/// Copies `n <= TOKEN_BLOCK` quantized rows (row layout) into one token block (zero-padded).
#[allow(clippy::too_many_arguments)]
fn block_rows(
    n: usize,
    k: usize,
    qs: &[i8],
    ds: &[f32],
    s16: &[f32],
    qb: &mut [u32],
    db: &mut [f32],
    sb: &mut [f32],
    s16b: &mut [f32],
) {
    let nb = k / QK;
    let tb = TOKEN_BLOCK;
    let qb = &mut qb[..k / 4 * tb];
    for t in 0..tb {
        if t < n {
            let row = &qs[t * k..(t + 1) * k];
            for (q4, dst) in row.chunks_exact(4).zip(qb.chunks_exact_mut(tb)) {
                dst[t] = u32::from_le_bytes([q4[0] as u8, q4[1] as u8, q4[2] as u8, q4[3] as u8]);
            }
        } else {
            qb.chunks_exact_mut(tb).for_each(|dst| dst[t] = 0);
        }
        for b in 0..nb {
            let (d, s) = if t < n {
                (ds[t * 2 * nb + 2 * b], ds[t * 2 * nb + 2 * b + 1])
            } else {
                (0.0, 0.0)
            };
            db[b * tb + t] = d;
            sb[b * tb + t] = s;
        }
        for h in 0..2 * nb {
            s16b[h * tb + t] = if t < n { s16[t * 2 * nb + h] } else { 0.0 };
        }
    }
}

/// One quantized token row.
#[derive(Clone, Copy)]
pub struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub ds: &'a [f32],
    pub s16: &'a [f32],
}

impl Q8Acts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `rows` rows of `k` values (`k` a multiple of 32) from `x`, in parallel on
    /// the current rayon pool when there are many. Fills both the row layout (`row`) and
    /// the token-blocked layout that `gemm_tile` reads.
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize) {
        assert!(
            k.is_multiple_of(QK),
            "qdot_q8: row length {k} is not a multiple of 32"
        );
        let x = &x[..rows * k];
        let nb = k / QK;
        let ntb = rows.div_ceil(TOKEN_BLOCK);
        grow(&mut self.qs, ntb * TOKEN_BLOCK * k, 0);
        grow(&mut self.ds, ntb * TOKEN_BLOCK * nb * 2, 0.0);
        grow(&mut self.s16, ntb * TOKEN_BLOCK * nb * 2, 0.0);
        grow(&mut self.qb, ntb * TOKEN_BLOCK * k / 4, 0);
        grow(&mut self.db, ntb * TOKEN_BLOCK * nb, 0.0);
        grow(&mut self.sb, ntb * TOKEN_BLOCK * nb, 0.0);
        grow(&mut self.s16b, ntb * TOKEN_BLOCK * nb * 2, 0.0);
        self.rows = rows;
        self.k = k;
        if rows == 0 || k == 0 {
            return;
        }
        let f = kernels().quantize;
        let (tk, tnb) = (TOKEN_BLOCK * k, TOKEN_BLOCK * nb);
        let work = |(((((x, qs), ds), s16), qb), ((db, sb), s16b)): Job| {
            let n = x.len() / k;
            for t in 0..n {
                let (r, r2) = (t * k..(t + 1) * k, t * 2 * nb..(t + 1) * 2 * nb);
                f(&x[r.clone()], &mut qs[r], &mut ds[r2.clone()], &mut s16[r2]);
            }
            block_rows(n, k, qs, ds, s16, qb, db, sb, s16b);
        };
        let qs = &mut self.qs[..ntb * tk];
        let ds = &mut self.ds[..ntb * 2 * tnb];
        let s16 = &mut self.s16[..ntb * 2 * tnb];
        let qb = &mut self.qb[..ntb * tk / 4];
        let db = &mut self.db[..ntb * tnb];
        let sb = &mut self.sb[..ntb * tnb];
        let s16b = &mut self.s16b[..ntb * 2 * tnb];
        if ntb >= 2 && rayon::current_num_threads() > 1 {
            x.par_chunks(tk)
                .zip(qs.par_chunks_mut(tk))
                .zip(ds.par_chunks_mut(2 * tnb))
                .zip(s16.par_chunks_mut(2 * tnb))
                .zip(qb.par_chunks_mut(tk / 4))
                .zip(
                    db.par_chunks_mut(tnb)
                        .zip(sb.par_chunks_mut(tnb))
                        .zip(s16b.par_chunks_mut(2 * tnb)),
                )
                .for_each(work);
        } else {
            x.chunks(tk)
                .zip(qs.chunks_mut(tk))
                .zip(ds.chunks_mut(2 * tnb))
                .zip(s16.chunks_mut(2 * tnb))
                .zip(qb.chunks_mut(tk / 4))
                .zip(
                    db.chunks_mut(tnb)
                        .zip(sb.chunks_mut(tnb))
                        .zip(s16b.chunks_mut(2 * tnb)),
                )
                .for_each(work);
        }
    }

    /// The token-blocked layout of token block `tb` (tokens `6 tb..6 tb + 6`).
    pub(crate) fn block(&self, tb: usize) -> Q8Block {
        let (k, nb) = (self.k, self.k / QK);
        let (tk, tnb) = (TOKEN_BLOCK * k, TOKEN_BLOCK * nb);
        assert!(tb * TOKEN_BLOCK < self.rows.max(1));
        Q8Block {
            q: self.qb[tb * tk / 4..(tb + 1) * tk / 4].as_ptr() as *const u8,
            d: self.db[tb * tnb..(tb + 1) * tnb].as_ptr(),
            s: self.sb[tb * tnb..(tb + 1) * tnb].as_ptr(),
            s16: self.s16b[tb * 2 * tnb..(tb + 1) * 2 * tnb].as_ptr(),
            nb,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn row(&self, t: usize) -> Q8Row<'_> {
        assert!(t < self.rows);
        let (k, nb) = (self.k, self.k / QK);
        Q8Row {
            qs: &self.qs[t * k..(t + 1) * k],
            ds: &self.ds[t * 2 * nb..(t + 1) * 2 * nb],
            s16: &self.s16[t * 2 * nb..(t + 1) * 2 * nb],
        }
    }

    /// The dequantized activations `d * q` of row `t` (tests, error bounds).
    pub fn dequantize_row(&self, t: usize) -> Vec<f32> {
        let r = self.row(t);
        r.qs.iter()
            .enumerate()
            .map(|(i, &q)| r.ds[2 * (i / QK)] * q as f32)
            .collect()
    }
}

fn grow<T: Copy>(v: &mut Vec<T>, len: usize, fill: T) {
    if v.len() < len {
        v.resize(len, fill);
    }
}

/// 16 values on one 64-byte line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Lanes<T: Copy>(pub [T; 16]);

/// Up to 32 weight rows unpacked for `gemm_tile`: `q[2j + r / 16].0[r % 16]` holds the
/// unsigned 8-bit values `4j..4j + 4` of row `r` (little-endian), `sc[2s + r / 16].0[r % 16]`
/// and `mn[..]` (same index) the scale and min coefficient of sub-block `s` of row `r`.
/// Rows past the tile's end are zero.
#[derive(Default)]
pub struct Tile {
    pub q: Vec<Lanes<u32>>,
    pub sc: Vec<Lanes<f32>>,
    pub mn: Vec<Lanes<f32>>,
}

impl Tile {
    /// Makes room for rows of `k` values with `nsub` sub-blocks.
    pub(crate) fn reserve(&mut self, k: usize, nsub: usize) {
        grow(&mut self.q, 2 * k / 4, Lanes::default());
        grow(&mut self.sc, 2 * nsub, Lanes::default());
        grow(&mut self.mn, 2 * nsub, Lanes::default());
    }

    /// Unpacks `n_rows <= 32` rows of `k` values of `dtype` from `w_rows` (see
    /// `scalar::unpack_block`; `signed_q8` as there).
    #[inline(always)]
    pub(crate) fn repack(
        &mut self,
        dtype: DType,
        w_rows: &[u8],
        n_rows: usize,
        k: usize,
        signed_q8: bool,
    ) {
        let (bl, bb, sub) = (
            dtype.block_len(),
            dtype.block_bytes(),
            scalar::sub_len(dtype),
        );
        let row_bytes = k / bl * bb;
        let nsub = k / sub;
        let spb = bl / sub;
        self.reserve(k, nsub);
        let mut v = [0u8; 256];
        let mut sc = [0f32; 16];
        let mut mn = [0f32; 16];
        for r in 0..TILE_ROWS {
            let (h, l) = (r / 16, r % 16);
            if r >= n_rows {
                for j in 0..k / 4 {
                    self.q[2 * j + h].0[l] = 0;
                }
                for s in 0..nsub {
                    self.sc[2 * s + h].0[l] = 0.0;
                    self.mn[2 * s + h].0[l] = 0.0;
                }
                continue;
            }
            let row = &w_rows[r * row_bytes..(r + 1) * row_bytes];
            for (bi, blk) in row.chunks_exact(bb).enumerate() {
                scalar::unpack_block(dtype, blk, &mut v[..bl], &mut sc, &mut mn, signed_q8);
                for g in 0..bl / 4 {
                    self.q[2 * (bi * bl / 4 + g) + h].0[l] =
                        u32::from_le_bytes([v[4 * g], v[4 * g + 1], v[4 * g + 2], v[4 * g + 3]]);
                }
                for j in 0..spb {
                    self.sc[2 * (bi * spb + j) + h].0[l] = sc[j];
                    self.mn[2 * (bi * spb + j) + h].0[l] = mn[j];
                }
            }
        }
    }
}

/// `(dtype, w_rows, row_bytes, xs, out)`: `out[r * xs.len() + t] = dot(row r, xs[t])`.
type DotRowsFn = fn(DType, &[u8], usize, &[Q8Row], &mut [f32]);
/// `(dtype, w_rows, n_rows, acts, tile, out)`: `out[t * 32 + r] = dot(row r, acts row t)`.
type GemmTileFn = fn(DType, &[u8], usize, &Q8Acts, &mut Tile, &mut [f32]);
type QuantizeFn = fn(&[f32], &mut [i8], &mut [f32], &mut [f32]);

struct Kernels {
    isa: Isa,
    quantize: QuantizeFn,
    dot_rows: DotRowsFn,
    gemm_tile: GemmTileFn,
}

/// Whether this CPU can run the integer kernels of level `isa`.
pub fn available(isa: Isa) -> bool {
    match isa {
        Isa::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            available(Isa::Avx2)
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

fn scalar_quantize(x: &[f32], q: &mut [i8], ds: &mut [f32], s16: &mut [f32]) {
    scalar::quantize_row(x, q, ds, s16)
}

/// The scalar "tile": row dots, transposed into the tile's output layout.
fn scalar_gemm_tile(
    dtype: DType,
    w_rows: &[u8],
    n_rows: usize,
    acts: &Q8Acts,
    _tile: &mut Tile,
    out: &mut [f32],
) {
    let row_bytes = dtype.bytes_for(acts.k()).expect("whole blocks");
    for r in 0..n_rows {
        let row = &w_rows[r * row_bytes..(r + 1) * row_bytes];
        for t in 0..acts.rows() {
            out[t * TILE_ROWS + r] = scalar::dot(dtype, row, acts.row(t));
        }
    }
}

fn kernels_for(isa: Isa) -> Kernels {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Kernels {
            isa,
            // SAFETY (all): only selected after `available(Isa::Avx512)`; sizes are
            // checked by the public entry points before the call.
            quantize: |x, q, d, s| unsafe { super::qdot_q8_avx512::quantize_row(x, q, d, s) },
            dot_rows: |t, w, rb, xs, o| unsafe { super::qdot_q8_avx512::dot_rows(t, w, rb, xs, o) },
            gemm_tile: |t, w, n, a, tile, o| unsafe {
                super::qdot_q8_avx512::gemm_tile(t, w, n, a, tile, o)
            },
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels {
            isa,
            // SAFETY (all): only selected after `available(Isa::Avx2)`; sizes checked.
            quantize: scalar_quantize,
            dot_rows: |t, w, rb, xs, o| unsafe { super::qdot_q8_avx2::dot_rows(t, w, rb, xs, o) },
            gemm_tile: |t, w, n, a, tile, o| unsafe {
                super::qdot_q8_avx2::gemm_tile(t, w, n, a, tile, o)
            },
        },
        _ => Kernels {
            isa: Isa::Scalar,
            quantize: scalar_quantize,
            dot_rows: scalar::dot_rows,
            gemm_tile: scalar_gemm_tile,
        },
    }
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| kernels_for(super::qdot::best_isa(available)))
}

/// The kernel level this process uses for integer dots.
pub fn isa() -> Isa {
    kernels().isa
}

fn check_dot_rows(dtype: DType, w_rows: &[u8], row_len: usize, xs: &[Q8Row], out: &[f32]) -> usize {
    assert!(supported(dtype), "qdot_q8: {dtype} has no integer kernel");
    let row_bytes = dtype
        .bytes_for(row_len)
        .expect("qdot_q8: row length is not a whole number of blocks");
    assert!(
        xs.iter()
            .all(|x| x.qs.len() == row_len && x.ds.len() == 2 * row_len / QK),
        "qdot_q8: activation rows do not hold {row_len} values"
    );
    let n = if xs.is_empty() {
        0
    } else {
        out.len() / xs.len()
    };
    assert_eq!(out.len(), n * xs.len(), "qdot_q8: out is not rows x tokens");
    assert_eq!(
        Some(w_rows.len()),
        row_bytes.checked_mul(n),
        "qdot_q8: w_rows does not hold the output's rows"
    );
    row_bytes
}

/// `out[r * xs.len() + t] = dot(row r of w_rows, xs[t])` for the `out.len() / xs.len()`
/// consecutive weight rows of `row_len` values in `w_rows`.
pub fn dot_rows(dtype: DType, w_rows: &[u8], row_len: usize, xs: &[Q8Row], out: &mut [f32]) {
    let rb = check_dot_rows(dtype, w_rows, row_len, xs, out);
    if xs.is_empty() || out.is_empty() {
        return;
    }
    (kernels().dot_rows)(dtype, w_rows, rb, xs, out)
}

/// One dot product (tests, simple callers).
pub fn dot(dtype: DType, row: &[u8], x: Q8Row) -> f32 {
    let mut out = [0f32];
    dot_rows(dtype, row, x.qs.len(), &[x], &mut out);
    out[0]
}

/// `dot_rows` with a given kernel level, or None when this CPU lacks it.
pub fn dot_rows_with(
    isa: Isa,
    dtype: DType,
    w_rows: &[u8],
    row_len: usize,
    xs: &[Q8Row],
    out: &mut [f32],
) -> Option<()> {
    let rb = check_dot_rows(dtype, w_rows, row_len, xs, out);
    if !available(isa) {
        return None;
    }
    if !xs.is_empty() && !out.is_empty() {
        (kernels_for(isa).dot_rows)(dtype, w_rows, rb, xs, out);
    }
    Some(())
}

fn check_tile(dtype: DType, w_rows: &[u8], n_rows: usize, acts: &Q8Acts, out: &[f32]) {
    assert!(supported(dtype), "qdot_q8: {dtype} has no integer kernel");
    assert!(
        n_rows <= TILE_ROWS,
        "qdot_q8: more than {TILE_ROWS} rows in a tile"
    );
    let rb = dtype
        .bytes_for(acts.k())
        .expect("qdot_q8: row length is not a whole number of blocks");
    assert_eq!(
        w_rows.len(),
        rb * n_rows,
        "qdot_q8: w_rows does not hold n_rows rows"
    );
    assert!(
        out.len() >= acts.rows() * TILE_ROWS,
        "qdot_q8: tile output too small"
    );
}

thread_local! {
    static TILE: RefCell<Tile> = RefCell::new(Tile::default());
}

/// `out[t * 32 + r] = dot(row r of w_rows, acts row t)` for `n_rows <= 32` consecutive
/// weight rows of `acts.k()` values and every token row of `acts`; the columns
/// `n_rows..32` of `out` get unspecified values. Uses a per-thread unpacking buffer.
pub fn gemm_tile(dtype: DType, w_rows: &[u8], n_rows: usize, acts: &Q8Acts, out: &mut [f32]) {
    gemm_tile_impl(kernels(), dtype, w_rows, n_rows, acts, out)
}

/// `gemm_tile` with a given kernel level, or None when this CPU lacks it.
pub fn gemm_tile_with(
    isa: Isa,
    dtype: DType,
    w_rows: &[u8],
    n_rows: usize,
    acts: &Q8Acts,
    out: &mut [f32],
) -> Option<()> {
    check_tile(dtype, w_rows, n_rows, acts, out);
    available(isa).then(|| gemm_tile_impl(&kernels_for(isa), dtype, w_rows, n_rows, acts, out))
}

fn gemm_tile_impl(
    k: &Kernels,
    dtype: DType,
    w_rows: &[u8],
    n_rows: usize,
    acts: &Q8Acts,
    out: &mut [f32],
) {
    check_tile(dtype, w_rows, n_rows, acts, out);
    if acts.rows() == 0 || acts.k() == 0 {
        return;
    }
    TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut tile) => (k.gemm_tile)(dtype, w_rows, n_rows, acts, &mut tile, out),
        // Re-entered on this thread (not the case in this crate): use a temporary buffer.
        Err(_) => (k.gemm_tile)(dtype, w_rows, n_rows, acts, &mut Tile::default(), out),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use half::f16;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub(crate) const TYPES: [DType; 6] = [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// A random row of `n` values of `dtype` with finite, moderate scales.
    pub(crate) fn random_row(rng: &mut ChaCha8Rng, dtype: DType, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; dtype.bytes_for(n).unwrap()];
        rng.fill(&mut b[..]);
        let offs: &[usize] = match dtype {
            DType::Q4_0 | DType::Q8_0 => &[0],
            DType::Q4_1 | DType::Q4K | DType::Q5K => &[0, 2],
            DType::Q6K => &[208],
            _ => unreachable!(),
        };
        for blk in b.chunks_exact_mut(dtype.block_bytes()) {
            for &o in offs {
                let v: f32 = rng.random_range(-1.0..1.0) * 0.1;
                blk[o..o + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        b
    }

    /// Activations with a spread of magnitudes per block (and some all-zero blocks).
    pub(crate) fn random_x(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for (b, blk) in x.chunks_exact_mut(QK).enumerate() {
            let scale = match b % 5 {
                0 => 0.0,
                1 => 30.0,
                2 => 1e-3,
                _ => 1.0,
            };
            if b > 0 {
                blk.iter_mut().for_each(|v| *v *= scale);
            }
        }
        x
    }

    fn dequant(dtype: DType, row: &[u8], n: usize) -> Vec<f32> {
        let mut w = vec![0f32; n];
        crate::tensor::quant::dequantize(dtype, row, &mut w);
        w
    }

    /// Magnitude for f32 rounding tolerances: per sub-block, `|sc dx| sum(v |q|)` and
    /// `|mn sx|` bounded by `|mn| dx sum |q|`, i.e. the size of the terms the kernels add.
    fn term_scale(dtype: DType, row: &[u8], x: Q8Row) -> f64 {
        let (bl, sub) = (dtype.block_len(), scalar::sub_len(dtype));
        let (mut v, mut sc, mut mn) = ([0u8; 256], [0f32; 16], [0f32; 16]);
        let mut s = 0f64;
        for (bi, blk) in row.chunks_exact(dtype.block_bytes()).enumerate() {
            scalar::unpack_block(dtype, blk, &mut v[..bl], &mut sc, &mut mn, false);
            for j in 0..bl / sub {
                let base = bi * bl + j * sub;
                let dx = x.ds[2 * (base / QK)] as f64;
                for i in 0..sub {
                    let q = (x.qs[base + i] as f64).abs();
                    s += (sc[j] as f64 * v[j * sub + i] as f64).abs() * dx * q
                        + (mn[j] as f64).abs() * dx * q;
                }
            }
        }
        s
    }

    fn acts_of(x: &[f32], rows: usize, k: usize) -> Q8Acts {
        let mut a = Q8Acts::new();
        a.quantize(x, rows, k);
        a
    }

    #[test]
    fn q8_quantize_simd_matches_scalar_bitwise() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for isa in [Isa::Avx2, Isa::Avx512] {
            if !available(isa) {
                eprintln!("qdot_q8: {isa:?} not available, skipped");
                continue;
            }
            let k = kernels_for(isa);
            for n in [32, 64, 576, 1536] {
                let x = random_x(&mut rng, n);
                let (mut q0, mut d0, mut s0) =
                    (vec![0i8; n], vec![0f32; n / 16], vec![0f32; n / 16]);
                let (mut q1, mut d1, mut s1) = (q0.clone(), d0.clone(), s0.clone());
                scalar::quantize_row(&x, &mut q0, &mut d0, &mut s0);
                (k.quantize)(&x, &mut q1, &mut d1, &mut s1);
                assert_eq!(q0, q1, "{isa:?} n={n}");
                assert_eq!(d0, d1, "{isa:?} n={n}");
                assert_eq!(s0, s1, "{isa:?} n={n}");
            }
        }
    }

    #[test]
    fn q8_quantize_error_is_half_a_step() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let x = random_x(&mut rng, 1024);
        let a = acts_of(&x, 1, 1024);
        let xr = a.dequantize_row(0);
        let r = a.row(0);
        for (b, (xb, yb)) in x.chunks_exact(QK).zip(xr.chunks_exact(QK)).enumerate() {
            let d = r.ds[2 * b];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(d, amax / 127.0);
            let qsum: i32 = r.qs[b * QK..(b + 1) * QK].iter().map(|&q| q as i32).sum();
            assert_eq!(r.ds[2 * b + 1], d * qsum as f32);
            for (u, v) in xb.iter().zip(yb) {
                assert!((u - v).abs() <= d * 0.5001, "block {b}: {u} vs {v} (d {d})");
            }
        }
    }

    /// The scalar twin equals the exact f32 dot of the dequantized weights and the
    /// dequantized activations (up to f32 rounding), and is within the activation
    /// rounding bound of the exact dot with the original activations.
    #[test]
    fn q8_scalar_matches_exact_within_quantization_error() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for dtype in TYPES {
            for nblk in [1, 2, 3, 6] {
                let n = nblk * dtype.block_len();
                for _ in 0..4 {
                    let row = random_row(&mut rng, dtype, n);
                    let x = random_x(&mut rng, n);
                    let a = acts_of(&x, 1, n);
                    let got = scalar::dot(dtype, &row, a.row(0)) as f64;
                    let w = dequant(dtype, &row, n);
                    let xr = a.dequantize_row(0);
                    let on_quantized: f64 =
                        w.iter().zip(&xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let tol = 1e-5 * term_scale(dtype, &row, a.row(0)) + 1e-30;
                    assert!(
                        (got - on_quantized).abs() <= tol,
                        "{dtype} n={n}: {got} vs {on_quantized} (tol {tol})"
                    );
                    let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let bound: f64 = w
                        .iter()
                        .enumerate()
                        .map(|(i, &wv)| wv.abs() as f64 * a.row(0).ds[2 * (i / QK)] as f64 * 0.5)
                        .sum::<f64>()
                        * 1.001
                        + tol;
                    assert!(
                        (got - exact).abs() <= bound,
                        "{dtype} n={n}: {got} vs exact {exact} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn q8_dot_rows_simd_matches_scalar() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut tested = 0;
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if !available(isa) {
                eprintln!("qdot_q8: {isa:?} not available, skipped");
                continue;
            }
            for dtype in TYPES {
                for nblk in [1, 2, 3, 5, 18] {
                    let n = nblk * dtype.block_len();
                    let nrows = 3;
                    let w: Vec<u8> = (0..nrows)
                        .flat_map(|_| random_row(&mut rng, dtype, n))
                        .collect();
                    for ntok in 1..=6 {
                        let x: Vec<f32> = (0..ntok).flat_map(|_| random_x(&mut rng, n)).collect();
                        let a = acts_of(&x, ntok, n);
                        let xs: Vec<Q8Row> = (0..ntok).map(|t| a.row(t)).collect();
                        let mut out = vec![0f32; nrows * ntok];
                        dot_rows_with(isa, dtype, &w, n, &xs, &mut out).unwrap();
                        let rb = w.len() / nrows;
                        for r in 0..nrows {
                            let row = &w[r * rb..(r + 1) * rb];
                            for t in 0..ntok {
                                let want = scalar::dot(dtype, row, a.row(t)) as f64;
                                let got = out[r * ntok + t] as f64;
                                let tol = 2e-6 * term_scale(dtype, row, a.row(t)) + 1e-30;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{isa:?} {dtype} n={n} row {r} tok {t}/{ntok}: {got} vs {want}"
                                );
                                tested += 1;
                            }
                        }
                    }
                }
            }
        }
        eprintln!("qdot_q8: {tested} row dots checked against scalar");
    }

    #[test]
    fn q8_gemm_tile_simd_matches_scalar() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut tested = 0;
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if !available(isa) {
                continue;
            }
            for dtype in TYPES {
                for nblk in [1, 3] {
                    let n = nblk * dtype.block_len();
                    for (nrows, ntok) in [(32, 6), (16, 8), (5, 1), (32, 13), (27, 19), (1, 3)] {
                        let w: Vec<u8> = (0..nrows)
                            .flat_map(|_| random_row(&mut rng, dtype, n))
                            .collect();
                        let x: Vec<f32> = (0..ntok).flat_map(|_| random_x(&mut rng, n)).collect();
                        let a = acts_of(&x, ntok, n);
                        let mut out = vec![f32::NAN; ntok * TILE_ROWS];
                        gemm_tile_with(isa, dtype, &w, nrows, &a, &mut out).unwrap();
                        let rb = w.len() / nrows;
                        for r in 0..nrows {
                            let row = &w[r * rb..(r + 1) * rb];
                            for t in 0..ntok {
                                let want = scalar::dot(dtype, row, a.row(t)) as f64;
                                let got = out[t * TILE_ROWS + r] as f64;
                                let tol = 2e-6 * term_scale(dtype, row, a.row(t)) + 1e-30;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{isa:?} {dtype} n={n} {nrows}x{ntok} ({r},{t}): {got} vs {want}"
                                );
                                tested += 1;
                            }
                        }
                    }
                }
            }
        }
        eprintln!("qdot_q8: {tested} tile dots checked against scalar");
    }

    /// The AVX-512 gather repack produces the scalar repack's tile exactly.
    #[test]
    fn q8_repack_simd_matches_scalar() {
        #[cfg(target_arch = "x86_64")]
        {
            if !available(Isa::Avx512) {
                eprintln!("qdot_q8: AVX-512 VNNI not available, skipped");
                return;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            for dtype in TYPES {
                let k = 3 * dtype.block_len();
                for n_rows in [32, 17, 16, 5, 1] {
                    let w: Vec<u8> = (0..n_rows)
                        .flat_map(|_| random_row(&mut rng, dtype, k))
                        .collect();
                    let (mut a, mut b) = (Tile::default(), Tile::default());
                    a.repack(dtype, &w, n_rows, k, false);
                    // Stale contents must be overwritten: fill b with garbage first.
                    b.reserve(k, k / scalar::sub_len(dtype));
                    b.q.iter_mut().for_each(|l| l.0 = [0xA5A5_A5A5; 16]);
                    b.sc.iter_mut().for_each(|l| l.0 = [f32::NAN; 16]);
                    b.mn.iter_mut().for_each(|l| l.0 = [f32::NAN; 16]);
                    // SAFETY: AVX-512 VNNI checked above; w holds n_rows rows of k values.
                    unsafe { super::super::qdot_q8_avx512::repack(dtype, &w, n_rows, k, &mut b) };
                    let nsub = k / scalar::sub_len(dtype);
                    for j in 0..2 * k / 4 {
                        assert_eq!(a.q[j].0, b.q[j].0, "{dtype} {n_rows} rows: group {j}");
                    }
                    for j in 0..2 * nsub {
                        assert_eq!(a.sc[j].0, b.sc[j].0, "{dtype} {n_rows} rows: scale {j}");
                        assert_eq!(a.mn[j].0, b.mn[j].0, "{dtype} {n_rows} rows: min {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn q8_extreme_values() {
        // All-0x00/0xFF payloads hit the ends of every quant range; activations at +-127.
        for dtype in TYPES {
            for fill in [0x00u8, 0xFF, 0x0F, 0xF0, 0x55, 0x80] {
                let n = 2 * dtype.block_len();
                let mut row = vec![fill; dtype.bytes_for(n).unwrap()];
                let offs: &[usize] = match dtype {
                    DType::Q6K => &[208],
                    DType::Q4_1 | DType::Q4K | DType::Q5K => &[0, 2],
                    _ => &[0],
                };
                for blk in row.chunks_exact_mut(dtype.block_bytes()) {
                    for &o in offs {
                        blk[o..o + 2].copy_from_slice(&f16::from_f32(0.03125).to_le_bytes());
                    }
                }
                let x: Vec<f32> = (0..n)
                    .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
                    .collect();
                let a = acts_of(&x, 1, n);
                let w = dequant(dtype, &row, n);
                let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                    let mut out = [0f32];
                    if dot_rows_with(isa, dtype, &row, n, &[a.row(0)], &mut out).is_none() {
                        continue;
                    }
                    let tol = 1e-5 * term_scale(dtype, &row, a.row(0)) + 1e-30;
                    assert!(
                        (out[0] as f64 - want).abs() <= tol,
                        "{isa:?} {dtype} fill {fill:#x}: {} vs {want}",
                        out[0]
                    );
                    let mut tile = vec![0f32; TILE_ROWS];
                    gemm_tile_with(isa, dtype, &row, 1, &a, &mut tile).unwrap();
                    assert!(
                        (tile[0] as f64 - want).abs() <= tol,
                        "{isa:?} {dtype} tile fill {fill:#x}: {} vs {want}",
                        tile[0]
                    );
                }
            }
        }
    }

    /// Where the time of a tile goes (1 thread):
    /// `cargo test --release --lib q8_tile_breakdown -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn q8_tile_breakdown() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let isa = isa();
        let kern = kernels_for(isa);
        for dtype in TYPES {
            for k in [576usize, 1536] {
                if !k.is_multiple_of(dtype.block_len()) {
                    continue;
                }
                let rows = 576;
                let w: Vec<u8> = (0..rows)
                    .flat_map(|_| random_row(&mut rng, dtype, k))
                    .collect();
                let rb = w.len() / rows;
                let ntok = 512;
                let x = random_x(&mut rng, k * ntok);
                let mut a = Q8Acts::new();
                let t = std::time::Instant::now();
                for _ in 0..10 {
                    a.quantize(&x, ntok, k);
                }
                let tq = t.elapsed().as_secs_f64() / 10.0;
                let pool1 = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                let tq1 = pool1.install(|| {
                    let t = std::time::Instant::now();
                    for _ in 0..10 {
                        a.quantize(&x, ntok, k);
                    }
                    t.elapsed().as_secs_f64() / 10.0
                });
                let (mut q, mut d, mut s16) =
                    (vec![0i8; k], vec![0f32; k / 16], vec![0f32; k / 16]);
                let t = std::time::Instant::now();
                for _ in 0..10 {
                    for row in x.chunks_exact(k) {
                        (kern.quantize)(row, &mut q, &mut d, &mut s16);
                    }
                }
                let tqr = t.elapsed().as_secs_f64() / 10.0;
                eprintln!(
                    "  quantize {ntok}x{k}: 1 thread {:.3} ms (rows alone {:.3} ms)",
                    tq1 * 1e3,
                    tqr * 1e3
                );
                let mut tile = Tile::default();
                let signed = isa == Isa::Avx2 && dtype == DType::Q8_0;
                let t = std::time::Instant::now();
                for _ in 0..20 {
                    for r0 in (0..rows).step_by(TILE_ROWS) {
                        let wt = &w[r0 * rb..(r0 + TILE_ROWS) * rb];
                        #[cfg(target_arch = "x86_64")]
                        if isa == Isa::Avx512 {
                            // SAFETY: the process's kernel level is AVX-512 VNNI.
                            unsafe {
                                super::super::qdot_q8_avx512::repack(
                                    dtype, wt, TILE_ROWS, k, &mut tile,
                                )
                            };
                            continue;
                        }
                        tile.repack(dtype, wt, TILE_ROWS, k, signed);
                    }
                }
                let tr = t.elapsed().as_secs_f64() / 20.0;
                let mut out = vec![0f32; ntok * TILE_ROWS];
                let t = std::time::Instant::now();
                for _ in 0..3 {
                    for r0 in (0..rows).step_by(TILE_ROWS) {
                        let wt = &w[r0 * rb..(r0 + TILE_ROWS) * rb];
                        (kern.gemm_tile)(dtype, wt, TILE_ROWS, &a, &mut tile, &mut out);
                    }
                }
                let tt = t.elapsed().as_secs_f64() / 3.0;
                let macs = (rows * k * ntok) as f64;
                eprintln!(
                    "{isa:?} {dtype:5} {rows}x{k} x {ntok} tok: quantize {:.3} ms, repack {:.3} ms, tile total {:.3} ms = {:.1} GMAC/s, kernel alone {:.1} GMAC/s",
                    tq * 1e3,
                    tr * 1e3,
                    tt * 1e3,
                    macs / tt / 1e9,
                    macs / (tt - tr) / 1e9
                );
            }
        }
    }

    /// Throughput of each kernel level against the exact f32 kernels:
    /// `cargo test --release --lib q8_kernel_bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn q8_kernel_bench() {
        // Seconds per call: the best of 7 batches of at least 20 ms.
        fn best(mut f: impl FnMut()) -> f64 {
            f();
            let mut n = 1;
            while {
                let t = std::time::Instant::now();
                (0..n).for_each(|_| f());
                t.elapsed().as_secs_f64() < 0.02
            } {
                n *= 2;
            }
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    (0..n).for_each(|_| f());
                    t.elapsed().as_secs_f64() / n as f64
                })
                .fold(f64::INFINITY, f64::min)
        }
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let only: Option<DType> = std::env::var("LLMRT_BENCH_DTYPE")
            .ok()
            .and_then(|v| TYPES.into_iter().find(|d| d.name() == v));
        let isas: Vec<Isa> = match std::env::var("LLMRT_BENCH_ISAS").ok().as_deref() {
            Some("avx512") => vec![Isa::Avx512],
            Some("all") => vec![Isa::Scalar, Isa::Avx2, Isa::Avx512],
            _ => vec![Isa::Avx2, Isa::Avx512],
        };
        for dtype in TYPES {
            if only.is_some_and(|d| d != dtype) {
                continue;
            }
            let (rows, cols) = (1536usize, 768usize);
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(&mut rng, dtype, cols))
                .collect();
            let x = random_x(&mut rng, cols * 64);
            let rb = w.len() / rows;
            let mut line = format!("{dtype:5} {rows}x{cols}:");
            let mut out = vec![0f32; rows];
            let s = best(|| super::super::qdot::dot_rows(dtype, &w, cols, &x[..cols], &mut out));
            line += &format!(" exact-f32 {:.2}", (rows * cols) as f64 / s / 1e9);
            for &isa in &isas {
                if !available(isa) {
                    continue;
                }
                let kern = kernels_for(isa);
                for ntok in [1usize, 4] {
                    let a = acts_of(&x, ntok, cols);
                    let xs: Vec<Q8Row> = (0..ntok).map(|t| a.row(t)).collect();
                    let mut out = vec![0f32; rows * ntok];
                    let s = best(|| (kern.dot_rows)(dtype, &w, rb, &xs, &mut out));
                    line += &format!(
                        "  {isa:?}-dot{ntok} {:.2}",
                        (rows * cols * ntok) as f64 / s / 1e9
                    );
                }
                let a = acts_of(&x, 64, cols);
                let mut out = vec![0f32; 64 * TILE_ROWS];
                let mut tile = Tile::default();
                let s = best(|| {
                    for r0 in (0..rows).step_by(TILE_ROWS) {
                        let wt = &w[r0 * rb..(r0 + TILE_ROWS) * rb];
                        (kern.gemm_tile)(dtype, wt, TILE_ROWS, &a, &mut tile, &mut out);
                    }
                });
                line += &format!(
                    "  {isa:?}-tile64 {:.2}",
                    (rows * cols * 64) as f64 / s / 1e9
                );
            }
            eprintln!("{line}  (G values/s, 1 thread)");
        }
    }
}
