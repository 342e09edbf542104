//! Block formats against an independent reference: vectors written by
//! scripts/gen_quant_vectors.py from gguf-py's `gguf.quants.dequantize`.

use llmrt::backend::cpu::qdot::{self, Isa};
use llmrt::tensor::quant::dequantize;
use llmrt::tensor::DType;
use std::path::PathBuf;

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn dtype(name: &str) -> DType {
    match name {
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "Q4_0" => DType::Q4_0,
        "Q4_1" => DType::Q4_1,
        "Q8_0" => DType::Q8_0,
        "Q4_K" => DType::Q4K,
        "Q5_K" => DType::Q5K,
        "Q6_K" => DType::Q6K,
        other => panic!("unknown type {other} in vectors.json"),
    }
}

struct Case {
    dtype: DType,
    blocks: Vec<u8>,
    expected: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant/vectors.json");
    let text = std::fs::read_to_string(&path).expect("tests/fixtures/quant/vectors.json");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let expected: Vec<f32> = hex(c["expected_f32_hex"].as_str().unwrap())
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(expected.len() as u64, c["n_values"].as_u64().unwrap());
            Case {
                dtype: dtype(c["type"].as_str().unwrap()),
                blocks: hex(c["blocks_hex"].as_str().unwrap()),
                expected,
            }
        })
        .collect()
}

#[test]
fn covers_every_block_format() {
    let types: Vec<DType> = cases().iter().map(|c| c.dtype).collect();
    for t in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::F16,
        DType::BF16,
    ] {
        assert!(types.contains(&t), "no vectors for {t}");
    }
}

#[test]
fn dequantize_is_bitwise_equal_to_gguf_py() {
    for c in cases() {
        let mut out = vec![0f32; c.expected.len()];
        dequantize(c.dtype, &c.blocks, &mut out);
        for (i, (a, b)) in out.iter().zip(&c.expected).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{} value {i}: {a} vs {b}",
                c.dtype
            );
        }
        // Block by block gives the same values.
        let bb = c.dtype.block_bytes();
        let bl = c.dtype.block_len();
        for (k, blk) in c.blocks.chunks_exact(bb).enumerate() {
            let mut one = vec![0f32; bl];
            dequantize(c.dtype, blk, &mut one);
            assert_eq!(one[..], out[k * bl..(k + 1) * bl], "{} block {k}", c.dtype);
        }
    }
}

fn x_for(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32) * 0.37).sin() + 0.25 * ((i % 7) as f32 - 3.0))
        .collect()
}

#[test]
fn dot_matches_gguf_py_values() {
    for c in cases() {
        let x = x_for(c.expected.len());
        let want: f64 = c
            .expected
            .iter()
            .zip(&x)
            .map(|(&w, &x)| w as f64 * x as f64)
            .sum();
        let scale: f64 = c
            .expected
            .iter()
            .zip(&x)
            .map(|(&w, &x)| (w as f64 * x as f64).abs())
            .sum();
        let tol = 1e-5 * scale + 1e-30;
        let got = qdot::dot(c.dtype, &c.blocks, &x) as f64;
        assert!(
            (got - want).abs() <= tol,
            "{} dot: {got} vs {want}",
            c.dtype
        );
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if let Some(got) = qdot::dot_with(isa, c.dtype, &c.blocks, &x) {
                let got = got as f64;
                assert!(
                    (got - want).abs() <= tol,
                    "{} dot with {isa:?}: {got} vs {want}",
                    c.dtype
                );
            }
        }
        // Rows of one block each against the matching slice of x.
        let bl = c.dtype.block_len().max(32);
        if c.expected.len() % bl == 0 {
            let rows = c.expected.len() / bl;
            let xs = &x[..bl];
            let mut out = vec![0f32; rows];
            qdot::dot_rows(c.dtype, &c.blocks, bl, xs, &mut out);
            for (r, o) in out.iter().enumerate() {
                let w = &c.expected[r * bl..(r + 1) * bl];
                let want: f64 = w.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                let scale: f64 = w
                    .iter()
                    .zip(xs)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                assert!(
                    (*o as f64 - want).abs() <= 1e-5 * scale + 1e-30,
                    "{} dot_rows row {r}: {o} vs {want}",
                    c.dtype
                );
            }
        }
    }
}
