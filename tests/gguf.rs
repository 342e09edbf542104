//! GGUF loading: the real SmolLM2 file (config, tensors, tokenizer, chat template), tiny
//! synthetic files written here (q/k un-permutation, MoE expert split), and bad input:
//! hand-corrupted headers, every truncation of a valid file, and a bounded fuzz run.

use llmrt::error::Error;
use llmrt::model::loader::gguf::{self, GgufFile};
use llmrt::model::{LoadedModel, Model};
use llmrt::tensor::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// An allocator that records the largest single allocation made by a thread that asks it to.

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
}
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.try_with(|t| t.get()).unwrap_or(false) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACK.try_with(|t| t.get()).unwrap_or(false) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// ---------------------------------------------------------------------------------------
// A tiny GGUF writer.

const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;

const GGML_F32: u32 = 0;
const GGML_Q4_1: u32 = 3;

#[derive(Clone, Debug)]
enum Val {
    U8(u8),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type and elements (all of that type).
    Arr(u32, Vec<Val>),
}

impl Val {
    fn type_id(&self) -> u32 {
        match self {
            Val::U8(_) => T_U8,
            Val::U32(_) => T_U32,
            Val::I32(_) => T_I32,
            Val::U64(_) => T_U64,
            Val::F32(_) => T_F32,
            Val::Bool(_) => T_BOOL,
            Val::Str(_) => T_STRING,
            Val::Arr(..) => T_ARRAY,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::U8(v) => out.push(*v),
            Val::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Val::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Val::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Val::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Val::Bool(v) => out.push(*v as u8),
            Val::Str(s) => put_str(out, s),
            Val::Arr(t, items) => {
                out.extend_from_slice(&t.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
        }
    }
}

fn s(v: &str) -> Val {
    Val::Str(v.to_string())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[derive(Clone)]
struct Tensor {
    name: String,
    /// GGUF order: row length first.
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

#[derive(Clone)]
struct Gguf {
    version: u32,
    kv: Vec<(String, Val)>,
    tensors: Vec<Tensor>,
    alignment: usize,
}

impl Gguf {
    fn set(&mut self, key: &str, v: Val) {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.to_string(), v));
    }

    fn tensor_mut(&mut self, name: &str) -> &mut Tensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        let a = self.alignment;
        let mut offset = 0usize;
        let mut offsets = vec![];
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len()).div_ceil(a) * a;
        }
        let data_start = out.len().div_ceil(a) * a;
        out.resize(data_start, 0);
        for (t, o) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + o, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Random Q4_1 rows: `rows` rows of `cols` values (cols a multiple of 32).
fn q4_1_rows(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<Vec<u8>> {
    (0..rows)
        .map(|_| {
            let mut r = Vec::new();
            for _ in 0..cols / 32 {
                let d = half::f16::from_f32(rng.random_range(0.001..0.05));
                let m = half::f16::from_f32(rng.random_range(-0.2..0.0));
                r.extend_from_slice(&d.to_le_bytes());
                r.extend_from_slice(&m.to_le_bytes());
                for _ in 0..16 {
                    r.push(rng.random());
                }
            }
            r
        })
        .collect()
}

/// llama.cpp's converter permutation of q/k rows: GGUF row h*hd + 2i + j is HF row
/// h*hd + j*hd/2 + i.
fn llama_cpp_permute<T: Clone>(hf_rows: &[T], n_head: usize) -> Vec<T> {
    let hd = hf_rows.len() / n_head;
    let mut out = hf_rows.to_vec();
    for h in 0..n_head {
        for i in 0..hd / 2 {
            for j in 0..2 {
                out[h * hd + 2 * i + j] = hf_rows[h * hd + j * hd / 2 + i].clone();
            }
        }
    }
    out
}

const HIDDEN: usize = 32;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FF: usize = 32;

fn tokenizer_kv() -> Vec<(String, Val)> {
    let tokens = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "a",
        "b",
        "ab",
        "Ġ",
        "Ġa",
        "Ġab",
    ];
    let types = [3, 3, 3, 1, 1, 1, 1, 1, 1];
    vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            Val::Arr(T_STRING, tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Val::Arr(T_I32, types.iter().map(|&t| Val::I32(t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Val::Arr(T_STRING, vec![s("Ġ a"), s("a b"), s("Ġa b")]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Val::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Val::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Val::Bool(false)),
        ("tokenizer.chat_template".into(), s("{{ messages }}")),
    ]
}

/// A one-layer llama model (hidden 32, 2 heads, 1 KV head) with Q4_1 q/k projections
/// (stored permuted, as llama.cpp writes them) and F32 everything else. Returns the file
/// and the HF-order rows of q and k.
fn tiny_llama(seed: u64) -> (Gguf, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vocab = 9usize;
    let mut kv: Vec<(String, Val)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.alignment".into(), Val::U32(32)),
        ("llama.block_count".into(), Val::U32(1)),
        ("llama.context_length".into(), Val::U32(256)),
        ("llama.embedding_length".into(), Val::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), Val::U32(FF as u32)),
        ("llama.attention.head_count".into(), Val::U32(HEADS as u32)),
        (
            "llama.attention.head_count_kv".into(),
            Val::U32(KV_HEADS as u32),
        ),
        ("llama.rope.freq_base".into(), Val::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Val::F32(1e-5),
        ),
        (
            "llama.rope.dimension_count".into(),
            Val::U32(HEAD_DIM as u32),
        ),
        (
            "general.nested".into(),
            Val::Arr(T_ARRAY, vec![Val::Arr(T_U8, vec![Val::U8(1), Val::U8(2)])]),
        ),
        ("general.big".into(), Val::U64(1 << 40)),
    ];
    kv.extend(tokenizer_kv());
    let mut f32_tensor = |name: &str, hf_shape: &[usize]| {
        let n: usize = hf_shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5..0.5)).collect();
        Tensor {
            name: name.into(),
            dims: hf_shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: GGML_F32,
            data: f32_bytes(&v),
        }
    };
    let mut tensors = vec![
        f32_tensor("token_embd.weight", &[vocab, HIDDEN]),
        f32_tensor("output_norm.weight", &[HIDDEN]),
        f32_tensor("blk.0.attn_norm.weight", &[HIDDEN]),
        f32_tensor("blk.0.ffn_norm.weight", &[HIDDEN]),
        f32_tensor("blk.0.attn_v.weight", &[KV_HEADS * HEAD_DIM, HIDDEN]),
        f32_tensor("blk.0.attn_output.weight", &[HIDDEN, HIDDEN]),
        f32_tensor("blk.0.ffn_gate.weight", &[FF, HIDDEN]),
        f32_tensor("blk.0.ffn_up.weight", &[FF, HIDDEN]),
        f32_tensor("blk.0.ffn_down.weight", &[HIDDEN, FF]),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37);
    let q_hf = q4_1_rows(&mut rng, HEADS * HEAD_DIM, HIDDEN);
    let k_hf = q4_1_rows(&mut rng, KV_HEADS * HEAD_DIM, HIDDEN);
    for (name, rows, n_head) in [
        ("blk.0.attn_q.weight", &q_hf, HEADS),
        ("blk.0.attn_k.weight", &k_hf, KV_HEADS),
    ] {
        tensors.push(Tensor {
            name: name.into(),
            dims: vec![HIDDEN as u64, rows.len() as u64],
            ggml_type: GGML_Q4_1,
            data: llama_cpp_permute(rows, n_head).concat(),
        });
    }
    let g = Gguf {
        version: 3,
        kv,
        tensors,
        alignment: 32,
    };
    (g, q_hf, k_hf)
}

