//! Weight rows repacked once at load for the AVX-512 integer kernels.
//!
//! The GGUF layout stores each row's blocks one after another, so a row dot has to turn
//! every block's nibbles into dot-product order and broadcast its scale before the
//! `vpdpbusd` (shuffle-bound: decode ran at 8–15 GB/s on L2-resident weights). Here 16
//! rows are interleaved: one 64-byte line holds the same 4 bytes of the same block of 16
//! rows, so one broadcast 4-byte group of activations feeds one `vpdpbusd` for 16 rows,
//! and the 16 rows' scales of a block are one 32-byte f16 vector. Decode (row dots) and
//! prefill (tiles of 32 rows x 6 tokens) read the same copy; the stored rows are released.
//!
//! Layout of one group of 16 rows (rows past the end are zero), `nb` blocks of 32 values:
//! - `nb * L` lines of quants, line `b * L + j` with lane `r` = row `r`'s 4 bytes:
//!   Q4_0/Q4_1 (`L` = 4): quant bytes `4j..4j + 4` of block `b` as stored (low nibbles
//!   are values `4j..4j + 4`, high nibbles values `16 + 4j..`); Q8_0 (`L` = 8): values
//!   `4j..4j + 4` as unsigned bytes `q + 128`;
//! - `nb` x 16 f16 scales `d`;
//! - Q4_1 only: `nb` x 16 f16 mins `m`.
//!
//! A row's value is `d * q + c` with `c` = `m` (Q4_1), `-8 d` (Q4_0), `-128 d` (Q8_0), so
//! with activations `dx * xq` per block a dot is `sum_b d dx sum(q xq) + c dx sum(xq)`:
//! the same integer sums as `qdot_q8_scalar`, which the tests hold the kernels to.

use super::qdot_q8::{self, Q8Acts, Q8Row, TILE_ROWS};
use crate::tensor::DType;

/// Rows per interleaved group.
pub const GROUP: usize = 16;

/// One 64-byte line (alignment of the packed buffer).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight's rows in the interleaved layout.
pub struct PackedRows {
    pub dtype: DType,
    /// Real rows (the last group may be partly padding).
    pub rows: usize,
    /// Values per row.
    pub k: usize,
    group_bytes: usize,
    data: Vec<Line>,
}

/// Whether `dtype` can be packed.
pub fn packable(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0)
}

/// Whether this process runs the packed kernels (AVX-512 VNNI integer kernels selected).
pub fn enabled() -> bool {
    qdot_q8::isa() == super::qdot::Isa::Avx512
}

/// Quant lines per block.
pub(crate) const fn lines_per_block(dtype: DType) -> usize {
    if matches!(dtype, DType::Q8_0) {
        8
    } else {
        4
    }
}

