//! Dot products of stored weight rows (dense or GGML blocks) against f32 activations.
//!
//! `dot(dtype, row, x) = sum_i dequant(row)[i] * x[i]`, computed in f32 on the exactly
//! dequantized weights (no activation quantization): this is the path the fidelity tests
//! hold to transformers. The kernel is picked once per process from the CPU's features
//! (AVX-512 > AVX2 + FMA + F16C > scalar); `LLMRT_ISA=scalar|avx2|avx512` caps the choice.
//! Every SIMD kernel has a scalar twin in `qdot_scalar` and is tested against it.

use super::qdot_scalar;
use crate::tensor::DType;
use std::sync::OnceLock;

/// Instruction-set level of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

type DotFn = fn(DType, &[u8], &[f32]) -> f32;
type DotRowsFn = fn(DType, &[u8], usize, &[f32], &mut [f32]);

struct Kernels {
    isa: Isa,
    dot: DotFn,
    dot_rows: DotRowsFn,
}

/// Whether this CPU can run kernels of level `isa`.
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
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

fn kernels_for(isa: Isa) -> Kernels {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Kernels {
            isa,
            // SAFETY (both): only selected after `available(Isa::Avx512)`; sizes are
            // checked by the public entry points before the call.
            dot: |t, r, x| unsafe { super::qdot_avx512::dot(t, r, x) },
            dot_rows: |t, w, n, x, o| unsafe { super::qdot_avx512::dot_rows(t, w, n, x, o) },
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Kernels {
            isa,
            // SAFETY (both): only selected after `available(Isa::Avx2)`; sizes checked.
            dot: |t, r, x| unsafe { super::qdot_avx2::dot(t, r, x) },
            dot_rows: |t, w, n, x, o| unsafe { super::qdot_avx2::dot_rows(t, w, n, x, o) },
        },
        _ => Kernels {
            isa: Isa::Scalar,
            dot: qdot_scalar::dot,
            dot_rows: qdot_scalar::dot_rows,
        },
    }
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| kernels_for(best_isa(available)))
}

/// The best kernel level that `available` allows, capped by `LLMRT_ISA`
/// (`scalar`, `avx2`; anything else: no cap).
pub fn best_isa(available: impl Fn(Isa) -> bool) -> Isa {
    let cap = match std::env::var("LLMRT_ISA").ok().as_deref() {
        Some("scalar") => Isa::Scalar,
        Some("avx2") => Isa::Avx2,
        _ => Isa::Avx512,
    };
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .find(|&i| i <= cap && available(i))
        .unwrap_or(Isa::Scalar)
}

/// The kernel level this process uses.
pub fn isa() -> Isa {
    kernels().isa
}

#[inline]
fn check(dtype: DType, row: &[u8], x: &[f32]) {
    assert!(
        dtype.bytes_for(x.len()) == Some(row.len()),
        "qdot: a {dtype} row of {} bytes does not hold {} values",
        row.len(),
        x.len()
    );
}

/// `sum_i dequant(row)[i] * x[i]` in f32. `row` holds exactly `x.len()` values of `dtype`
/// (whole blocks); panics otherwise.
#[inline]
pub fn dot(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    check(dtype, row, x);
    (kernels().dot)(dtype, row, x)
}

/// `out[r] = dot(dtype, row r of w_rows, x)` for `out.len()` consecutive rows of
/// `row_len` values each (`x.len() == row_len`, `w_rows` holds exactly those rows).
pub fn dot_rows(dtype: DType, w_rows: &[u8], row_len: usize, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), row_len, "qdot::dot_rows: x has the wrong length");
    let row_bytes = dtype
        .bytes_for(row_len)
        .expect("qdot::dot_rows: row length is not a whole number of blocks");
    assert_eq!(
        Some(w_rows.len()),
        row_bytes.checked_mul(out.len()),
        "qdot::dot_rows: w_rows does not hold out.len() rows"
    );
    if row_bytes == 0 {
        out.fill(0.0);
        return;
    }
    (kernels().dot_rows)(dtype, w_rows, row_bytes, x, out)
}

