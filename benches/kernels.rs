//! Kernel micro-benchmarks: every linear-layer shape of a model (SmolLM2-135M by default)
//! as decode (1 row: a matrix-vector product streaming the weights) and as prefill (512
//! rows: a matrix product), under both matmul precisions, printing GFLOP/s and weight GB/s
//! next to the machine's peaks measured in the same run: an FMA loop (f32 GFLOP/s) and a
//! STREAM-like copy (GB/s).
//!
//!   cargo bench --bench kernels [-- --model FILE] [--threads N]

use llmrt::backend::cpu::{CpuBackend, MatmulPrecision};
use llmrt::backend::Backend;
use llmrt::tensor::Weight;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` only checks that this builds.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let model = arg("--model").map_or_else(llmrt::default_model_path, Into::into);
    let threads: usize = arg("--threads").map_or(2, |t| t.parse().expect("--threads N"));
    let m = llmrt::Model::load(&model).expect("model loads");
    let fma = peak_fma_gflops(threads);
    let copy = stream_copy_gbs(threads);
    println!("model {} | {threads} threads", model.display());
    println!("peak: f32 FMA {fma:.0} GFLOP/s, copy {copy:.1} GB/s\n");
    println!(
        "{:<10} {:>6} {:>12} {:>6} {:>10} {:>9} {:>8} {:>9} {:>8}",
        "weight", "dtype", "out x in", "rows", "precision", "GFLOP/s", "%FMA", "GB/s", "%copy"
    );
    let int8 = CpuBackend::with_precision(threads, MatmulPrecision::Int8Activations);
    let exact = CpuBackend::with_precision(threads, MatmulPrecision::Exact);
    // The int8 backend reads its own copy, repacked at load as an engine would.
    let mut packed = llmrt::Model::load(&model).expect("model loads").weights;
    int8.prepare_weights(&mut packed);
    for (i, name) in SHAPES.iter().enumerate() {
        for (backend, weights) in [(&int8, &packed), (&exact, &m.weights)] {
            let Some(w) = shape(weights, i) else { continue };
            for rows in [1usize, 512] {
                let secs = time_linear(backend, w, rows);
                let flops = 2.0 * rows as f64 * w.rows() as f64 * w.cols() as f64;
                let gflops = flops / secs / 1e9;
                let bytes = w.dtype.bytes_for(w.numel()).expect("whole blocks");
                let gbs = bytes as f64 / secs / 1e9;
                println!(
                    "{:<10} {:>6} {:>12} {:>6} {:>10} {:>9.1} {:>7.0}% {:>9.1} {:>7.0}%",
                    name,
                    format!("{:?}", w.dtype),
                    format!("{}x{}", w.rows(), w.cols()),
                    rows,
                    match backend.precision() {
                        MatmulPrecision::Int8Activations => "int8",
                        MatmulPrecision::Exact => "exact",
                    },
                    gflops,
                    100.0 * gflops / fma,
                    gbs,
                    100.0 * gbs / copy,
                );
            }
        }
    }
}

const SHAPES: [&str; 6] = [
    "q_proj",
    "k_proj",
    "o_proj",
    "gate_proj",
    "down_proj",
    "lm_head",
];

/// Layer 0's weight of `SHAPES[i]` (the MLP ones only for dense MLPs).
fn shape(w: &llmrt::model::weights::ModelWeights, i: usize) -> Option<&Weight> {
    let l = &w.layers[0];
    let mlp = match &l.ffn {
        llmrt::model::weights::Ffn::Dense(d) => Some(d),
        _ => None,
    };
    match i {
        0 => Some(&l.q),
        1 => Some(&l.k),
        2 => Some(&l.o),
        3 => mlp.map(|d| &d.gate),
        4 => mlp.map(|d| &d.down),
        _ => Some(&w.lm_head),
    }
}

/// Median seconds of one `linear` call over enough repetitions to fill ~0.3 s.
fn time_linear(backend: &CpuBackend, w: &Weight, rows: usize) -> f64 {
    let x: Vec<f32> = (0..rows * w.cols())
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    let mut out = vec![0f32; rows * w.rows()];
    let mut once = || {
        let t = Instant::now();
        backend.run(|| backend.linear(&x, rows, w, None, &mut out));
        t.elapsed()
    };
    once();
    let probe = once().max(Duration::from_micros(1));
    let reps = (0.3 / probe.as_secs_f64()).clamp(3.0, 2000.0) as usize;
    let mut times: Vec<f64> = (0..reps).map(|_| once().as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// f32 multiply-adds per second of `threads` threads running independent FMA chains.
fn peak_fma_gflops(threads: usize) -> f64 {
    const ITERS: usize = 20_000_000;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| std::hint::black_box(fma_chains(ITERS)));
        }
    });
    // 16 chains of 16 lanes, 2 flops per lane.
    (threads * ITERS * 16 * 16 * 2) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// 16 independent accumulators of 16 f32 lanes, so the compiler keeps them in vector
/// registers and the FMA units, not the dependency chains, set the pace.
fn fma_chains(iters: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { fma_chains_avx512(iters) };
        }
    }
    let mut acc = [[1.0f32; 16]; 16];
    let (a, b) = (
        std::hint::black_box(0.999f32),
        std::hint::black_box(0.0001f32),
    );
    for _ in 0..iters {
        for lane in acc.iter_mut() {
            for v in lane.iter_mut() {
                *v = v.mul_add(a, b);
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(std::hint::black_box(0.999));
    let b = _mm512_set1_ps(std::hint::black_box(0.0001));
    let mut acc = [_mm512_set1_ps(1.0); 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for v in acc {
        sum = _mm512_add_ps(sum, v);
    }
    _mm512_reduce_add_ps(sum)
}

/// Bytes read plus written per second copying 256 MiB per thread, best of 5.
fn stream_copy_gbs(threads: usize) -> f64 {
    const N: usize = 32 << 20; // f64 values: 256 MiB
    let mut bufs: Vec<(Vec<f64>, Vec<f64>)> =
        (0..threads).map(|_| (vec![1.0; N], vec![0.0; N])).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (src, dst) in bufs.iter_mut() {
                s.spawn(move || dst.copy_from_slice(src));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    (threads * N * 8 * 2) as f64 / best / 1e9
}