impl PackedRows {
    /// Packs `rows` rows of `k` values stored as `dtype` in `bytes` (GGUF block layout).
    pub fn pack(dtype: DType, bytes: &[u8], rows: usize, k: usize) -> PackedRows {
        assert!(packable(dtype) && k.is_multiple_of(32));
        let nb = k / 32;
        let row_bytes = nb * dtype.block_bytes();
        assert_eq!(bytes.len(), rows * row_bytes, "packed: size mismatch");
        let l = lines_per_block(dtype);
        let meta = if dtype == DType::Q4_1 { 64 } else { 32 };
        let group_bytes = (nb * (64 * l + meta)).next_multiple_of(64);
        let groups = rows.div_ceil(GROUP);
        let mut data = vec![Line([0; 64]); groups * group_bytes / 64];
        // SAFETY: `Line` is 64 plain bytes; the slice covers the whole buffer.
        let out = unsafe {
            std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, data.len() * 64)
        };
        for r in 0..rows {
            let (g, lane) = (r / GROUP, r % GROUP);
            let grp = &mut out[g * group_bytes..(g + 1) * group_bytes];
            let (quants, scales) = grp.split_at_mut(nb * 64 * l);
            for (b, blk) in bytes[r * row_bytes..(r + 1) * row_bytes]
                .chunks_exact(dtype.block_bytes())
                .enumerate()
            {
                scales[b * 32 + 2 * lane..b * 32 + 2 * lane + 2].copy_from_slice(&blk[..2]);
                let qs = match dtype {
                    DType::Q4_1 => {
                        let m = nb * 32 + b * 32 + 2 * lane;
                        scales[m..m + 2].copy_from_slice(&blk[2..4]);
                        &blk[4..20]
                    }
                    _ => &blk[2..],
                };
                for j in 0..l {
                    let dst = (b * l + j) * 64 + 4 * lane;
                    for i in 0..4 {
                        let q = qs[4 * j + i];
                        quants[dst + i] = if dtype == DType::Q8_0 { q ^ 0x80 } else { q };
                    }
                }
            }
        }
        PackedRows {
            dtype,
            rows,
            k,
            group_bytes,
            data,
        }
    }

    /// Block `b` of row `r` as stored before packing (GGUF bytes), into `out`.
    pub fn stored_block(&self, r: usize, b: usize, out: &mut [u8]) {
        let (nb, l) = (self.k / 32, lines_per_block(self.dtype));
        assert!(r < self.rows && b < nb && out.len() == self.dtype.block_bytes());
        let (g, lane) = (r / GROUP, r % GROUP);
        // SAFETY: the group lies inside `data` (`group_ptr` checks the index).
        let grp = unsafe { std::slice::from_raw_parts(self.group_ptr(g), self.group_bytes) };
        let (quants, scales) = grp.split_at(nb * 64 * l);
        out[..2].copy_from_slice(&scales[b * 32 + 2 * lane..b * 32 + 2 * lane + 2]);
        let qs = if self.dtype == DType::Q4_1 {
            let m = nb * 32 + b * 32 + 2 * lane;
            out[2..4].copy_from_slice(&scales[m..m + 2]);
            &mut out[4..]
        } else {
            &mut out[2..]
        };
        for j in 0..l {
            for i in 0..4 {
                let q = quants[(b * l + j) * 64 + 4 * lane + i];
                qs[4 * j + i] = if self.dtype == DType::Q8_0 { q ^ 0x80 } else { q };
            }
        }
    }

    /// Row `r` converted to f32, exactly as `quant::dequantize` of the stored row.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let bb = self.dtype.block_bytes();
        let mut blk = [0u8; 34];
        for (b, o) in out[..self.k].chunks_exact_mut(32).enumerate() {
            self.stored_block(r, b, &mut blk[..bb]);
            crate::tensor::quant::dequantize(self.dtype, &blk[..bb], o);
        }
    }

    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 64
    }

    /// Start of group `g`.
    pub(crate) fn group_ptr(&self, g: usize) -> *const u8 {
        assert!(g < self.groups());
        (self.data.as_ptr() as *const u8).wrapping_add(g * self.group_bytes)
    }
}

/// `out[t * ld + r] = dot(row r, xs[t])` for the rows of groups `g0..g1` (`r` counted from
/// row 0 of the weight; rows past `p.rows` are not written). At most 4 tokens.
///
/// # Safety
/// `out` must be valid for writes at `t * ld + r` for every token `t` and row `r` of the
/// groups (`r < p.rows`), and no other thread may access those places during the call.
pub unsafe fn dot_groups(
    p: &PackedRows,
    g0: usize,
    g1: usize,
    xs: &[Q8Row],
    out: *mut f32,
    ld: usize,
) {
    assert!(enabled() && g0 <= g1 && g1 <= p.groups() && ld >= p.rows);
    assert!(!xs.is_empty() && xs.len() <= qdot_q8::MAX_DOT_TOKENS);
    assert!(xs
        .iter()
        .all(|x| x.qs.len() == p.k && x.ds.len() >= 2 * p.k / 32));
    #[cfg(target_arch = "x86_64")]
    super::packed_avx512::dot_groups(p, g0, g1, xs, out, ld);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed kernels need x86-64")
}

