//! Causal attention of each sequence's query rows over its paged KV context.
//!
//! Query row i of a sequence with `n_q` rows and context length `ctx` sits at position
//! `ctx - n_q + i` and attends to positions `0..=that` (or the sliding window before it).
//! Keys and values are found through the sequence's block table only. They are stored in
//! f32 or f16; f16 rows are widened to f32 as they are read, and all arithmetic is f32.

use super::qdot::{available, best_isa, Isa};
use super::scratch::with_scratch;
use super::SyncPtr;
use crate::backend::AttnMeta;
use crate::kv::{KvData, KvLayer};
use gemm::Parallelism;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::sync::OnceLock;

pub fn paged_attention(q: &[f32], cache: &KvLayer, meta: &AttnMeta, out: &mut [f32]) {
    let num_seqs = meta.seq_lens.len();
    let heads = meta.num_heads;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..num_seqs * heads).into_par_iter().for_each(|item| {
        let (s, h) = (item / heads, item % heads);
        let rows = meta.query_start_loc[s] as usize..meta.query_start_loc[s + 1] as usize;
        let ctx = meta.seq_lens[s] as usize;
        let table =
            &meta.block_tables[s * meta.max_blocks_per_seq..(s + 1) * meta.max_blocks_per_seq];
        if rows.len() >= MIN_ROWS_FOR_GEMM {
            // SAFETY: (row, head h) output slots are written by this task only.
            unsafe { attend_rows_gemm(q, h, rows, ctx, table, cache, meta, out_ptr) };
            return;
        }
        with_scratch(ctx, |scores| {
            for (i, row) in rows.clone().enumerate() {
                let pos = ctx - rows.len() + i;
                // SAFETY: (row, head h) output slots are written by this task only.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out_ptr.get().add((row * heads + h) * meta.head_dim),
                        meta.head_dim,
                    )
                };
                let qv = &q[(row * heads + h) * meta.head_dim..][..meta.head_dim];
                attend(qv, h, pos, table, cache, meta, &mut scores[..pos + 1], o);
            }
        });
    });
}

/// From this many query rows of a sequence on (prefill chunks), a head's attention runs as
/// two matrix products over its gathered keys and values instead of row by row.
const MIN_ROWS_FOR_GEMM: usize = 8;
/// Query rows per pair of products (bounds the scores buffer to this many rows x context).
const GEMM_ROW_TILE: usize = 128;

/// Per-thread buffers of the matrix-product path: one head's keys and values gathered
/// from the paged cache, and a tile's scores.
#[derive(Default)]
struct GemmScratch {
    k: Vec<f32>,
    v: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    static GEMM_SCRATCH: std::cell::RefCell<GemmScratch> = std::cell::RefCell::default();
}