fn label() -> &'static Path {
    Path::new("synthetic.gguf")
}

fn load(bytes: &[u8]) -> llmrt::error::Result<LoadedModel> {
    gguf::load_from_bytes(label(), bytes)
}

/// Loads `bytes`, expects an error, returns its message.
fn err_of(bytes: &[u8]) -> String {
    match load(bytes) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_err_mentions(bytes: &[u8], needles: &[&str]) {
    let msg = err_of(bytes);
    for n in needles {
        assert!(msg.contains(n), "error `{msg}` does not mention `{n}`");
    }
}

fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "llmrt-gguf-test-{}-{}-{tag}.gguf",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

// ---------------------------------------------------------------------------------------
// Synthetic files

#[test]
fn synthetic_llama_loads_and_unpermutes_q_k() {
    let (g, q_hf, k_hf) = tiny_llama(1);
    let m = load(&g.bytes()).expect("valid synthetic file loads");
    let c = &m.config;
    assert_eq!(c.architecture, "LlamaForCausalLM");
    assert_eq!(
        (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (HIDDEN, HEADS, KV_HEADS, HEAD_DIM)
    );
    assert_eq!(
        (c.vocab_size, c.intermediate_size, c.num_hidden_layers),
        (9, FF, 1)
    );
    assert!(c.tie_word_embeddings);
    assert!(!c.attention_bias);
    assert_eq!(c.max_position_embeddings, 256);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(m.generation_defaults.eos_token_ids, vec![2]);
    assert_eq!(m.chat_template.as_deref(), Some("{{ messages }}"));

    let q = m
        .tensors
        .get("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let k = m
        .tensors
        .get("model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(q.dtype, DType::Q4_1);
    assert_eq!(q.shape, vec![HEADS * HEAD_DIM, HIDDEN]);
    assert_eq!(k.shape, vec![KV_HEADS * HEAD_DIM, HIDDEN]);
    assert_eq!(q.bytes(), &q_hf.concat()[..], "q rows back in HF order");
    assert_eq!(k.bytes(), &k_hf.concat()[..], "k rows back in HF order");
    // Other tensors are untouched views.
    let v = m
        .tensors
        .get("model.layers.0.self_attn.v_proj.weight")
        .unwrap();
    assert_eq!(v.shape, vec![KV_HEADS * HEAD_DIM, HIDDEN]);
    let raw = &g
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_v.weight")
        .unwrap()
        .data;
    assert_eq!(v.bytes(), &raw[..]);

    // Tokenizer from metadata: merges, specials matched in text, no BOS.
    let t = &m.tokenizer;
    assert_eq!(t.encode("ab ab", false).unwrap(), vec![5, 8]);
    assert_eq!(t.encode("a<|im_end|>b", true).unwrap(), vec![3, 2, 4]);
    assert_eq!(t.decode(&[3, 2, 4], false).unwrap(), "a<|im_end|>b");
    assert_eq!(t.decode(&[3, 2, 4], true).unwrap(), "ab");
    assert_eq!(t.bos_token(), Some("<|im_start|>"));
    assert_eq!(t.eos_token(), Some("<|im_end|>"));
}

#[test]
fn synthetic_llama_runs_through_model_load() {
    // The renamed tensors satisfy the decoder's weight gathering (names and shapes).
    let (g, _, _) = tiny_llama(2);
    let path = temp_path("model");
    std::fs::write(&path, g.bytes()).unwrap();
    let r = Model::load(&path);
    let _ = std::fs::remove_file(&path);
    let m = r.expect("Model::load of the synthetic GGUF");
    assert_eq!(m.weights.layers.len(), 1);
}

#[test]
fn synthetic_version_2_and_bos() {
    let (mut g, _, _) = tiny_llama(3);
    g.version = 2;
    g.set("tokenizer.ggml.add_bos_token", Val::Bool(true));
    let m = load(&g.bytes()).unwrap();
    assert_eq!(m.tokenizer.encode("ab", true).unwrap(), vec![1, 5]);
    assert_eq!(m.tokenizer.encode("ab", false).unwrap(), vec![5]);
}

#[test]
fn synthetic_mixtral_splits_merged_experts() {
    let (mut g, _, _) = tiny_llama(4);
    let experts = 3usize;
    g.set("llama.expert_count", Val::U32(experts as u32));
    g.set("llama.expert_used_count", Val::U32(2));
    g.tensors
        .retain(|t| !t.name.starts_with("blk.0.ffn_") || t.name == "blk.0.ffn_norm.weight");
    let mut add = |name: &str, hf: &[usize], fill: &dyn Fn(usize) -> f32| {
        let n: usize = hf.iter().product();
        let v: Vec<f32> = (0..n).map(fill).collect();
        g.tensors.push(Tensor {
            name: name.into(),
            dims: hf.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: GGML_F32,
            data: f32_bytes(&v),
        });
    };
    let per = FF * HIDDEN;
    add("blk.0.ffn_gate_inp.weight", &[experts, HIDDEN], &|i| {
        i as f32
    });
    add("blk.0.ffn_gate_exps.weight", &[experts, FF, HIDDEN], &|i| {
        (i / per) as f32
    });
    add("blk.0.ffn_up_exps.weight", &[experts, FF, HIDDEN], &|i| {
        10.0 + (i / per) as f32
    });
    add("blk.0.ffn_down_exps.weight", &[experts, HIDDEN, FF], &|i| {
        20.0 + (i / per) as f32
    });
    let m = load(&g.bytes()).unwrap();
    assert_eq!(m.config.architecture, "MixtralForCausalLM");
    let moe = m.config.moe.as_ref().unwrap();
    assert_eq!((moe.num_experts, moe.num_experts_per_tok), (3, 2));
    for e in 0..experts {
        let p = format!("model.layers.0.block_sparse_moe.experts.{e}");
        let w1 = m.tensors.get(&format!("{p}.w1.weight")).unwrap();
        let w3 = m.tensors.get(&format!("{p}.w3.weight")).unwrap();
        let w2 = m.tensors.get(&format!("{p}.w2.weight")).unwrap();
        assert_eq!(w1.shape, vec![FF, HIDDEN]);
        assert_eq!(w2.shape, vec![HIDDEN, FF]);
        assert!(w1.to_f32_vec().iter().all(|&x| x == e as f32));
        assert!(w3.to_f32_vec().iter().all(|&x| x == 10.0 + e as f32));
        assert!(w2.to_f32_vec().iter().all(|&x| x == 20.0 + e as f32));
    }
    assert!(m
        .tensors
        .get("model.layers.0.block_sparse_moe.gate.weight")
        .is_some());
    // And the decoder's weight gathering accepts it.
    let path = temp_path("mixtral");
    std::fs::write(&path, g.bytes()).unwrap();
    let r = Model::load(&path);
    let _ = std::fs::remove_file(&path);
    r.expect("Model::load of the synthetic Mixtral GGUF");
}

#[test]
fn synthetic_qwen2_is_not_unpermuted() {
    let (mut g, _, _) = tiny_llama(5);
    let kv: Vec<(String, Val)> =
        g.kv.iter()
            .map(|(k, v)| (k.replacen("llama.", "qwen2.", 1), v.clone()))
            .collect();
    g.kv = kv;
    g.set("general.architecture", s("qwen2"));
    g.set("tokenizer.ggml.pre", s("qwen2"));
    let stored = g
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap()
        .data
        .clone();
    let m = load(&g.bytes()).unwrap();
    assert_eq!(m.config.architecture, "Qwen2ForCausalLM");
    let q = m
        .tensors
        .get("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q.bytes(), &stored[..]);
}

#[test]
fn synthetic_llama3_rope_freqs_become_rope_scaling() {
    use llmrt::config::RopeScaling;
    let (mut g, _, _) = tiny_llama(12);
    let want = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 8.0,
        original_max_position_embeddings: 1024.0,
    };
    let factors: Vec<f32> = gguf::llama3_factors(&want, HEAD_DIM, 10000.0)
        .iter()
        .map(|&f| f as f32)
        .collect();
    g.tensors.push(Tensor {
        name: "rope_freqs.weight".into(),
        dims: vec![factors.len() as u64],
        ggml_type: GGML_F32,
        data: f32_bytes(&factors),
    });
    let m = load(&g.bytes()).unwrap();
    assert_eq!(m.config.rope_scaling, Some(want));
    // Factors that are no Llama 3 schedule are refused, not ignored.
    let mut bad = factors.clone();
    bad[1] = 3.0;
    bad[2] = 1.5;
    g.tensors.last_mut().unwrap().data = f32_bytes(&bad);
    assert!(matches!(load(&g.bytes()), Err(Error::Unsupported(m)) if m.contains("rope_freqs")));
}

// ---------------------------------------------------------------------------------------
// Bad input

/// Bytes of a header with the given counts followed by `rest`.
fn header(version: u32, n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(rest);
    b.resize(b.len() + 64, 0);
    b
}

#[test]
fn bad_magic_and_versions() {
    let (g, _, _) = tiny_llama(6);
    let mut b = g.bytes();
    b[0] = b'X';
    assert_err_mentions(&b, &["magic"]);
    let mut v1 = g.clone();
    v1.version = 1;
    assert_err_mentions(&v1.bytes(), &["version 1"]);
    let mut v9 = g.clone();
    v9.version = 9;
    assert_err_mentions(&v9.bytes(), &["version 9"]);
    let mut be = g.clone();
    be.version = 3u32.swap_bytes();
    assert_err_mentions(&be.bytes(), &["big-endian"]);
    assert_err_mentions(b"GGU", &["truncated"]);
    assert_err_mentions(b"", &["truncated"]);
    let e = load(&g.bytes()[..100]).err().unwrap();
    assert!(matches!(e, Error::InvalidModel { .. }), "{e:?}");
}

#[test]
fn every_truncation_is_an_error() {
    let (g, _, _) = tiny_llama(7);
    let b = g.bytes();
    assert!(load(&b).is_ok());
    for n in 0..b.len() {
        let r = std::panic::catch_unwind(|| load(&b[..n]).is_err());
        assert_eq!(r.ok(), Some(true), "prefix of {n} of {} bytes", b.len());
    }
}

#[test]
fn absurd_lengths_and_counts() {
    // A key string claiming 2^60 bytes.
    let mut rest = (1u64 << 60).to_le_bytes().to_vec();
    rest.extend_from_slice(b"key");
    assert_err_mentions(
        &header(3, 0, 1, &rest),
        &["string length", "1152921504606846976"],
    );
    // A string value of 2^60 bytes.
    let mut rest = Vec::new();
    put_str(&mut rest, "general.name");
    rest.extend_from_slice(&T_STRING.to_le_bytes());
    rest.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert_err_mentions(&header(3, 0, 1, &rest), &["general.name", "string length"]);
    // An array of u32 with 2^62 elements.
    let mut rest = Vec::new();
    put_str(&mut rest, "general.tags");
    rest.extend_from_slice(&T_ARRAY.to_le_bytes());
    rest.extend_from_slice(&T_U32.to_le_bytes());
    rest.extend_from_slice(&(1u64 << 62).to_le_bytes());
    assert_err_mentions(&header(3, 0, 1, &rest), &["general.tags", "array count"]);
    // An array of strings whose count is u64::MAX.
    let mut rest = Vec::new();
    put_str(&mut rest, "tokenizer.ggml.tokens");
    rest.extend_from_slice(&T_ARRAY.to_le_bytes());
    rest.extend_from_slice(&T_STRING.to_le_bytes());
    rest.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_err_mentions(&header(3, 0, 1, &rest), &["array count"]);
    // Arrays nested without end.
    let mut rest = Vec::new();
    put_str(&mut rest, "general.deep");
    rest.extend_from_slice(&T_ARRAY.to_le_bytes());
    for _ in 0..40 {
        rest.extend_from_slice(&T_ARRAY.to_le_bytes());
        rest.extend_from_slice(&1u64.to_le_bytes());
    }
    assert_err_mentions(&header(3, 0, 1, &rest), &["nested"]);
    // Absurd tensor and metadata counts.
    assert_err_mentions(&header(3, u64::MAX, 0, &[]), &["tensor count"]);
    assert_err_mentions(&header(3, 0, 1 << 50, &[]), &["metadata count"]);
    // Unknown metadata value type.
    let mut rest = Vec::new();
    put_str(&mut rest, "general.x");
    rest.extend_from_slice(&77u32.to_le_bytes());
    assert_err_mentions(&header(3, 0, 1, &rest), &["general.x", "type 77"]);
}

/// A valid file with one tensor's directory entry changed by `f`.
fn with_tensor(f: impl FnOnce(&mut Tensor)) -> Vec<u8> {
    let (mut g, _, _) = tiny_llama(8);
    f(g.tensor_mut("blk.0.attn_v.weight"));
    g.bytes()
}

#[test]
fn bad_tensor_directory() {
    let b = with_tensor(|t| t.dims = vec![1; 9]);
    assert_err_mentions(&b, &["attn_v", "n_dims 9"]);
    let b = with_tensor(|t| t.dims = vec![1 << 32, 1 << 32, 1 << 32]);
    assert_err_mentions(&b, &["attn_v", "overflow"]);
    let b = with_tensor(|t| t.dims = vec![u64::MAX, 1]);
    assert_err_mentions(&b, &["attn_v", "out of range"]);
    let b = with_tensor(|t| t.ggml_type = 99);
    assert_err_mentions(&b, &["attn_v", "unknown ggml type id 99"]);
    let b = with_tensor(|t| t.ggml_type = 6);
    match load(&b) {
        Err(Error::Unsupported(m)) => assert!(m.contains("Q5_0"), "{m}"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    let b = with_tensor(|t| {
        t.ggml_type = GGML_Q4_1;
        t.dims = vec![20, 16];
    });
    assert_err_mentions(&b, &["attn_v", "block size"]);
    // Bigger than its data: runs past the end of the file (it is the 5th tensor, but
    // claims a million rows).
    let b = with_tensor(|t| t.dims = vec![32, 1 << 20]);
    assert_err_mentions(&b, &["attn_v", "past the end"]);
    let b = with_tensor(|t| t.name = "blk.0.attn_k.weight".into());
    assert_err_mentions(&b, &["duplicate tensor name", "attn_k"]);
}

#[test]
fn tensor_offset_past_eof_and_misaligned() {
    let (g, _, _) = tiny_llama(9);
    let mut b = g.bytes();
    // Find the directory entry of the last tensor and rewrite its offset.
    let name = g.tensors.last().unwrap().name.clone();
    let pos = b
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap();
    let off_at = pos + name.len() + 4 + 2 * 8 + 4;
    b[off_at..off_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_err_mentions(&b, &[&name, "past the end"]);
    b[off_at..off_at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert_err_mentions(&b, &[&name, "past the end"]);
    b[off_at..off_at + 8].copy_from_slice(&7u64.to_le_bytes());
    assert_err_mentions(&b, &[&name, "alignment"]);
}

#[test]
fn bad_metadata() {
    let (g, _, _) = tiny_llama(10);
    let mut u = g.clone();
    u.set("general.architecture", s("gptj"));
    match load(&u.bytes()) {
        Err(Error::Unsupported(m)) => assert!(m.contains("gptj"), "{m}"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    let mut a = g.clone();
    a.set("general.alignment", Val::U32(48));
    assert_err_mentions(&a.bytes(), &["general.alignment"]);
    let mut d = g.clone();
    d.kv.push(("llama.block_count".into(), Val::U32(1)));
    assert_err_mentions(&d.bytes(), &["duplicate metadata key", "llama.block_count"]);
    let mut m = g.clone();
    m.kv.retain(|(k, _)| k != "llama.embedding_length");
    assert_err_mentions(&m.bytes(), &["llama.embedding_length"]);
    let mut h = g.clone();
    h.set("llama.attention.head_count_kv", Val::U32(3));
    assert_err_mentions(&h.bytes(), &["num_key_value_heads"]);
    let mut t = g.clone();
    t.set("tokenizer.ggml.model", s("bert"));
    assert!(matches!(load(&t.bytes()), Err(Error::Unsupported(m)) if m.contains("bert")));
    let mut p = g.clone();
    p.set("tokenizer.ggml.pre", s("mystery"));
    assert!(matches!(load(&p.bytes()), Err(Error::Unsupported(m)) if m.contains("mystery")));
    let mut e = g.clone();
    e.set("tokenizer.ggml.eos_token_id", Val::U32(1000));
    assert_err_mentions(&e.bytes(), &["eos_token_id"]);
    let mut r = g.clone();
    r.set("llama.rope.scaling.type", s("yarn"));
    assert!(matches!(load(&r.bytes()), Err(Error::Unsupported(m)) if m.contains("yarn")));
    let mut l = g.clone();
    l.set("llama.rope.scaling.type", s("linear"));
    l.set("llama.rope.scaling.factor", Val::F32(4.0));
    let m = load(&l.bytes()).unwrap();
    assert_eq!(
        m.config.rope_scaling,
        Some(llmrt::config::RopeScaling::Linear { factor: 4.0 })
    );
}

// ---------------------------------------------------------------------------------------
// Fuzzing

/// Mutates `base` `iters` times (seeded), loading each mutant; no load may panic or make
/// a single allocation above `max_alloc`. Stops early after `budget`. Returns the number
/// of mutants tried and how many of them loaded.
fn fuzz(
    base: &[u8],
    seed: u64,
    iters: usize,
    budget: Duration,
    max_alloc: usize,
) -> (usize, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = Instant::now();
    let (mut done, mut loaded) = (0, 0);
    for it in 0..iters {
        if start.elapsed() > budget {
            break;
        }
        let mut b = base.to_vec();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
            }
            1 => {
                // An extreme little-endian u64 somewhere (lengths, counts, dims, offsets).
                let i = rng.random_range(0..b.len().saturating_sub(8).max(1));
                let v: u64 = match rng.random_range(0..4) {
                    0 => u64::MAX,
                    1 => 1 << rng.random_range(20..63),
                    2 => rng.random::<u64>(),
                    _ => rng.random_range(0..64),
                };
                let end = (i + 8).min(b.len());
                b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
            }
            2 => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
                b.truncate(rng.random_range(i..=b.len()));
            }
            _ => {
                // Only the first 512 bytes (header, metadata keys, counts).
                let i = rng.random_range(0..b.len().min(512));
                b[i] = rng.random();
            }
        }
        LARGEST.store(0, Ordering::Relaxed);
        TRACK.with(|t| t.set(true));
        let r = std::panic::catch_unwind(|| load(&b).is_ok());
        TRACK.with(|t| t.set(false));
        match r {
            Ok(ok) => loaded += ok as usize,
            Err(_) => panic!("load panicked on mutant {it} (seed {seed})"),
        }
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest <= max_alloc,
            "mutant {it} (seed {seed}) made a single allocation of {largest} bytes"
        );
        done += 1;
    }
    (done, loaded)
}

#[test]
fn fuzz_synthetic_file() {
    let (g, _, _) = tiny_llama(11);
    let b = g.bytes();
    let (n, ok) = fuzz(&b, 42, 20_000, Duration::from_secs(8), 16 << 20);
    eprintln!(
        "fuzz: {n} mutants of a {}-byte synthetic GGUF, {ok} loaded",
        b.len()
    );
    assert!(n >= 500);
}

fn smollm2_path() -> Option<PathBuf> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "note: {} is absent (run scripts/fetch-default-model.sh); test skipped",
            p.display()
        );
        None
    }
}

#[test]
fn fuzz_smollm2_header_region() {
    let Some(p) = smollm2_path() else { return };
    use std::io::Read;
    let mut head = vec![0u8; 64 << 10];
    std::fs::File::open(&p)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    let msg = err_of(&head);
    assert!(msg.contains("bytes left"), "{msg}");
    let (n, _) = fuzz(&head, 7, 10_000, Duration::from_secs(8), 16 << 20);
    eprintln!("fuzz: {n} mutants of the first 64 KiB of SmolLM2");
    assert!(n >= 500);
}

// ---------------------------------------------------------------------------------------
// The real model

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn smollm2_config_and_tensors() {
    let Some(p) = smollm2_path() else { return };
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.version, 3);
    let counts = f.type_counts();
    assert_eq!(counts.get(&DType::Q4_1), Some(&210));
    assert_eq!(counts.get(&DType::Q8_0), Some(&1));
    assert_eq!(counts.get(&DType::F32), Some(&61));
    assert_eq!(f.tensors.len(), 272);

    let m = gguf::load(&p).unwrap();
    let h = &fixture("expected_f32_weights.json")["hyperparameters"];
    let c = &m.config;
    let u = |k: &str| h[k].as_u64().unwrap() as usize;
    assert_eq!(c.architecture, "LlamaForCausalLM");
    assert_eq!(h["architecture"], "llama");
    assert_eq!(c.vocab_size, u("vocab_size"));
    assert_eq!(c.hidden_size, u("hidden_size"));
    assert_eq!(c.intermediate_size, u("intermediate_size"));
    assert_eq!(c.num_hidden_layers, u("num_hidden_layers"));
    assert_eq!(c.num_attention_heads, u("num_attention_heads"));
    assert_eq!(c.num_key_value_heads, u("num_key_value_heads"));
    assert_eq!(c.head_dim, u("head_dim"));
    assert_eq!(c.rope_theta, h["rope_theta"].as_f64().unwrap());
    assert_eq!(c.rms_norm_eps, h["rms_norm_eps"].as_f64().unwrap() as f32);
    assert_eq!(
        c.tie_word_embeddings,
        h["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(
        c.bos_token_id,
        Some(h["bos_token_id"].as_u64().unwrap() as u32)
    );
    assert_eq!(
        c.eos_token_ids,
        vec![h["eos_token_id"].as_u64().unwrap() as u32]
    );
    assert_eq!(c.rope_scaling, None);
    assert!(c.moe.is_none() && !c.attention_bias && !c.qk_norm);
    assert_eq!(m.generation_defaults.eos_token_ids, vec![2]);

    // Stored types survive renaming; nothing is lost; the decoder accepts the set.
    assert_eq!(m.tensors.len(), 272);
    let mut by_type = std::collections::HashMap::new();
    for w in m.tensors.tensors.values() {
        *by_type.entry(w.dtype).or_insert(0) += 1;
    }
    assert_eq!(by_type.get(&DType::Q4_1), Some(&210));
    let e = m.tensors.get("model.embed_tokens.weight").unwrap();
    assert_eq!((e.dtype, e.shape.clone()), (DType::Q8_0, vec![49152, 576]));
    let q = m
        .tensors
        .get("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!((q.dtype, q.shape.clone()), (DType::Q4_1, vec![576, 576]));
    let k = m
        .tensors
        .get("model.layers.29.self_attn.k_proj.weight")
        .unwrap();
    assert_eq!(k.shape, vec![192, 576]);
    llmrt::model::ModelWeights::from_store(&m.config, &m.tensors).unwrap();
}

#[test]
fn smollm2_qk_rows_are_unpermuted() {
    let Some(p) = smollm2_path() else { return };
    let f = GgufFile::open(&p).unwrap();
    let m = gguf::load(&p).unwrap();
    for (gname, hname, n_head) in [
        (
            "blk.3.attn_q.weight",
            "model.layers.3.self_attn.q_proj.weight",
            9,
        ),
        (
            "blk.3.attn_k.weight",
            "model.layers.3.self_attn.k_proj.weight",
            3,
        ),
        (
            "blk.3.attn_v.weight",
            "model.layers.3.self_attn.v_proj.weight",
            0,
        ),
    ] {
        let raw = f
            .weight(f.tensors.iter().find(|t| t.name == gname).unwrap())
            .unwrap();
        let hf = m.tensors.get(hname).unwrap();
        let rows: Vec<&[u8]> = (0..hf.rows()).map(|r| hf.row_bytes(r)).collect();
        let expect: Vec<&[u8]> = if n_head == 0 {
            rows.clone()
        } else {
            llama_cpp_permute(&rows, n_head)
        };
        for (r, e) in expect.iter().enumerate() {
            assert_eq!(raw.row_bytes(r), *e, "{gname} row {r}");
        }
    }
}

#[test]
fn smollm2_tokenizer_cases() {
    let Some(p) = smollm2_path() else { return };
    let m = gguf::load(&p).unwrap();
    let t = &m.tokenizer;
    let cases = fixture("tokenizer_cases.json");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut n = 0;
    for c in cases["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let text = c["text"].as_str().unwrap();
        let want = ids(c.get("ids_smollm_pretokenizer").unwrap_or(&c["ids"]));
        assert_eq!(t.encode(text, false).unwrap(), want, "encode `{name}`");
        let with_special = c.get("ids_with_special").map(ids).unwrap_or(want.clone());
        assert_eq!(
            t.encode(text, true).unwrap(),
            with_special,
            "encode+special `{name}`"
        );
        let plain = ids(&c["ids"]);
        assert_eq!(
            t.decode(&plain, false).unwrap(),
            c["decoded"].as_str().unwrap(),
            "decode `{name}`"
        );
        assert_eq!(
            t.decode(&plain, true).unwrap(),
            c["decoded_skip_special"].as_str().unwrap(),
            "decode skip_special `{name}`"
        );
        n += 1;
    }
    assert_eq!(n, 46);
    assert_eq!(t.bos_token(), cases["bos_token"].as_str());
    assert_eq!(t.eos_token(), cases["eos_token"].as_str());
    for (tok, id) in cases["special_token_ids"].as_object().unwrap() {
        assert_eq!(
            t.token_to_id(tok),
            Some(id.as_u64().unwrap() as u32),
            "{tok}"
        );
    }
}

#[test]
fn smollm2_chat_template() {
    let Some(p) = smollm2_path() else { return };
    let m = gguf::load(&p).unwrap();
    let chat = fixture("chat_cases.json");
    assert_eq!(m.chat_template.as_deref(), chat["chat_template"].as_str());
    // The rendered conversations tokenize to the recorded ids.
    for c in chat["cases"].as_array().unwrap() {
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = m
            .tokenizer
            .encode(c["rendered"].as_str().unwrap(), false)
            .unwrap();
        assert_eq!(got, want, "chat case {}", c["name"]);
    }
}
