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

use super::qdot_q8::{self, Q8Acts, Q8Row, TILE_ROWS, TOKEN_BLOCK};
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

/// Whether rows of `k` values of `dtype` can be packed.
pub fn packable(dtype: DType, k: usize) -> bool {
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => true,
        DType::F16 | DType::BF16 => k.is_multiple_of(DENSE_STEP) && enabled_bf16(),
        _ => false,
    }
}

/// Columns per step of the dense kernels (row lengths must be a multiple).
pub const DENSE_STEP: usize = 4;

/// Whether the dense (F16/BF16) kernels can run: they multiply in bf16 for many tokens
/// (and share helpers with the VNNI kernels).
fn enabled_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return enabled() && is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
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
        assert!(packable(dtype, k));
        if dtype.block_len() == 1 {
            return Self::pack_dense(dtype, bytes, rows, k);
        }
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

    /// F16/BF16: line `c` of a group (32 bytes) holds value `c` of its 16 rows in bf16.
    /// F16 values are rounded to bf16 here, once: prefill multiplies in bf16, and decode
    /// must see the same weights, or a request's tokens would depend on its batch.
    fn pack_dense(dtype: DType, bytes: &[u8], rows: usize, k: usize) -> PackedRows {
        assert_eq!(bytes.len(), rows * k * 2, "packed: size mismatch");
        let group_bytes = (k * 32).next_multiple_of(64);
        let groups = rows.div_ceil(GROUP);
        let mut data = vec![Line([0; 64]); groups * group_bytes / 64];
        // SAFETY: `Line` is 64 plain bytes; the slice covers the whole buffer.
        let out = unsafe {
            std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, data.len() * 64)
        };
        for (r, row) in bytes.chunks_exact(2 * k).enumerate() {
            let base = r / GROUP * group_bytes + 2 * (r % GROUP);
            for (c, v) in row.chunks_exact(2).enumerate() {
                let v = match dtype {
                    DType::F16 => {
                        let f = half::f16::from_le_bytes([v[0], v[1]]).to_f32();
                        half::bf16::from_f32(f).to_le_bytes()
                    }
                    _ => [v[0], v[1]],
                };
                out[base + 32 * c..base + 32 * c + 2].copy_from_slice(&v);
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

    /// Value `c` of row `r` of a dense copy (bf16 bits).
    fn dense_value(&self, r: usize, c: usize) -> [u8; 2] {
        assert!(r < self.rows && c < self.k);
        // SAFETY: the group lies inside `data` (`group_ptr` checks the index).
        let grp =
            unsafe { std::slice::from_raw_parts(self.group_ptr(r / GROUP), self.group_bytes) };
        let i = 32 * c + 2 * (r % GROUP);
        [grp[i], grp[i + 1]]
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
                qs[4 * j + i] = if self.dtype == DType::Q8_0 {
                    q ^ 0x80
                } else {
                    q
                };
            }
        }
    }

    /// Row `r` converted to f32: for quantized rows exactly as `quant::dequantize` of the
    /// stored row; for dense rows the bf16 values of the copy.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.dtype.block_len() == 1 {
            for (c, o) in out[..self.k].iter_mut().enumerate() {
                *o = half::bf16::from_le_bytes(self.dense_value(r, c)).to_f32();
            }
            return;
        }
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

/// `out[t * ld + r] = x[t] · row r` in f32 for the rows of groups `g0..g1` of a dense
/// (F16/BF16) copy (rows past `p.rows` are not written). At most 4 tokens.
///
/// # Safety
/// As `dot_groups`.
pub unsafe fn dot_groups_f32(
    p: &PackedRows,
    g0: usize,
    g1: usize,
    xs: &[&[f32]],
    out: *mut f32,
    ld: usize,
) {
    assert!(p.dtype.block_len() == 1 && g0 <= g1 && g1 <= p.groups() && ld >= p.rows);
    assert!(!xs.is_empty() && xs.len() <= qdot_q8::MAX_DOT_TOKENS);
    assert!(xs.iter().all(|x| x.len() == p.k));
    #[cfg(target_arch = "x86_64")]
    super::packed_avx512::dot_groups_f32(p, g0, g1, xs, out, ld);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed kernels need x86-64")
}

