//! Loading Hugging Face model folders and `.safetensors` files: the tiny fixtures load
//! with the right config, dtypes and tokenizer; bad input is an error, never a panic.

use llmrt::config::ModelConfig;
use llmrt::error::Error;
use llmrt::model::loader::{hf_dir, safetensors as st};
use llmrt::model::{Model, TensorStore};
use llmrt::tensor::DType;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MODELS: [&str; 5] = ["llama", "qwen2", "qwen3", "mixtral", "qwen2moe"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// A scratch folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("llmrt-hf-loader-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// A copy of a fixture folder (without expected.json).
    fn copy_of(name: &str) -> TempDir {
        let dir = TempDir::new(name);
        for entry in std::fs::read_dir(fixture(name)).unwrap() {
            let entry = entry.unwrap();
            let file = entry.file_name();
            if file != "expected.json" {
                std::fs::copy(entry.path(), dir.0.join(&file)).unwrap();
            }
        }
        dir
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One tensor for `write_safetensors`: name, dtype string, shape, raw bytes.
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn raw(name: &str, dtype: &str, shape: &[usize], data: Vec<u8>) -> RawTensor {
    RawTensor {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
        data,
    }
}

/// Serialises tensors in the safetensors layout (header padded to 8 bytes with spaces).
fn safetensors_bytes(tensors: &[RawTensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A small valid file: f32, f16 and bf16 tensors.
fn small_safetensors() -> Vec<u8> {
    safetensors_bytes(&[
        raw(
            "a.weight",
            "F32",
            &[2, 3],
            f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        ),
        raw("b.weight", "F16", &[4], vec![0, 60, 0, 64, 0, 66, 0, 68]),
        raw("c.bias", "BF16", &[2], vec![128, 63, 0, 64]),
    ])
}

/// The tensors of a fixture's weight files, as raw tensors in name order.
fn fixture_tensors(name: &str) -> Vec<RawTensor> {
    let loaded = hf_dir::load(&fixture(name)).unwrap();
    let mut names: Vec<&String> = loaded.tensors.tensors.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let w = loaded.tensors.get(n).unwrap();
            raw(n, w.dtype.name(), &w.shape, w.bytes().to_vec())
        })
        .collect()
}

fn load_bytes(dir: &TempDir, bytes: &[u8]) -> llmrt::Result<TensorStore> {
    let path = dir.file("x.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let mut store = TensorStore::default();
    st::load_file(&path, &mut store).map(|_| store)
}

fn invalid_model_reason(err: &Error) -> &str {
    match err {
        Error::InvalidModel { reason, .. } => reason,
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}

// ---------------------------------------------------------------- the fixtures load

#[test]
fn every_fixture_loads_with_its_config() {
    for name in MODELS {
        let dir = fixture(name);
        let model = Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cfg = read_json(&dir.join("config.json"));
        let c = &model.config;
        let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
        assert_eq!(c.architecture, cfg["architectures"][0].as_str().unwrap());
        assert_eq!(c.vocab_size, u("vocab_size"), "{name}");
        assert_eq!(c.hidden_size, u("hidden_size"), "{name}");
        assert_eq!(c.intermediate_size, u("intermediate_size"), "{name}");
        assert_eq!(c.num_hidden_layers, u("num_hidden_layers"), "{name}");
        assert_eq!(c.num_attention_heads, u("num_attention_heads"), "{name}");
        assert_eq!(c.num_key_value_heads, u("num_key_value_heads"), "{name}");
        let head_dim = cfg["head_dim"]
            .as_u64()
            .map(|d| d as usize)
            .unwrap_or(u("hidden_size") / u("num_attention_heads"));
        assert_eq!(c.head_dim, head_dim, "{name}");
        assert_eq!(
            c.max_position_embeddings,
            u("max_position_embeddings"),
            "{name}"
        );
        assert_eq!(c.rms_norm_eps, cfg["rms_norm_eps"].as_f64().unwrap() as f32);
        assert_eq!(c.rope_theta, cfg["rope_theta"].as_f64().unwrap(), "{name}");
        assert_eq!(
            c.tie_word_embeddings,
            cfg["tie_word_embeddings"].as_bool().unwrap_or(false),
            "{name}"
        );
        assert_eq!(model.weights.layers.len(), c.num_hidden_layers, "{name}");
        assert_eq!(c.moe.is_some(), matches!(name, "mixtral" | "qwen2moe"));
        assert_eq!(model.weights.embed.shape, vec![c.vocab_size, c.hidden_size]);

        // Tokenizer facts from tokenizer_config.json.
        let tok_cfg = read_json(&dir.join("tokenizer_config.json"));
        assert_eq!(model.tokenizer.bos_token(), tok_cfg["bos_token"].as_str());
        assert_eq!(model.tokenizer.eos_token(), Some("<|im_end|>"));
        assert_eq!(model.tokenizer.eos_token_id(), Some(2));
        assert_eq!(
            model.chat_template.as_deref(),
            tok_cfg["chat_template"].as_str()
        );

        // generation_config.json
        let gen = &model.generation_defaults;
        assert_eq!(gen.eos_token_ids, vec![2, 0], "{name}");
        if matches!(name, "qwen2" | "qwen3") {
            assert_eq!(gen.temperature, Some(0.7));
            assert_eq!(gen.top_p, Some(0.8));
            assert_eq!(gen.top_k, Some(20));
            assert_eq!(gen.repetition_penalty, Some(1.05));
        } else {
            assert_eq!(gen.temperature, None);
            assert_eq!(gen.top_k, None);
        }
        assert_eq!(model.eos_token_ids(), vec![0, 2]);
    }
}

#[test]
fn llama_rope_scaling_and_qwen3_head_dim() {
    let llama = Model::load(&fixture("llama")).unwrap();
    assert!(matches!(
        llama.config.rope_scaling,
        Some(llmrt::config::RopeScaling::Llama3 { factor, .. }) if factor == 8.0
    ));
    let qwen3 = Model::load(&fixture("qwen3")).unwrap();
    assert_eq!(qwen3.config.head_dim, 32);
    assert!(qwen3.config.qk_norm);
    assert!(qwen3.weights.layers[0].q_norm.is_some());
    let qwen2 = Model::load(&fixture("qwen2")).unwrap();
    assert!(qwen2.weights.layers[0].q_bias.is_some());
}

#[test]
fn stored_dtypes_are_kept() {
    for (name, dtype) in [
        ("llama", DType::F32),
        ("qwen2", DType::BF16),
        ("qwen3", DType::F16),
        ("mixtral", DType::F32),
        ("qwen2moe", DType::F32),
    ] {
        let loaded = hf_dir::load(&fixture(name)).unwrap();
        assert!(!loaded.tensors.is_empty());
        for (n, w) in &loaded.tensors.tensors {
            assert_eq!(w.dtype, dtype, "{name}: {n}");
        }
        let model = Model::load(&fixture(name)).unwrap();
        assert_eq!(model.weights.embed.dtype, dtype);
        assert_eq!(model.weights.layers[0].q.dtype, dtype);
    }
}

#[test]
fn sharded_mixtral_loads_every_tensor_of_the_index() {
    let dir = fixture("mixtral");
    let index = read_json(&dir.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let loaded = hf_dir::load(&dir).unwrap();
    assert_eq!(loaded.tensors.len(), map.len());
    let mut total = 0usize;
    for name in map.keys() {
        let w = loaded
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        total += w.bytes().len();
    }
    assert_eq!(
        total as u64,
        index["metadata"]["total_size"].as_u64().unwrap()
    );
    let model = Model::load(&dir).unwrap();
    assert_eq!(model.config.moe.as_ref().unwrap().num_experts, 4);
}

#[test]
fn tied_qwen2_uses_the_embedding_as_lm_head() {
    let loaded = hf_dir::load(&fixture("qwen2")).unwrap();
    assert!(loaded.tensors.get("lm_head.weight").is_none());
    let model = Model::load(&fixture("qwen2")).unwrap();
    assert!(model.config.tie_word_embeddings);
    let (head, embed) = (&model.weights.lm_head, &model.weights.embed);
    assert_eq!(head.shape, embed.shape);
    assert_eq!(head.dtype, embed.dtype);
    assert_eq!(head.bytes().as_ptr(), embed.bytes().as_ptr());
    assert_eq!(head.bytes().len(), embed.bytes().len());
    // llama is untied: a different tensor.
    let llama = Model::load(&fixture("llama")).unwrap();
    assert_ne!(
        llama.weights.lm_head.bytes().as_ptr(),
        llama.weights.embed.bytes().as_ptr()
    );
}

#[test]
fn weights_are_zero_copy_views_of_the_file() {
    let path = fixture("llama").join("model.safetensors");
    let file = std::fs::read(&path).unwrap();
    let mut store = TensorStore::default();
    st::load_file(&path, &mut store).unwrap();
    let header_len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&file[8..8 + header_len]).unwrap();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let start = info["data_offsets"][0].as_u64().unwrap() as usize + 8 + header_len;
        let end = info["data_offsets"][1].as_u64().unwrap() as usize + 8 + header_len;
        let w = store.get(name).unwrap();
        assert_eq!(w.bytes(), &file[start..end], "{name}");
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(w.shape, shape);
    }
}

#[test]
fn fixture_tokenizers_reproduce_the_prompt_ids() {
    for name in MODELS {
        let dir = fixture(name);
        let model = Model::load(&dir).unwrap();
        let expected = read_json(&dir.join("expected.json"));
        for prompt in expected["prompts"].as_array().unwrap() {
            let text = prompt["text"].as_str().unwrap();
            let add = prompt["add_special_tokens"].as_bool().unwrap();
            let want: Vec<u32> = prompt["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = model.tokenizer.encode(text, add).unwrap();
            assert_eq!(got, want, "{name} / {}", prompt["name"]);
        }
    }
}

// ---------------------------------------------------------------- folder variants

#[test]
fn unindexed_multi_file_weights_load() {
    let dir = TempDir::copy_of("llama");
    std::fs::remove_file(dir.file("model.safetensors")).unwrap();
    let tensors = fixture_tensors("llama");
    let half = tensors.len() / 2;
    std::fs::write(
        dir.file("part-a.safetensors"),
        safetensors_bytes(&tensors[..half]),
    )
    .unwrap();
    std::fs::write(
        dir.file("part-b.safetensors"),
        safetensors_bytes(&tensors[half..]),
    )
    .unwrap();
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(model.weights.layers.len(), 3);

    // The same tensor in two files is an error naming it.
    let dup = &tensors[0];
    std::fs::write(
        dir.file("part-c.safetensors"),
        safetensors_bytes(&[raw(&dup.name, &dup.dtype, &dup.shape, dup.data.clone())]),
    )
    .unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(invalid_model_reason(&err).contains(&dup.name), "{err}");
}

#[test]
fn tokenizer_config_variants() {
    let dir = TempDir::copy_of("llama");
    let mut cfg = read_json(&dir.file("tokenizer_config.json"));
    cfg["bos_token"] = json!({"content": "<|begin_of_text|>", "lstrip": false});
    cfg["eos_token"] = json!({"content": "<|endoftext|>"});
    cfg["chat_template"] = json!([
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": "DEFAULT"}
    ]);
    std::fs::write(dir.file("tokenizer_config.json"), cfg.to_string()).unwrap();
    let gen = json!({"eos_token_id": 7, "temperature": 0.5, "top_k": -1});
    std::fs::write(dir.file("generation_config.json"), gen.to_string()).unwrap();
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(model.tokenizer.bos_token(), Some("<|begin_of_text|>"));
    assert_eq!(model.tokenizer.eos_token(), Some("<|endoftext|>"));
    assert_eq!(model.tokenizer.eos_token_id(), Some(0));
    assert_eq!(model.chat_template.as_deref(), Some("DEFAULT"));
    assert_eq!(model.generation_defaults.eos_token_ids, vec![7]);
    assert_eq!(model.generation_defaults.temperature, Some(0.5));
    assert_eq!(model.generation_defaults.top_k, Some(-1));
    assert_eq!(model.generation_defaults.top_p, None);

    // chat_template.jinja wins over tokenizer_config.json.
    std::fs::write(dir.file("chat_template.jinja"), "FROM FILE").unwrap();
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(model.chat_template.as_deref(), Some("FROM FILE"));

    // No tokenizer_config.json and no generation_config.json: defaults.
    std::fs::remove_file(dir.file("tokenizer_config.json")).unwrap();
    std::fs::remove_file(dir.file("generation_config.json")).unwrap();
    std::fs::remove_file(dir.file("chat_template.jinja")).unwrap();
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(model.tokenizer.bos_token(), None);
    assert_eq!(model.chat_template, None);
    assert_eq!(model.generation_defaults, Default::default());
}

// ---------------------------------------------------------------- bad folders

#[test]
fn missing_config_json() {
    let dir = TempDir::copy_of("qwen2");
    std::fs::remove_file(dir.file("config.json")).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(invalid_model_reason(&err).contains("config.json"), "{err}");
}

#[test]
fn config_json_not_json() {
    let dir = TempDir::copy_of("qwen2");
    std::fs::write(dir.file("config.json"), "{\"architectures\": [\"Qwen2For").unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(invalid_model_reason(&err).contains("not JSON"), "{err}");
    std::fs::write(dir.file("config.json"), [0xff, 0xfe, 0x00]).unwrap();
    assert!(Model::load(dir.path()).is_err());
    std::fs::write(dir.file("config.json"), "[1, 2]").unwrap();
    assert!(Model::load(dir.path()).is_err());
}

#[test]
fn unknown_architecture_is_named() {
    let dir = TempDir::copy_of("llama");
    let mut cfg = read_json(&dir.file("config.json"));
    cfg["architectures"] = json!(["FooForCausalLM"]);
    std::fs::write(dir.file("config.json"), cfg.to_string()).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(err.to_string().contains("FooForCausalLM"), "{err}");
}

#[test]
fn zero_dimension_is_rejected() {
    for field in [
        "hidden_size",
        "num_attention_heads",
        "vocab_size",
        "num_hidden_layers",
    ] {
        let dir = TempDir::copy_of("qwen3");
        let mut cfg = read_json(&dir.file("config.json"));
        cfg[field] = json!(0);
        std::fs::write(dir.file("config.json"), cfg.to_string()).unwrap();
        let err = Model::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}

#[test]
fn missing_tokenizer_json() {
    let dir = TempDir::copy_of("qwen2");
    std::fs::remove_file(dir.file("tokenizer.json")).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(
        invalid_model_reason(&err).contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn malformed_side_files_are_errors() {
    for (file, text) in [
        ("tokenizer_config.json", "{not json"),
        ("tokenizer_config.json", "{\"bos_token\": 5}"),
        ("tokenizer_config.json", "{\"chat_template\": 3}"),
        ("tokenizer_config.json", "{\"chat_template\": [1]}"),
        ("generation_config.json", "[]"),
        ("generation_config.json", "{\"temperature\": \"hot\"}"),
        ("generation_config.json", "{\"eos_token_id\": [1, -1]}"),
        ("generation_config.json", "{\"eos_token_id\": 99999999999}"),
        ("generation_config.json", "{\"top_k\": 1.5}"),
    ] {
        let dir = TempDir::copy_of("qwen2");
        std::fs::write(dir.file(file), text).unwrap();
        let err = Model::load(dir.path()).err();
        assert!(err.is_some(), "{file}: {text}");
        assert!(err.unwrap().to_string().contains(file), "{file}: {text}");
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = TempDir::copy_of("llama");
    let missing = "model.layers.1.self_attn.k_proj.weight";
    let tensors: Vec<RawTensor> = fixture_tensors("llama")
        .into_iter()
        .filter(|t| t.name != missing)
        .collect();
    std::fs::write(dir.file("model.safetensors"), safetensors_bytes(&tensors)).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(invalid_model_reason(&err).contains(missing), "{err}");
}

#[test]
fn wrong_tensor_shape_for_the_config_is_named() {
    let dir = TempDir::copy_of("llama");
    let mut tensors = fixture_tensors("llama");
    let t = tensors
        .iter_mut()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    t.shape = vec![32];
    t.data.truncate(32 * 4);
    std::fs::write(dir.file("model.safetensors"), safetensors_bytes(&tensors)).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(
        invalid_model_reason(&err).contains("model.norm.weight"),
        "{err}"
    );
}

#[test]
fn index_problems_are_named() {
    // A shard listed in the index is missing.
    let dir = TempDir::copy_of("mixtral");
    std::fs::remove_file(dir.file("model-00002-of-00002.safetensors")).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(
        invalid_model_reason(&err).contains("model-00002-of-00002.safetensors"),
        "{err}"
    );

    // A tensor listed for a shard is not in it.
    let dir = TempDir::copy_of("mixtral");
    let mut index = read_json(&dir.file("model.safetensors.index.json"));
    index["weight_map"]["model.extra.weight"] = json!("model-00001-of-00002.safetensors");
    std::fs::write(dir.file("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(
        invalid_model_reason(&err).contains("model.extra.weight"),
        "{err}"
    );

    // A shard name that leaves the folder.
    let mut index = read_json(&fixture("mixtral").join("model.safetensors.index.json"));
    index["weight_map"]["lm_head.weight"] = json!("../model-00002-of-00002.safetensors");
    std::fs::write(dir.file("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(Model::load(dir.path()).is_err());

    // The index is not JSON, or has no weight_map.
    for text in ["{\"weight_map\": {", "{}", "{\"weight_map\": {\"a\": 1}}"] {
        std::fs::write(dir.file("model.safetensors.index.json"), text).unwrap();
        let err = Model::load(dir.path()).err().unwrap();
        assert!(err.to_string().contains("index"), "{text}: {err}");
    }
}

#[test]
fn folder_without_weights() {
    let dir = TempDir::copy_of("qwen2");
    std::fs::remove_file(dir.file("model.safetensors")).unwrap();
    let err = Model::load(dir.path()).err().unwrap();
    assert!(invalid_model_reason(&err).contains("no weights"), "{err}");
    assert!(Model::load(&dir.file("nothing-here")).is_err());
}

// ---------------------------------------------------------------- bad safetensors files

#[test]
fn small_synthetic_file_loads() {
    let dir = TempDir::new("small");
    let store = load_bytes(&dir, &small_safetensors()).unwrap();
    assert_eq!(store.len(), 3);
    let a = store.get("a.weight").unwrap();
    assert_eq!(a.dtype, DType::F32);
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.as_f32().unwrap(), &[1., 2., 3., 4., 5., 6.]);
    let b = store.get("b.weight").unwrap();
    assert_eq!(b.dtype, DType::F16);
    assert_eq!(b.to_f32_vec(), vec![1.0, 2.0, 3.0, 4.0]);
    let c = store.get("c.bias").unwrap();
    assert_eq!(c.dtype, DType::BF16);
    assert_eq!(c.to_f32_vec(), vec![1.0, 2.0]);
    // Loading the same file twice into one store: duplicate names.
    let path = dir.file("x.safetensors");
    let mut store = store;
    let err = st::load_file(&path, &mut store).unwrap_err();
    assert!(
        invalid_model_reason(&err).contains("more than once"),
        "{err}"
    );
}

#[test]
fn every_truncation_is_an_error() {
    let dir = TempDir::new("trunc");
    let full = small_safetensors();
    for len in 0..full.len() {
        let res = load_bytes(&dir, &full[..len]);
        assert!(res.is_err(), "prefix of {len} bytes loaded");
        assert!(matches!(res.err().unwrap(), Error::InvalidModel { .. }));
    }
    assert!(load_bytes(&dir, &full).is_ok());
    // Extra bytes after the data are not a valid file either.
    let mut longer = full.clone();
    longer.extend_from_slice(&[0; 8]);
    assert!(load_bytes(&dir, &longer).is_err());
}

#[test]
fn huge_header_length_is_rejected() {
    let dir = TempDir::new("huge");
    for n in [1u64 << 62, u64::MAX, 100_000_001, 1 << 20] {
        let mut bytes = small_safetensors();
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let err = load_bytes(&dir, &bytes).err().unwrap();
        assert!(
            invalid_model_reason(&err).contains("header length"),
            "{err}"
        );
    }
}

#[test]
fn data_offsets_past_the_end() {
    let dir = TempDir::new("offsets");
    let header = json!({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}});
    let mut h = header.to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&[0u8; 8]); // only 8 of the 16 bytes
    assert!(load_bytes(&dir, &bytes).is_err());

    // Offsets far beyond the file, and offsets that overflow.
    for offsets in [json!([0, 1u64 << 40]), json!([u64::MAX - 1, u64::MAX])] {
        let header = json!({"t": {"dtype": "F32", "shape": [4], "data_offsets": offsets}});
        let h = header.to_string().into_bytes();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(&[0u8; 16]);
        assert!(load_bytes(&dir, &bytes).is_err());
    }
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = TempDir::new("dtype");
    let bytes = safetensors_bytes(&[
        raw("ok", "F32", &[2], f32_bytes(&[1.0, 2.0])),
        raw("position_ids", "I64", &[2], vec![0; 16]),
    ]);
    let err = load_bytes(&dir, &bytes).err().unwrap();
    let reason = invalid_model_reason(&err);
    assert!(
        reason.contains("position_ids") && reason.contains("I64"),
        "{err}"
    );
}

#[test]
fn shape_not_matching_the_data_length() {
    let dir = TempDir::new("shape");
    for shape in [&[2usize, 3][..], &[3][..], &[usize::MAX, 2][..]] {
        let bytes = safetensors_bytes(&[raw("t", "F32", shape, f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
        assert!(load_bytes(&dir, &bytes).is_err(), "{shape:?}");
    }
}

#[test]
fn garbage_headers_are_errors() {
    let dir = TempDir::new("garbage");
    let headers: [&[u8]; 8] = [
        b"",
        b"{",
        b"[]",
        b"null",
        b"{\"t\": 5}",
        b"{\"t\": {\"dtype\": \"F32\"}}",
        b"{\"t\": {\"dtype\": \"X9\", \"shape\": [], \"data_offsets\": [0, 4]}}",
        &[0xff, 0xfe, b'{', b'}'],
    ];
    for h in headers {
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(h);
        bytes.extend_from_slice(&[0u8; 4]);
        assert!(
            load_bytes(&dir, &bytes).is_err(),
            "{:?}",
            String::from_utf8_lossy(h)
        );
    }
    // An empty but valid file has no tensors.
    let mut bytes = 2u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert_eq!(load_bytes(&dir, &bytes).unwrap().len(), 0);
}

// ---------------------------------------------------------------- mutation fuzzing

/// SplitMix64: a small seeded generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A random mutation: byte flips, interesting values, insertions, deletions, truncation.
fn mutate(rng: &mut Rng, input: &[u8], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = [
                    0u8, 0xff, b'0', b'9', b'"', b'{', b'}', b'[', b']', b'-', b'.',
                ][rng.below(11)];
            }
            2 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(8.min(len - i));
                data.drain(i..i + n);
            }
            4 => {
                let i = rng.below(len + 1);
                let word = dictionary[rng.below(dictionary.len())];
                data.splice(i..i, word.iter().copied());
            }
            5 if len > 0 => data.truncate(rng.below(len)),
            6 if len >= 8 => {
                // Header length field: small perturbation or a random value.
                let v = if rng.below(2) == 0 {
                    let cur = u64::from_le_bytes(data[..8].try_into().unwrap());
                    cur.wrapping_add(rng.below(17) as u64).wrapping_sub(8)
                } else {
                    rng.next() >> rng.below(64)
                };
                data[..8].copy_from_slice(&v.to_le_bytes());
            }
            _ if len > 0 => {
                // Replace a digit (from a random start) with an extreme number.
                let from = rng.below(len);
                if let Some(i) = (0..len)
                    .map(|k| (from + k) % len)
                    .find(|&i| data[i].is_ascii_digit())
                {
                    let big: &[u8] = [
                        &b"18446744073709551615"[..],
                        b"4294967296",
                        b"0",
                        b"-1",
                        b"1e308",
                    ][rng.below(5)];
                    data.splice(i..i + 1, big.iter().copied());
                }
            }
            _ => {}
        }
    }
    data
}

#[test]
fn fuzz_safetensors_never_panics() {
    let dir = TempDir::new("fuzz-st");
    let seed = small_safetensors();
    let path = dir.file("x.safetensors");
    let dict: [&[u8]; 8] = [
        b"\"F16\"",
        b"\"I64\"",
        b"\"data_offsets\":[0,99999999999]",
        b"\"shape\":[]",
        b"\"shape\":[4294967296,4294967296,4294967296]",
        b"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        b",",
        b"\\u0000",
    ];
    let mut rng = Rng(0x5EED_0001);
    let start = Instant::now();
    let mut runs = 0;
    let (mut ok, mut err) = (0, 0);
    while runs < 20_000 && start.elapsed() < Duration::from_secs(7) {
        let bytes = mutate(&mut rng, &seed, &dict);
        std::fs::write(&path, &bytes).unwrap();
        let res = std::panic::catch_unwind(|| {
            let mut store = TensorStore::default();
            let r = st::load_file(&path, &mut store);
            if r.is_ok() {
                // Everything loaded must be readable.
                for w in store.tensors.values() {
                    let _ = w.to_f32_vec();
                }
            }
            r.is_ok()
        });
        match res {
            Ok(true) => ok += 1,
            Ok(false) => err += 1,
            Err(_) => panic!("load_file panicked on mutation {runs}: {bytes:?}"),
        }
        runs += 1;
    }
    assert!(runs >= 500, "only {runs} runs");
    assert!(err > 0);
    eprintln!("safetensors fuzz: {runs} runs, {ok} loaded, {err} rejected");
}

#[test]
fn fuzz_config_json_never_panics() {
    let dir = TempDir::copy_of("qwen2moe");
    let config = std::fs::read(fixture("qwen2moe").join("config.json")).unwrap();
    let gen = std::fs::read(fixture("qwen2").join("generation_config.json")).unwrap();
    let tok_cfg = std::fs::read(fixture("llama").join("tokenizer_config.json")).unwrap();
    let dict: [&[u8]; 9] = [
        b"null",
        b"-1",
        b"0",
        b"1e400",
        b"\"rope_scaling\": {\"rope_type\": \"yarn\"},",
        b"\"head_dim\": 3,",
        b"\"num_key_value_heads\": 3,",
        b"[",
        b"\"num_experts_per_tok\": 9,",
    ];
    let mut rng = Rng(0x5EED_0002);
    let start = Instant::now();
    let mut runs = 0;
    let mut loaded = 0;
    while runs < 10_000 && start.elapsed() < Duration::from_secs(7) {
        // Mostly config.json (parsed in memory: fast), every 8th run a whole folder load
        // with one of the side files mutated.
        let res = if runs % 8 != 0 {
            let text = mutate(&mut rng, &config, &dict);
            let text = String::from_utf8_lossy(&text).into_owned();
            std::panic::catch_unwind(|| {
                ModelConfig::from_hf_json(Path::new("config.json"), &text).is_ok()
            })
        } else {
            let (name, base): (&str, &[u8]) = match rng.below(3) {
                0 => ("config.json", &config),
                1 => ("generation_config.json", &gen),
                _ => ("tokenizer_config.json", &tok_cfg),
            };
            std::fs::write(dir.file("config.json"), &config).unwrap();
            std::fs::write(dir.file("generation_config.json"), &gen).unwrap();
            std::fs::write(dir.file("tokenizer_config.json"), &tok_cfg).unwrap();
            std::fs::write(dir.file(name), mutate(&mut rng, base, &dict)).unwrap();
            std::panic::catch_unwind(|| Model::load(dir.path()).is_ok())
        };
        match res {
            Ok(true) => loaded += 1,
            Ok(false) => {}
            Err(_) => panic!("panicked on config mutation run {runs}"),
        }
        runs += 1;
    }
    assert!(runs >= 500, "only {runs} runs");
    eprintln!("config fuzz: {runs} runs, {loaded} loaded");
}