/// Attention of a sequence's query `rows` for head `h`: S = Q K^T * scale, a causal (and
/// sliding-window) softmax per row, O = P V, with the `gemm` crate on this thread.
///
/// # Safety
/// `out` must hold every (row, head) slot of `rows`, written by this call only.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_rows_gemm(
    q: &[f32],
    h: usize,
    rows: std::ops::Range<usize>,
    ctx: usize,
    table: &[u32],
    cache: &KvLayer,
    meta: &AttnMeta,
    out: SyncPtr,
) {
    let (hd, heads) = (meta.head_dim, meta.num_heads);
    let kvh = h / (heads / meta.num_kv_heads);
    let bs = cache.block_size;
    GEMM_SCRATCH.with(|cell| {
        let mut sc = cell.borrow_mut();
        let sc = &mut *sc;
        sc.k.resize(ctx * hd, 0.0);
        sc.v.resize(ctx * hd, 0.0);
        for j in 0..ctx {
            let src = (table[j / bs] as usize * bs + j % bs) * cache.row_len + kvh * hd;
            load_row(&cache.k, src, &mut sc.k[j * hd..(j + 1) * hd]);
            load_row(&cache.v, src, &mut sc.v[j * hd..(j + 1) * hd]);
        }
        let n_q = rows.len();
        let mut r0 = 0;
        while r0 < n_q {
            let tn = GEMM_ROW_TILE.min(n_q - r0);
            let first_pos = ctx - n_q + r0;
            // Keys past the tile's last row are masked for every row of it.
            let width = first_pos + tn;
            sc.scores.resize(tn * width, 0.0);
            let q0 = q.as_ptr().add(((rows.start + r0) * heads + h) * hd);
            gemm::gemm(
                tn,
                width,
                hd,
                sc.scores.as_mut_ptr(),
                1,
                width as isize,
                false,
                q0,
                1,
                (heads * hd) as isize,
                sc.k.as_ptr(),
                hd as isize,
                1,
                0.0,
                meta.scale,
                false,
                false,
                false,
                Parallelism::None,
            );
            for i in 0..tn {
                let pos = first_pos + i;
                let lo = meta
                    .sliding_window
                    .map_or(0, |w| (pos + 1).saturating_sub(w));
                softmax_row(&mut sc.scores[i * width..(i + 1) * width], lo, pos);
            }
            let o0 = out.get().add(((rows.start + r0) * heads + h) * hd);
            gemm::gemm(
                tn,
                hd,
                width,
                o0,
                1,
                (heads * hd) as isize,
                false,
                sc.scores.as_ptr(),
                1,
                width as isize,
                sc.v.as_ptr(),
                1,
                hd as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
            r0 += tn;
        }
    });
}

/// The `dst.len()` values of `src` from `start`, as f32.
#[inline(always)]
fn load_row(src: &KvData, start: usize, dst: &mut [f32]) {
    let n = dst.len();
    match src {
        KvData::F32(c) => dst.copy_from_slice(&c[start..start + n]),
        KvData::F16(c) => c[start..start + n].convert_to_f32_slice(dst),
    }
}

/// Softmax of `row[lo..=pos]` in place; every other entry becomes 0.
fn softmax_row(row: &mut [f32], lo: usize, pos: usize) {
    let max = row[lo..=pos]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in &mut row[lo..=pos] {
        *s = exp_nonpositive(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    row[lo..=pos].iter_mut().for_each(|s| *s *= inv);
    row[..lo].fill(0.0);
    row[pos + 1..].fill(0.0);
}

/// One query row of one head, with the widest vector unit the CPU has: the same code,
/// compiled for AVX-512 or AVX2 (this crate's baseline is SSE2), per element type.
#[allow(clippy::too_many_arguments)]
fn attend(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    cache: &KvLayer,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match (&cache.k, &cache.v) {
        (KvData::F32(k), KvData::F32(v)) => {
            let rows = Rows {
                k,
                v,
                row_len: cache.row_len,
                block_size: cache.block_size,
            };
            attend_f32(qv, h, pos, table, &rows, meta, scores, out)
        }
        (KvData::F16(k), KvData::F16(v)) => {
            let rows = Rows {
                k,
                v,
                row_len: cache.row_len,
                block_size: cache.block_size,
            };
            match isa() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` found AVX-512F, which has the f16 -> f32 conversion.
                Isa::Avx512 => unsafe {
                    attend_avx512::<f16_x86::Avx512>(qv, h, pos, table, &rows, meta, scores, out)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` found AVX2, FMA and F16C.
                Isa::Avx2 => unsafe {
                    attend_avx2::<f16_x86::Avx2>(qv, h, pos, table, &rows, meta, scores, out)
                },
                // SAFETY: F16Rows is portable.
                _ => unsafe { attend_one::<F16Rows>(qv, h, pos, table, &rows, meta, scores, out) },
            }
        }
        _ => unreachable!("K and V of a layer have one element type"),
    }
}

/// `attend` over f32 rows.
#[allow(clippy::too_many_arguments)]
fn attend_f32(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    rows: &Rows<f32>,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    type R = F32Rows;
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` found the features these variants are compiled for.
        Isa::Avx512 => unsafe { attend_avx512::<R>(qv, h, pos, table, rows, meta, scores, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { attend_avx2::<R>(qv, h, pos, table, rows, meta, scores, out) },
        // SAFETY: F32Rows is portable.
        _ => unsafe { attend_one::<R>(qv, h, pos, table, rows, meta, scores, out) },
    }
}

fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| best_isa(available))
}

/// One layer's keys and values of element type `T`, with the slot geometry.
struct Rows<'a, T> {
    k: &'a [T],
    v: &'a [T],
    row_len: usize,
    block_size: usize,
}

/// How the row kernel reads key and value rows of element type `Elem`.
trait KvRow {
    type Elem;
    /// `q · k`.
    ///
    /// # Safety
    /// The CPU has the features the implementation is compiled for.
    unsafe fn dot(q: &[f32], k: &[Self::Elem]) -> f32;
    /// `out += p * v`.
    ///
    /// # Safety
    /// As `dot`.
    unsafe fn axpy(out: &mut [f32], p: f32, v: &[Self::Elem]);
}

/// f32 rows (portable; vectorised by the compiler in the multiversioned callers).
struct F32Rows;

impl KvRow for F32Rows {
    type Elem = f32;
    #[inline(always)]
    unsafe fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot(q, k)
    }
    #[inline(always)]
    unsafe fn axpy(out: &mut [f32], p: f32, v: &[f32]) {
        for (o, v) in out.iter_mut().zip(v) {
            *o += p * v;
        }
    }
}

/// f16 rows without x86 vector conversions.
struct F16Rows;

impl KvRow for F16Rows {
    type Elem = f16;
    #[inline(always)]
    unsafe fn dot(q: &[f32], k: &[f16]) -> f32 {
        q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
    }
    #[inline(always)]
    unsafe fn axpy(out: &mut [f32], p: f32, v: &[f16]) {
        for (o, v) in out.iter_mut().zip(v) {
            *o += p * v.to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
unsafe fn attend_avx512<R: KvRow>(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    rows: &Rows<R::Elem>,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_one::<R>(qv, h, pos, table, rows, meta, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<R: KvRow>(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    rows: &Rows<R::Elem>,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_one::<R>(qv, h, pos, table, rows, meta, scores, out)
}

/// # Safety
/// As `R::dot`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_one<R: KvRow>(
    qv: &[f32],
    h: usize,
    pos: usize,
    table: &[u32],
    rows: &Rows<R::Elem>,
    meta: &AttnMeta,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = meta.head_dim;
    let kvh = h / (meta.num_heads / meta.num_kv_heads);
    let bs = rows.block_size;
    let lo = meta
        .sliding_window
        .map_or(0, |w| (pos + 1).saturating_sub(w));
    let row_of = |j: usize| (table[j / bs] as usize * bs + j % bs) * rows.row_len + kvh * hd;
    let mut max = f32::NEG_INFINITY;
    for (j, score) in scores.iter_mut().enumerate().take(pos + 1).skip(lo) {
        let kv = &rows.k[row_of(j)..][..hd];
        *score = R::dot(qv, kv) * meta.scale;
        max = max.max(*score);
    }
    let mut sum = 0.0f32;
    for s in &mut scores[lo..=pos] {
        *s = exp_nonpositive(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    out.fill(0.0);
    for (j, score) in scores.iter().enumerate().take(pos + 1).skip(lo) {
        let p = score * inv;
        R::axpy(out, p, &rows.v[row_of(j)..][..hd]);
    }
}

/// f16 row readers with the x86 conversion instructions (F16C's 8 lanes, AVX-512F's 16).
#[cfg(target_arch = "x86_64")]
mod f16_x86 {
    use super::KvRow;
    use half::f16;
    use std::arch::x86_64::*;

    pub struct Avx2;
    pub struct Avx512;

    impl KvRow for Avx2 {
        type Elem = f16;
        #[inline(always)]
        unsafe fn dot(q: &[f32], k: &[f16]) -> f32 {
            dot_avx2(q, k)
        }
        #[inline(always)]
        unsafe fn axpy(out: &mut [f32], p: f32, v: &[f16]) {
            axpy_avx2(out, p, v)
        }
    }

    impl KvRow for Avx512 {
        type Elem = f16;
        #[inline(always)]
        unsafe fn dot(q: &[f32], k: &[f16]) -> f32 {
            dot_avx512(q, k)
        }
        #[inline(always)]
        unsafe fn axpy(out: &mut [f32], p: f32, v: &[f16]) {
            axpy_avx512(out, p, v)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(v: &[f16], i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(v: &[f16], i: usize) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(i).cast()))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), load8(k, i), acc);
            i += 8;
        }
        let lanes: [f32; 8] = std::mem::transmute(acc);
        let mut s: f32 = lanes.iter().sum();
        for j in i..n {
            s += q[j] * k[j].to_f32();
        }
        s
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_avx2(out: &mut [f32], p: f32, v: &[f16]) {
        let n = out.len().min(v.len());
        let pv = _mm256_set1_ps(p);
        let mut i = 0;
        while i + 8 <= n {
            let o = out.as_mut_ptr().add(i);
            _mm256_storeu_ps(o, _mm256_fmadd_ps(pv, load8(v, i), _mm256_loadu_ps(o)));
            i += 8;
        }
        for j in i..n {
            out[j] += p * v[j].to_f32();
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx512(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.as_ptr().add(i)), load16(k, i), acc);
            i += 16;
        }
        let s = _mm512_reduce_add_ps(acc);
        s + dot_avx2(&q[i..n], &k[i..n])
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn axpy_avx512(out: &mut [f32], p: f32, v: &[f16]) {
        let n = out.len().min(v.len());
        let pv = _mm512_set1_ps(p);
        let mut i = 0;
        while i + 16 <= n {
            let o = out.as_mut_ptr().add(i);
            _mm512_storeu_ps(o, _mm512_fmadd_ps(pv, load16(v, i), _mm512_loadu_ps(o)));
            i += 16;
        }
        axpy_avx2(&mut out[i..n], p, &v[i..n]);
    }
}

/// e^x for x <= 0 (scores minus their maximum) in plain arithmetic, so that loops over it
/// vectorise: x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial
/// (relative error below 2e-7), times 2^n built from the exponent bits. Below -87 the result
/// is 0 (e^-87 is under f32's normal range).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.max(-87.0);
    let n = (xc * LOG2E).round();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// f32 dot product with independent partial sums (vectorises without fast-math).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvCache, KvDtype};

    /// A small deterministic generator for test data.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// Dense causal attention over one sequence's full K/V, in f64.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (ctx, n_q, heads, kv_heads, hd, window): (usize, usize, usize, usize, usize, Option<usize>),
    ) -> Vec<f32> {
        let mut out = vec![0f32; n_q * heads * hd];
        for i in 0..n_q {
            let pos = ctx - n_q + i;
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qv = &q[(i * heads + h) * hd..][..hd];
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let scores: Vec<f64> = (lo..=pos)
                    .map(|j| {
                        let kv = &k[(j * kv_heads + kvh) * hd..][..hd];
                        qv.iter()
                            .zip(kv)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let acc: f64 = (lo..=pos)
                        .map(|j| e[j - lo] / z * v[(j * kv_heads + kvh) * hd + d] as f64)
                        .sum();
                    out[(i * heads + h) * hd + d] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn exp_nonpositive_is_accurate() {
        for i in 0..=20000 {
            let x = -(i as f32) * 0.005;
            let (got, want) = (exp_nonpositive(x) as f64, (x as f64).exp());
            // Below -87 the result is 0: an absolute error under 2e-38.
            assert!(
                (got - want).abs() <= 3e-7 * want + 2e-38,
                "e^{x}: {got} vs {want}"
            );
        }
        assert_eq!(exp_nonpositive(-200.0), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    /// Runs the kernel on three sequences (a 5-row chunk, a decode row, a 20-row chunk on
    /// the matrix-product path; blocks scattered) over a `dtype` cache, and returns the
    /// output with the dense reference over K/V as given and over K/V rounded to f16.
    fn run_case(dtype: KvDtype, window: Option<usize>) -> (Vec<f32>, Vec<f32>, Vec<f32>, f32) {
        let (heads, kv_heads, hd, bs) = (4, 2, 8, 4);
        let seqs = [
            (13usize, 5usize, vec![7u32, 2, 9, 0]),
            (7, 1, vec![5, 1]),
            (30, 20, vec![3, 8, 4, 6, 10, 11, 12, 13]),
        ];
        let mut cache = KvCache::with_dtype(1, 14, bs, kv_heads * hd, dtype);
        let (mut q_all, mut want, mut want16, mut qsl, mut lens, mut tables) =
            (vec![], vec![], vec![], vec![0u32], vec![], vec![]);
        let mut bound = 0f32;
        for (s, (ctx, n_q, table)) in seqs.iter().enumerate() {
            let k = values(ctx * kv_heads * hd, 10 + s as u64);
            let v = values(ctx * kv_heads * hd, 20 + s as u64);
            let q = values(n_q * heads * hd, 30 + s as u64);
            let slots: Vec<u32> = (0..*ctx)
                .map(|j| table[j / bs] * bs as u32 + (j % bs) as u32)
                .collect();
            super::super::ops::write_kv(&k, &v, &slots, &mut cache.layers[0]);
            let r =
                |x: &[f32]| -> Vec<f32> { x.iter().map(|&a| f16::from_f32(a).to_f32()).collect() };
            let case = (*ctx, *n_q, heads, kv_heads, hd, window);
            want.extend(reference(&q, &k, &v, case));
            want16.extend(reference(&q, &r(&k), &r(&v), case));
            bound = bound.max(f16_bound(&q, &k, &v, heads, kv_heads, hd));
            q_all.extend(q);
            qsl.push(qsl.last().unwrap() + *n_q as u32);
            lens.push(*ctx as u32);
            let mut t = table.clone();
            t.resize(8, 0);
            tables.extend(t);
        }
        let meta = AttnMeta {
            query_start_loc: &qsl,
            seq_lens: &lens,
            block_tables: &tables,
            max_blocks_per_seq: 8,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            sliding_window: window,
        };
        let mut out = vec![0f32; want.len()];
        paged_attention(&q_all, &cache.layers[0], &meta, &mut out);
        (out, want, want16, bound)
    }

    /// Bound on |attention over f16-rounded K/V - attention over K/V| for these inputs.
    /// Rounding to f16 changes each value by a factor (1 + d), |d| <= 2^-11 (values under
    /// 2^-14, subnormal in f16, move by at most 2^-25: inside the callers' 1e-5 slack).
    /// A score q·k * scale then moves by at most
    /// B = 2^-11 * scale * max_j sum_i |q_i k_ji|; each softmax weight p_j by a factor in
    /// [e^-2B, e^2B], so sum_j |dp_j| <= e^2B - 1; the output sum_j p_j v_j moves by at most
    /// max|v| * (e^2B - 1) from the weights and 2^-11 * max|v| from the values.
    fn f16_bound(q: &[f32], k: &[f32], v: &[f32], heads: usize, kv_heads: usize, hd: usize) -> f32 {
        let u = 2f32.powi(-11);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut b = 0f32;
        for qh in q.chunks_exact(hd).enumerate() {
            let kvh = (qh.0 % heads) / (heads / kv_heads);
            for kr in k.chunks_exact(hd).skip(kvh).step_by(kv_heads) {
                let s: f32 = qh.1.iter().zip(kr).map(|(a, b)| (a * b).abs()).sum();
                b = b.max(u * scale * s);
            }
        }
        let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        vmax * ((2.0 * b).exp() - 1.0 + u) * (1.0 + u)
    }

    #[test]
    fn paged_attention_matches_dense_reference() {
        for window in [None, Some(4)] {
            let (out, want, _, _) = run_case(KvDtype::F32, window);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-5,
                    "window {window:?} value {i}: {a} vs {b}"
                );
            }
        }
    }

    /// An f16 cache computes attention over the f16-rounded K/V (to f32 accuracy), which
    /// stays within the derived rounding bound of attention over the f32 K/V.
    #[test]
    fn f16_cache_attention_is_within_rounding_bound() {
        for window in [None, Some(4)] {
            let (out, want, want16, bound) = run_case(KvDtype::F16, window);
            let mut moved = 0f32;
            for (i, ((a, b), c)) in out.iter().zip(&want).zip(&want16).enumerate() {
                assert!(
                    (a - c).abs() < 1e-5,
                    "window {window:?} value {i}: {a} vs {c} (rounded K/V)"
                );
                assert!(
                    (a - b).abs() <= bound + 1e-5,
                    "window {window:?} value {i}: {a} vs {b}, bound {bound}"
                );
                moved = moved.max((a - b).abs());
            }
            // The rounding is visible, so the comparison above is not vacuous.
            assert!(moved > 0.0 && bound < 1e-2, "moved {moved}, bound {bound}");
        }
    }

    /// Every f16 row kernel this CPU runs matches plain arithmetic, tails included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_row_kernels_match_plain_arithmetic() {
        use super::super::qdot::{available, Isa};
        for n in [1usize, 7, 8, 15, 16, 23, 64, 67] {
            let q = values(n, 1);
            let x: Vec<f16> = values(n, 2).iter().map(|&a| f16::from_f32(a)).collect();
            let want_dot: f64 = q.iter().zip(&x).map(|(a, b)| *a as f64 * b.to_f64()).sum();
            let base = values(n, 3);
            let want_axpy: Vec<f64> = base
                .iter()
                .zip(&x)
                .map(|(o, b)| *o as f64 + 0.3 * b.to_f64())
                .collect();
            let mut checks: Vec<(&str, f32, Vec<f32>)> = vec![];
            let mut run = |name,
                           dot: unsafe fn(&[f32], &[f16]) -> f32,
                           axpy: unsafe fn(&mut [f32], f32, &[f16])| {
                let mut o = base.clone();
                // SAFETY: called only for kernels whose features were found.
                let d = unsafe { dot(&q, &x) };
                unsafe { axpy(&mut o, 0.3, &x) };
                checks.push((name, d, o));
            };
            // SAFETY (for the calls below): as above.
            run(
                "portable",
                |q, k| unsafe { F16Rows::dot(q, k) },
                |o, p, v| unsafe { F16Rows::axpy(o, p, v) },
            );
            if available(Isa::Avx2) {
                run("avx2", f16_x86::dot_avx2, f16_x86::axpy_avx2);
            }
            if available(Isa::Avx512) {
                run("avx512", f16_x86::dot_avx512, f16_x86::axpy_avx512);
            }
            for (name, d, o) in checks {
                assert!(
                    (d as f64 - want_dot).abs() < 1e-5,
                    "{name} n={n}: dot {d} vs {want_dot}"
                );
                for (a, b) in o.iter().zip(&want_axpy) {
                    assert!(
                        (*a as f64 - b).abs() < 1e-6,
                        "{name} n={n}: axpy {a} vs {b}"
                    );
                }
            }
        }
    }
}