/// `out[t * 32 + r] = dot(row 16 g0 + r, acts row t)` for the 32 rows of groups `g0`,
/// `g0 + 1` (only `g0` when it is the last), for every token row of `acts`.
pub fn gemm_tile(p: &PackedRows, g0: usize, acts: &Q8Acts, out: &mut [f32]) {
    assert!(enabled() && g0 < p.groups() && acts.k() == p.k);
    assert!(out.len() >= acts.rows() * TILE_ROWS);
    // SAFETY: AVX-512 VNNI checked by `enabled`; sizes checked above.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        super::packed_avx512::gemm_tile(p, g0, acts, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed kernels need x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::qdot_q8::tests::{random_row, random_x};
    use crate::backend::cpu::qdot_q8_scalar as scalar;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const KINDS: [DType; 3] = [DType::Q4_0, DType::Q4_1, DType::Q8_0];

    fn weight(rng: &mut ChaCha8Rng, dtype: DType, rows: usize, k: usize) -> Vec<u8> {
        (0..rows).flat_map(|_| random_row(rng, dtype, k)).collect()
    }

    fn acts(rng: &mut ChaCha8Rng, rows: usize, k: usize) -> Q8Acts {
        let x: Vec<f32> = (0..rows).flat_map(|_| random_x(rng, k)).collect();
        let mut a = Q8Acts::new();
        a.quantize(&x, rows, k);
        a
    }

    /// Equal up to f32 summation order: relative to the sum of |products|.
    fn close(got: f32, want: f32, dtype: DType, row: &[u8], x: &[f32], what: &str) {
        let mut w = vec![0f32; x.len()];
        crate::tensor::quant::dequantize(dtype, row, &mut w);
        let mag: f32 = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
        let tol = 1e-5 * mag + 1e-6;
        assert!(
            (got - want).abs() <= tol,
            "{what}: {got} vs {want} (tol {tol})"
        );
    }

    /// Row dots from the packed copy equal the scalar integer dots of the stored rows,
    /// for 1..4 tokens, a partial last group and every group range start.
    #[test]
    fn packed_dots_match_scalar() {
        if !enabled() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for dtype in KINDS {
            for (rows, k) in [(40, 96), (48, 64), (16, 576)] {
                let w = weight(&mut rng, dtype, rows, k);
                let p = PackedRows::pack(dtype, &w, rows, k);
                let rb = w.len() / rows;
                for nt in 1..=4 {
                    let a = acts(&mut rng, nt, k);
                    let xs: Vec<Q8Row> = (0..nt).map(|t| a.row(t)).collect();
                    for g0 in 0..p.groups() {
                        let mut out = vec![f32::NAN; nt * rows];
                        // SAFETY: out holds nt rows of `rows` values.
                        unsafe { dot_groups(&p, g0, p.groups(), &xs, out.as_mut_ptr(), rows) };
                        for r in g0 * GROUP..rows {
                            let row = &w[r * rb..(r + 1) * rb];
                            for (t, x) in xs.iter().enumerate() {
                                let want = scalar::dot(dtype, row, *x);
                                let xd = a.dequantize_row(t);
                                let what = format!("{dtype} r{r} t{t}");
                                close(out[t * rows + r], want, dtype, row, &xd, &what);
                            }
                        }
                        let untouched = out[..g0 * GROUP].iter().all(|v| v.is_nan());
                        assert!(untouched, "rows before group {g0} written");
                    }
                }
            }
        }
    }

    /// The packed copy gives back every stored block, and the exact dequantized rows.
    #[test]
    fn packed_rows_unpack_to_stored() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for dtype in KINDS {
            let (rows, k) = (21, 96);
            let w = weight(&mut rng, dtype, rows, k);
            let p = PackedRows::pack(dtype, &w, rows, k);
            let (rb, bb) = (w.len() / rows, dtype.block_bytes());
            let mut blk = vec![0u8; bb];
            let (mut got, mut want) = (vec![0f32; k], vec![0f32; k]);
            for r in 0..rows {
                for b in 0..k / 32 {
                    p.stored_block(r, b, &mut blk);
                    assert_eq!(blk, w[r * rb + b * bb..r * rb + (b + 1) * bb], "{dtype} r{r} b{b}");
                }
                p.dequantize_row(r, &mut got);
                crate::tensor::quant::dequantize(dtype, &w[r * rb..(r + 1) * rb], &mut want);
                assert_eq!(got, want);
            }
        }
    }

    /// Tiles from the packed copy equal the scalar dots for token counts around the
    /// 6-token blocks and for a tile that is a single last group.
    #[test]
    fn packed_tiles_match_scalar() {
        if !enabled() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for dtype in KINDS {
            let (rows, k) = (48, 128);
            let w = weight(&mut rng, dtype, rows, k);
            let p = PackedRows::pack(dtype, &w, rows, k);
            let rb = w.len() / rows;
            for nt in [1, 5, 6, 7, 13] {
                let a = acts(&mut rng, nt, k);
                for g0 in [0, 2] {
                    let mut out = vec![0f32; nt * TILE_ROWS];
                    gemm_tile(&p, g0, &a, &mut out);
                    for r in g0 * GROUP..(g0 * GROUP + TILE_ROWS).min(rows) {
                        let row = &w[r * rb..(r + 1) * rb];
                        for t in 0..nt {
                            let want = scalar::dot(dtype, row, a.row(t));
                            let got = out[t * TILE_ROWS + r - g0 * GROUP];
                            let what = format!("{dtype} r{r} t{t} nt{nt}");
                            close(got, want, dtype, row, &a.dequantize_row(t), &what);
                        }
                    }
                }
            }
        }
    }
}