/// `dot` with a given kernel level, or None when this CPU lacks it (tests, benchmarks).
pub fn dot_with(isa: Isa, dtype: DType, row: &[u8], x: &[f32]) -> Option<f32> {
    check(dtype, row, x);
    available(isa).then(|| (kernels_for(isa).dot)(dtype, row, x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const ALL: [DType; 9] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
    ];

    /// A random row of `n` values of `dtype` with finite, moderate scales.
    fn random_row(rng: &mut ChaCha8Rng, dtype: DType, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; dtype.bytes_for(n).unwrap()];
        rng.fill(&mut b[..]);
        let half = |rng: &mut ChaCha8Rng| {
            let v: f32 = rng.random_range(-1.0..1.0) * 0.1;
            f16::from_f32(v).to_le_bytes()
        };
        match dtype {
            DType::F32 => {
                for c in b.chunks_exact_mut(4) {
                    c.copy_from_slice(&rng.random_range(-2.0f32..2.0).to_le_bytes());
                }
            }
            DType::F16 => {
                for c in b.chunks_exact_mut(2) {
                    c.copy_from_slice(&f16::from_f32(rng.random_range(-2.0..2.0)).to_le_bytes());
                }
            }
            DType::BF16 => {
                for c in b.chunks_exact_mut(2) {
                    c.copy_from_slice(&bf16::from_f32(rng.random_range(-2.0..2.0)).to_le_bytes());
                }
            }
            _ => {
                let offs: &[usize] = match dtype {
                    DType::Q4_0 | DType::Q8_0 => &[0],
                    DType::Q4_1 | DType::Q4K | DType::Q5K => &[0, 2],
                    DType::Q6K => &[208],
                    _ => unreachable!(),
                };
                for blk in b.chunks_exact_mut(dtype.block_bytes()) {
                    for &o in offs {
                        blk[o..o + 2].copy_from_slice(&half(rng));
                    }
                }
            }
        }
        b
    }

    /// Sum of |w_i x_i| in f64 (the scale for relative tolerances).
    fn abs_dot(dtype: DType, row: &[u8], x: &[f32]) -> f64 {
        let mut w = vec![0f32; x.len()];
        crate::tensor::quant::dequantize(dtype, row, &mut w);
        w.iter()
            .zip(x)
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum()
    }

    fn exact_dot(dtype: DType, row: &[u8], x: &[f32]) -> f64 {
        let mut w = vec![0f32; x.len()];
        crate::tensor::quant::dequantize(dtype, row, &mut w);
        w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    fn lengths(dtype: DType) -> Vec<usize> {
        let bl = dtype.block_len();
        if bl == 1 {
            vec![1, 7, 8, 15, 16, 17, 31, 63, 64, 65, 100, 576, 1000, 1536]
        } else {
            [1, 2, 3, 5, 8, 18, 48].iter().map(|k| k * bl).collect()
        }
    }

    #[test]
    fn qdot_scalar_matches_f64_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for dtype in ALL {
            for n in lengths(dtype) {
                let row = random_row(&mut rng, dtype, n);
                let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let got = qdot_scalar::dot(dtype, &row, &x) as f64;
                let want = exact_dot(dtype, &row, &x);
                let tol = 1e-5 * abs_dot(dtype, &row, &x) + 1e-30;
                assert!((got - want).abs() <= tol, "{dtype} n={n}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn qdot_simd_matches_scalar() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut tested = 0;
        for isa in [Isa::Avx2, Isa::Avx512] {
            if !available(isa) {
                eprintln!("qdot: {isa:?} not available on this CPU, skipped");
                continue;
            }
            for dtype in ALL {
                for n in lengths(dtype) {
                    for _ in 0..3 {
                        let row = random_row(&mut rng, dtype, n);
                        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                        let want = qdot_scalar::dot(dtype, &row, &x) as f64;
                        let got = dot_with(isa, dtype, &row, &x).unwrap() as f64;
                        let tol = 2e-6 * abs_dot(dtype, &row, &x) + 1e-30;
                        assert!(
                            (got - want).abs() <= tol,
                            "{isa:?} {dtype} n={n}: {got} vs scalar {want} (tol {tol})"
                        );
                        tested += 1;
                    }
                }
            }
        }
        eprintln!("qdot: {tested} SIMD cases checked against scalar");
    }

    #[test]
    fn qdot_rows_matches_dot() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for dtype in ALL {
            let n = 2 * dtype.block_len().max(32);
            let rows = 5;
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(&mut rng, dtype, n))
                .collect();
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; rows];
            dot_rows(dtype, &w, n, &x, &mut out);
            let rb = dtype.bytes_for(n).unwrap();
            for r in 0..rows {
                assert_eq!(
                    out[r],
                    dot(dtype, &w[r * rb..(r + 1) * rb], &x),
                    "{dtype} row {r}"
                );
            }
        }
    }

    #[test]
    fn qdot_extreme_nibbles() {
        // All-0x00 and all-0xFF payloads hit the ends of every quant range.
        for dtype in ALL.into_iter().filter(|d| d.is_quantized()) {
            for fill in [0x00u8, 0xFF, 0x0F, 0xF0, 0x55] {
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
                let x: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
                let want = exact_dot(dtype, &row, &x);
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                    if let Some(got) = dot_with(isa, dtype, &row, &x) {
                        let tol = 1e-6 * abs_dot(dtype, &row, &x) + 1e-30;
                        assert!(
                            (got as f64 - want).abs() <= tol,
                            "{isa:?} {dtype} fill {fill:#x}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Throughput of each kernel level on a cache-resident and a memory-sized matrix:
    /// `cargo test --lib qdot_bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn qdot_bench() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for dtype in ALL {
            for (rows, cols) in [(1536usize, 768usize), (16384, 2048)] {
                let w: Vec<u8> = (0..rows)
                    .flat_map(|_| random_row(&mut rng, dtype, cols))
                    .collect();
                let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let rb = dtype.bytes_for(cols).unwrap();
                let mut line = format!("{dtype:5} {rows}x{cols}:");
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                    if !available(isa) {
                        continue;
                    }
                    let k = kernels_for(isa);
                    let mut out = vec![0f32; rows];
                    let reps = (64 << 20) / w.len() + 1;
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        (k.dot_rows)(dtype, &w, rb, &x, &mut out);
                    }
                    let s = t.elapsed().as_secs_f64() / reps as f64;
                    line += &format!(
                        "  {isa:?} {:.1} GB/s {:.2} Gval/s",
                        w.len() as f64 / s / 1e9,
                        (rows * cols) as f64 / s / 1e9
                    );
                }
                eprintln!("{line}");
            }
        }
    }
}