/// Token rows rounded to bf16 for the dense tiles, in the layout the tile kernel reads:
/// for AMX plain rows (`xr`, padded with zero rows to a multiple of 32); otherwise blocks
/// of `TOKEN_BLOCK` tokens, `xb[(b * k / 2 + p) * 6 + t]` = values `2p`, `2p + 1` of token
/// `6b + t`. Buffers grow once.
#[derive(Default)]
pub struct Bf16Acts {
    rows: usize,
    k: usize,
    amx: bool,
    xb: Vec<u32>,
    xr: Vec<u16>,
}

impl Bf16Acts {
    /// Converts `rows` rows of `k` values (`k` even), in parallel on the current pool, for
    /// AMX where it runs.
    pub fn convert(&mut self, x: &[f32], rows: usize, k: usize) {
        self.convert_for(x, rows, k, amx_runs(k));
    }

    /// `convert`, choosing the AMX layout or not (tests run both kernels).
    pub fn convert_for(&mut self, x: &[f32], rows: usize, k: usize, amx: bool) {
        use rayon::prelude::*;
        assert!(k.is_multiple_of(2) && x.len() >= rows * k && (!amx || amx_runs(k)));
        (self.rows, self.k, self.amx) = (rows, k, amx);
        let x = &x[..rows * k];
        if amx {
            let padded = rows.next_multiple_of(AMX_TOKENS) * k;
            if self.xr.len() < padded {
                self.xr.resize(padded, 0);
            }
            self.xr[rows * k..padded].fill(0);
            self.xr[..rows * k]
                .par_chunks_mut(16 * k)
                .zip(x.par_chunks(16 * k))
                // SAFETY: `amx_runs` implies AVX-512 BF16; equal lengths.
                .for_each(|(out, x)| unsafe { super::packed_avx512::bf16_row(x, out) });
            return;
        }
        let per = k / 2 * TOKEN_BLOCK;
        let ntb = rows.div_ceil(TOKEN_BLOCK);
        if self.xb.len() < ntb * per {
            self.xb.resize(ntb * per, 0);
        }
        self.xb[..ntb * per]
            .par_chunks_mut(per)
            .zip(x.par_chunks(TOKEN_BLOCK * k))
            .for_each(|(out, x)| {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `enabled_bf16` held when the weights were packed; sizes as built.
                unsafe {
                    super::packed_avx512::bf16_block(x, x.len() / k, k, out)
                }
            });
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Rows of output a tile call writes (`rows`, padded for AMX).
    pub fn out_rows(&self) -> usize {
        if self.amx {
            self.rows.next_multiple_of(AMX_TOKENS)
        } else {
            self.rows
        }
    }
}

/// Tokens per AMX block.
#[cfg(target_arch = "x86_64")]
use super::packed_amx::AMX_TOKENS;
#[cfg(not(target_arch = "x86_64"))]
const AMX_TOKENS: usize = 32;

/// Whether the AMX tiles run for rows of `k` values.
pub fn amx_runs(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return k.is_multiple_of(32) && enabled_bf16() && super::packed_amx::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Scratch for one dense tile in bf16 (per thread, grows once).
#[derive(Default)]
pub struct Bf16Tile(Vec<Line>);

/// `out[t * 32 + r] = acts row t · row 16 g0 + r` (bf16 products, f32 sums) for the 32
/// rows of groups `g0`, `g0 + 1` (only `g0` when it is the last) of a dense copy.
pub fn gemm_tile_bf16(
    p: &PackedRows,
    g0: usize,
    acts: &Bf16Acts,
    tile: &mut Bf16Tile,
    out: &mut [f32],
) {
    assert!(p.dtype.block_len() == 1 && enabled_bf16() && g0 < p.groups());
    assert!(acts.k == p.k && out.len() >= acts.out_rows() * TILE_ROWS);
    let two = g0 + 1 < p.groups();
    let pairs = p.k / 2;
    if tile.0.len() < 2 * pairs {
        tile.0.resize(2 * pairs, Line([0; 64]));
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: BF16 checked above; the tile holds 2 lines per pair; `acts` holds
    // `rows.div_ceil(6)` blocks of `pairs * 6` words; `out` holds `rows * 32` values.
    unsafe {
        use super::packed_avx512::bf16_tile;
        let t = tile.0.as_mut_ptr() as *mut u8;
        if two {
            bf16_tile::<2>(p, g0, t);
        } else {
            bf16_tile::<1>(p, g0, t);
        }
        if acts.amx {
            let (x, o) = (acts.xr.as_ptr(), out.as_mut_ptr());
            let rows = acts.out_rows();
            // SAFETY: `amx` was only chosen where `amx_runs(k)`; sizes as asserted.
            if two {
                super::packed_amx::tile_dots::<2>(t, p.k, x, rows, o);
            } else {
                super::packed_amx::tile_dots::<1>(t, p.k, x, rows, o);
            }
            return;
        }
        let (x, o) = (acts.xb.as_ptr(), out.as_mut_ptr());
        super::packed_avx512::bf16_tile_all(t, two, pairs, x, acts.rows, o);
    }
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
                    assert_eq!(
                        blk,
                        w[r * rb + b * bb..r * rb + (b + 1) * bb],
                        "{dtype} r{r} b{b}"
                    );
                }
                p.dequantize_row(r, &mut got);
                crate::tensor::quant::dequantize(dtype, &w[r * rb..(r + 1) * rb], &mut want);
                assert_eq!(got, want);
            }
        }
    }

    fn dense_weight(rng: &mut ChaCha8Rng, dtype: DType, rows: usize, k: usize) -> Vec<u8> {
        use rand::Rng;
        (0..rows * k)
            .flat_map(|_| {
                let v: f32 = rng.random_range(-1.0..1.0);
                match dtype {
                    DType::F16 => half::f16::from_f32(v).to_le_bytes(),
                    _ => half::bf16::from_f32(v).to_le_bytes(),
                }
            })
            .collect()
    }

    fn values(dtype: DType, bytes: &[u8]) -> Vec<f32> {
        let mut v = vec![0f32; bytes.len() / 2];
        crate::tensor::quant::dequantize(dtype, bytes, &mut v);
        v
    }

    /// The dense copy holds the weights rounded to bf16; its row dots equal f64 dots of
    /// those and the activations up to f32 summation; its tiles equal f64 dots of those
    /// and the bf16-rounded activations likewise; both for a partial last group and token
    /// counts around the 6-token blocks.
    #[test]
    fn packed_dense_matches_reference() {
        if !enabled_bf16() {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let bf = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
        for dtype in [DType::F16, DType::BF16] {
            let (rows, k) = (40, 96);
            let wb = dense_weight(&mut rng, dtype, rows, k);
            // The copy holds the weights rounded to bf16.
            let w: Vec<f32> = values(dtype, &wb).iter().map(|&v| bf(v) as f32).collect();
            let p = PackedRows::pack(dtype, &wb, rows, k);
            let mut row = vec![0f32; k];
            p.dequantize_row(5, &mut row);
            assert_eq!(row, w[5 * k..6 * k]);
            for nt in [1, 3, 4, 7, 13] {
                let x: Vec<f32> = (0..nt).flat_map(|_| random_x(&mut rng, k)).collect();
                let check = |got: f32, r: usize, t: usize, round: &dyn Fn(f32) -> f64| {
                    let (wr, xt) = (&w[r * k..(r + 1) * k], &x[t * k..(t + 1) * k]);
                    let want: f64 = wr.iter().zip(xt).map(|(&a, &b)| round(a) * round(b)).sum();
                    let mag: f64 = wr
                        .iter()
                        .zip(xt)
                        .map(|(&a, &b)| (a as f64 * b as f64).abs())
                        .sum();
                    let tol = 1e-5 * mag + 1e-6;
                    let what = format!("{dtype} r{r} t{t} nt{nt}");
                    assert!((got as f64 - want).abs() <= tol, "{what}: {got} vs {want}");
                };
                if nt <= 4 {
                    let xs: Vec<&[f32]> = x.chunks(k).collect();
                    let mut out = vec![f32::NAN; nt * rows];
                    // SAFETY: out holds nt rows of `rows` values.
                    unsafe { dot_groups_f32(&p, 0, p.groups(), &xs, out.as_mut_ptr(), rows) };
                    for r in 0..rows {
                        (0..nt).for_each(|t| check(out[t * rows + r], r, t, &|v| v as f64));
                    }
                }
                let mut acts = Bf16Acts::default();
                let mut tile = Bf16Tile::default();
                for (amx, g0) in [(false, 0), (false, 2), (true, 0), (true, 2)] {
                    if amx && !amx_runs(k) {
                        continue;
                    }
                    acts.convert_for(&x, nt, k, amx);
                    let mut out = vec![0f32; acts.out_rows() * TILE_ROWS];
                    gemm_tile_bf16(&p, g0, &acts, &mut tile, &mut out);
                    for r in g0 * GROUP..(g0 * GROUP + TILE_ROWS).min(rows) {
                        (0..nt).for_each(|t| check(out[t * TILE_ROWS + r - g0 * GROUP], r, t, &bf));
                    }
                }
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
