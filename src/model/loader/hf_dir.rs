//! Loader for a Hugging Face model folder: `config.json`, `*.safetensors` (with or without
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json` and an optional `chat_template.jinja`.

use super::safetensors as st;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{GenerationDefaults, LoadedModel, TensorStore, Tokenizer};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Largest JSON side file read (config, tokenizer_config, generation_config, index).
const MAX_JSON_BYTES: u64 = 64 << 20;
/// Largest `chat_template.jinja` read.
const MAX_TEMPLATE_BYTES: u64 = 4 << 20;
/// Most shards an index may list.
const MAX_SHARDS: usize = 100_000;

/// Loads a Hugging Face model folder.
pub fn load(dir: &Path) -> Result<LoadedModel> {
    if !dir.is_dir() {
        return Err(Error::invalid_model(dir, "not a folder"));
    }

    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::invalid_model(
            dir,
            "missing config.json (not a Hugging Face model folder?)",
        ));
    }
    let config_text = read_text(&config_path, MAX_JSON_BYTES)?;
    let config = ModelConfig::from_hf_json(&config_path, &config_text)?;

    let tensors = load_weights(dir)?;

    let tok_cfg = read_optional_json_object(&dir.join("tokenizer_config.json"))?;
    let (bos_token, eos_token, mut chat_template) = match &tok_cfg {
        Some(obj) => {
            let path = dir.join("tokenizer_config.json");
            (
                special_token(&path, obj, "bos_token")?,
                special_token(&path, obj, "eos_token")?,
                chat_template_from_config(&path, obj)?,
            )
        }
        None => (None, None, None),
    };
    let jinja_path = dir.join("chat_template.jinja");
    if jinja_path.is_file() {
        chat_template = Some(read_text(&jinja_path, MAX_TEMPLATE_BYTES)?);
    }

    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(Error::invalid_model(dir, "missing tokenizer.json"));
    }
    let tokenizer = Tokenizer::from_file(&tokenizer_path, bos_token, eos_token)?;

    let gen_path = dir.join("generation_config.json");
    let generation_defaults = match read_optional_json_object(&gen_path)? {
        Some(obj) => generation_defaults(&gen_path, &obj)?,
        None => GenerationDefaults::default(),
    };

    Ok(LoadedModel {
        config,
        tensors,
        tokenizer,
        chat_template,
        generation_defaults,
    })
}

/// Loads the weights: the shards of `model.safetensors.index.json`, else
/// `model.safetensors`, else every `*.safetensors` file in the folder.
fn load_weights(dir: &Path) -> Result<TensorStore> {
    let index_path = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let mut store = TensorStore::default();
    if index_path.is_file() {
        load_indexed(dir, &index_path, &mut store)?;
    } else if single.is_file() {
        st::load_file(&single, &mut store)?;
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let path = entry.path();
            let is_st = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".safetensors") && !n.starts_with('.'));
            if is_st && path.is_file() {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(Error::invalid_model(
                dir,
                "no weights: no model.safetensors, model.safetensors.index.json or *.safetensors file",
            ));
        }
        files.sort();
        for f in &files {
            st::load_file(f, &mut store)?;
        }
    }
    if store.is_empty() {
        return Err(Error::invalid_model(
            dir,
            "the weight files hold no tensors",
        ));
    }
    Ok(store)
}

fn load_indexed(dir: &Path, index_path: &Path, store: &mut TensorStore) -> Result<()> {
    let bad = |reason: String| Error::invalid_model(index_path, reason);
    let text = read_text(index_path, MAX_JSON_BYTES)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| bad(format!("model.safetensors.index.json is not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("model.safetensors.index.json has no `weight_map` object".into()))?;
    // shard file -> tensor names it must hold
    let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry `{name}` is not a file name")))?;
        if !is_plain_file_name(file) {
            return Err(bad(format!(
                "weight_map entry `{name}` names `{file}`, which is not a plain file name in the model folder"
            )));
        }
        shards.entry(file).or_default().push(name);
    }
    if shards.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    if shards.len() > MAX_SHARDS {
        return Err(bad(format!("weight_map lists {} shards", shards.len())));
    }
    for (file, names) in &shards {
        let shard_path = dir.join(file);
        if !shard_path.is_file() {
            return Err(bad(format!(
                "shard `{file}` listed in the index is missing (it should hold `{}`)",
                names[0]
            )));
        }
        let mut shard = TensorStore::default();
        st::load_file(&shard_path, &mut shard)?;
        for name in names {
            if shard.get(name).is_none() {
                return Err(Error::invalid_model(
                    &shard_path,
                    format!(
                        "tensor `{name}` is listed in the index for this shard but is not in it"
                    ),
                ));
            }
        }
        // Deterministic merge order, so a duplicate is always reported the same way.
        let mut entries: Vec<_> = shard.tensors.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, w) in entries {
            if store.get(&name).is_some() {
                return Err(Error::invalid_model(
                    &shard_path,
                    format!("tensor `{name}` appears in more than one shard"),
                ));
            }
            store.insert(name, w);
        }
    }
    Ok(())
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && Path::new(name).is_relative()
}

/// Reads a UTF-8 text file of at most `limit` bytes.
fn read_text(path: &Path, limit: u64) -> Result<String> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > limit {
        return Err(Error::invalid_model(
            path,
            format!("file is {len} bytes, more than the limit of {limit}"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| Error::invalid_model(path, "file is not valid UTF-8"))
}

/// Reads an optional JSON file that must hold an object when present.
fn read_optional_json_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = read_text(path, MAX_JSON_BYTES)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid_model(path, format!("{name} is not JSON: {e}")))?;
    match v {
        Value::Object(obj) => Ok(Some(obj)),
        _ => Err(Error::invalid_model(
            path,
            format!("{name} is not a JSON object"),
        )),
    }
}

/// `bos_token` / `eos_token`: a string, `{"content": ...}` (AddedToken form) or null.
fn special_token(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::invalid_model(
                path,
                format!("`{key}` is an object without a string `content`"),
            )),
        },
        Some(_) => Err(Error::invalid_model(
            path,
            format!("`{key}` is neither a string nor an object with `content`"),
        )),
    }
}

/// `chat_template`: a string, or a list of `{name, template}` of which "default" is used.
fn chat_template_from_config(path: &Path, obj: &Map<String, Value>) -> Result<Option<String>> {
    match obj.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            for item in list {
                let name = item.get("name").and_then(|n| n.as_str());
                let template = item.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => return Err(Error::invalid_model(
                        path,
                        "`chat_template` list entries must be {\"name\": ..., \"template\": ...}",
                    )),
                }
            }
            Ok(None)
        }
        Some(_) => Err(Error::invalid_model(
            path,
            "`chat_template` is neither a string nor a list of named templates",
        )),
    }
}

/// Sampling defaults from `generation_config.json`. Absent or null fields stay unset.
fn generation_defaults(path: &Path, obj: &Map<String, Value>) -> Result<GenerationDefaults> {
    let bad = |reason: String| Error::invalid_model(path, reason);
    let float = |key: &str| -> Result<Option<f32>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 && x <= f32::MAX as f64 => Ok(Some(x as f32)),
                _ => Err(bad(format!(
                    "`{key}` must be a non-negative number, found {v}"
                ))),
            },
        }
    };
    let top_k = match obj.get("top_k") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(k) if (-1..=i32::MAX as i64).contains(&k) => Some(k as i32),
            _ => return Err(bad(format!("`top_k` must be an integer >= -1, found {v}"))),
        },
    };
    let id = |v: &Value| -> Result<u32> {
        v.as_u64()
            .filter(|&x| x <= u32::MAX as u64)
            .map(|x| x as u32)
            .ok_or_else(|| bad(format!("`eos_token_id` entry {v} is not a token id")))
    };
    let eos_token_ids = match obj.get("eos_token_id") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            let mut ids = Vec::with_capacity(list.len().min(1024));
            let mut seen = BTreeSet::new();
            for v in list {
                let x = id(v)?;
                if seen.insert(x) {
                    ids.push(x);
                }
            }
            ids
        }
        Some(v) => vec![id(v)?],
    };
    Ok(GenerationDefaults {
        temperature: float("temperature")?,
        top_p: float("top_p")?,
        top_k,
        repetition_penalty: float("repetition_penalty")?,
        eos_token_ids,
    })
}
