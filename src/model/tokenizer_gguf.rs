//! A `tokenizers::Tokenizer` built from GGUF metadata (`tokenizer.ggml.*`), the way
//! llama.cpp reads it.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE: vocabulary from
//! `tokenizer.ggml.tokens`, merges from `tokenizer.ggml.merges`). Control (type 3) and
//! user-defined (type 4) tokens become added tokens, matched in text before
//! pre-tokenization (control tokens are special: skipped by `decode(.., true)`). The
//! pre-tokenizer follows `tokenizer.ggml.pre` as llama.cpp maps it; BOS/EOS are added when
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` say so. SentencePiece (`"llama"`) and
//! other models are `Error::Unsupported` for now.

use super::loader::gguf::{MetaArray, Metadata};
use super::Tokenizer;
use crate::error::{Error, Result};
use serde_json::json;
use std::path::Path;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper};
use tokenizers::{PreTokenizerWrapper, Tokenizer as HfTokenizer};

/// llama.cpp's LLAMA3 pre-tokenizer regex (also Smaug, DBRX).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's QWEN2 pre-tokenizer regex (digits one by one).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Builds the tokenizer described by the `tokenizer.ggml.*` keys of `meta`. `path` names
/// the file in errors.
pub fn tokenizer_from_gguf(meta: &Metadata, path: &Path) -> Result<Tokenizer> {
    let bad = |m: String| Error::invalid_model(path, m);
    let model = meta
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| bad("GGUF has no `tokenizer.ggml.model`: no tokenizer to build".into()))?;
    match model {
        "gpt2" => gpt2(meta, path),
        other => Err(Error::Unsupported(format!(
            "GGUF tokenizer model `{other}` (supported: gpt2)"
        ))),
    }
}

/// The pre-tokenizer (as tokenizer.json) and whether to NFC-normalize, for a `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Option<(serde_json::Value, bool)> {
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        // Plain GPT-2 split.
        "default" | "gpt-2" | "gpt2" | "olmo" | "mpt" | "stablelm2" | "jais" | "poro-chat"
        | "bloom" | "gpt3-finnish" => (byte_level(true), false),
        // Every digit on its own, then GPT-2 (llama.cpp: STARCODER/REFACT/SMOLLM).
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        "llama-bpe" | "llama3" | "smaug-bpe" | "dbrx" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
            false,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
            true,
        ),
        _ => return None,
    })
}

fn gpt2(meta: &Metadata, path: &Path) -> Result<Tokenizer> {
    let bad = |m: String| Error::invalid_model(path, m);
    let tokens = match meta.get_array("tokenizer.ggml.tokens") {
        Some(MetaArray::String(t)) => t,
        _ => {
            return Err(bad(
                "`tokenizer.ggml.tokens` missing or not an array of strings".into(),
            ))
        }
    };
    if tokens.is_empty() || tokens.len() > (1 << 24) {
        return Err(bad(format!(
            "`tokenizer.ggml.tokens` has {} entries",
            tokens.len()
        )));
    }
    let merges = match meta.get_array("tokenizer.ggml.merges") {
        Some(MetaArray::String(m)) => m.as_slice(),
        None => &[],
        Some(_) => {
            return Err(bad(
                "`tokenizer.ggml.merges` is not an array of strings".into()
            ))
        }
    };
    let types: Vec<i64> = match meta.get_array("tokenizer.ggml.token_type") {
        Some(a) => a
            .to_i64_vec()
            .ok_or_else(|| bad("`tokenizer.ggml.token_type` is not an integer array".into()))?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(bad(format!(
            "`tokenizer.ggml.token_type` has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let pre = meta.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let (pre_json, nfc) = pre_tokenizer(pre).ok_or_else(|| {
        Error::Unsupported(format!("GGUF pre-tokenizer `tokenizer.ggml.pre` = `{pre}`"))
    })?;

    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        // A repeated token string keeps its first id (as llama.cpp's token_to_id map does).
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // llama.cpp splits at the first space after the first character.
        let cut = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(p, _)| p)
            .ok_or_else(|| bad(format!("merge #{i} `{m}` has no space")))?;
        pairs.push((m[..cut].to_string(), m[cut + 1..].to_string()));
    }
    let ignore_merges = matches!(pre, "llama-bpe" | "llama3" | "smaug-bpe");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| bad(format!("GGUF BPE vocabulary: {e}")))?;

    let mut tk = HfTokenizer::new(bpe);
    let pre_tok: PreTokenizerWrapper = serde_json::from_value(pre_json)
        .map_err(|e| bad(format!("pre-tokenizer for `{pre}`: {e}")))?;
    tk.with_pre_tokenizer(Some(pre_tok));
    if nfc {
        let n: NormalizerWrapper = serde_json::from_value(json!({"type": "NFC"}))
            .map_err(|e| bad(format!("normalizer: {e}")))?;
        tk.with_normalizer(Some(n));
    }
    let dec: DecoderWrapper = serde_json::from_value(json!({"type": "ByteLevel",
        "add_prefix_space": true, "trim_offsets": true, "use_regex": true}))
    .map_err(|e| bad(format!("decoder: {e}")))?;
    tk.with_decoder(Some(dec));

    let token_id = |key: &str| -> Result<Option<u32>> {
        match meta.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                _ => Err(bad(format!(
                    "`{key}` is not a token id below {}",
                    tokens.len()
                ))),
            },
        }
    };
    let bos = token_id("tokenizer.ggml.bos_token_id")?;
    let eos = token_id("tokenizer.ggml.eos_token_id")?;
    let add_bos = meta
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(false);
    let add_eos = meta
        .get_bool("tokenizer.ggml.add_eos_token")
        .unwrap_or(false);

    // Control and user-defined tokens are matched in text as whole tokens.
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, &ty)| !t.is_empty() && (ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED))
        .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_CONTROL).normalized(false))
        .collect();
    tk.add_special_tokens(&added);

    let mut single: Vec<serde_json::Value> = Vec::new();
    let mut special = serde_json::Map::new();
    let mut piece = |id: Option<u32>, what: &str| -> Result<Option<serde_json::Value>> {
        let id = id.ok_or_else(|| bad(format!("GGUF asks to add {what} but has no {what} id")))?;
        let t = &tokens[id as usize];
        special.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        Ok(Some(json!({"SpecialToken": {"id": t, "type_id": 0}})))
    };
    let bos_piece = if add_bos { piece(bos, "BOS")? } else { None };
    let eos_piece = if add_eos { piece(eos, "EOS")? } else { None };
    let post: serde_json::Value = if add_bos || add_eos {
        single.extend(bos_piece.clone());
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        single.extend(eos_piece.clone());
        let mut pair = single.clone();
        pair.extend(bos_piece);
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        pair.extend(eos_piece);
        json!({"type": "TemplateProcessing", "single": single, "pair": pair,
               "special_tokens": special})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
               "use_regex": true})
    };
    let post: PostProcessorWrapper =
        serde_json::from_value(post).map_err(|e| bad(format!("post-processor: {e}")))?;
    tk.with_post_processor(Some(post));

    let name = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
    Ok(Tokenizer::new(tk, name(bos), name(eos)))
}
