//! llguidance's view of the tokenizer: the bytes each token id stands for, in a `TokTrie`,
//! and a `TokenizerEnv` that tokenizes with our `tokenizers::Tokenizer`.
//!
//! `toktrie_hf_tokenizers` does this for a `tokenizers` 0.21 tokenizer; ours is 0.22, so the
//! same facts are applied here to our own type:
//! - byte-level BPE (`ByteLevel` decoder, GPT-2 style): each character of a token's string
//!   maps back to one byte through GPT-2's byte-to-unicode table;
//! - SentencePiece style (`ByteFallback` and/or `Metaspace` / `Replace("▁", " ")` decoders):
//!   `<0xAB>` is the byte 0xAB, and the space placeholder (`▁`) is a space;
//! - added tokens that are special (or look like `<...>`) get llguidance's special-token
//!   marker byte 0xFF in front, so no grammar text ever produces them (a Lark grammar can
//!   still name them as `<|im_end|>`); other added tokens are their content.
//!
//! Ids without a token (holes, or the padding rows of a model whose `vocab_size` exceeds the
//! tokenizer's) get no bytes and are never allowed.

use crate::error::{Error, Result};
use crate::model::Tokenizer;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv, INVALID_TOKEN};
use serde_json::Value;
use std::sync::Arc;

/// How token strings map to bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Decoding {
    ByteLevel,
    /// `<0xAB>` byte tokens when `byte_fallback`; `space` stands for ' '.
    SentencePiece {
        byte_fallback: bool,
        space: char,
    },
}

fn decoding_of(tok: &tokenizers::Tokenizer) -> Result<Decoding> {
    let decoder = tok.get_decoder().ok_or_else(|| {
        Error::Unsupported("structured outputs: the tokenizer has no decoder".into())
    })?;
    // The decoder's JSON form gives the fields that the Rust types keep private.
    let json = serde_json::to_value(decoder)
        .map_err(|e| Error::Tokenizer(format!("cannot serialize the decoder: {e}")))?;
    let mut byte_level = false;
    let mut byte_fallback = false;
    let mut space: Option<char> = None;
    fn walk(d: &Value, bl: &mut bool, bf: &mut bool, space: &mut Option<char>) {
        match d["type"].as_str() {
            Some("ByteLevel") => *bl = true,
            Some("ByteFallback") => *bf = true,
            Some("Metaspace") => {
                if let Some(c) = d["replacement"].as_str().and_then(|s| s.chars().next()) {
                    *space = Some(c);
                }
            }
            Some("Replace") if d["content"].as_str() == Some(" ") => {
                let mut chars = d["pattern"]["String"].as_str().unwrap_or("").chars();
                if let (Some(c), None) = (chars.next(), chars.next()) {
                    *space = Some(c);
                }
            }
            Some("Sequence") => {
                for d in d["decoders"].as_array().into_iter().flatten() {
                    walk(d, bl, bf, space);
                }
            }
            _ => {}
        }
    }
    walk(&json, &mut byte_level, &mut byte_fallback, &mut space);
    if byte_level {
        Ok(Decoding::ByteLevel)
    } else if byte_fallback || space.is_some() {
        Ok(Decoding::SentencePiece {
            byte_fallback,
            space: space.unwrap_or('▁'),
        })
    } else {
        Err(Error::Unsupported(format!(
            "structured outputs: cannot tell the bytes of tokens for decoder {}",
            json["type"]
        )))
    }
}

/// GPT-2's byte-to-unicode table, inverted: the byte each of the 256 characters stands for.
fn byte_level_table() -> std::collections::HashMap<char, u8> {
    let printable =
        |b: u8| matches!(b, b'!'..=b'~') || matches!(b, 0xA1..=0xAC) || matches!(b, 0xAE..=0xFF);
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        if printable(b) {
            map.insert(b as char, b);
        } else {
            map.insert(char::from_u32(next).unwrap(), b);
            next += 1;
        }
    }
    map
}

/// The bytes of every token id below the tokenizer's size (special tokens behind 0xFF).
pub(crate) fn token_bytes(tok: &tokenizers::Tokenizer) -> Result<Vec<Vec<u8>>> {
    let decoding = decoding_of(tok)?;
    let added = tok.get_added_tokens_decoder();
    let n = added
        .keys()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0)
        .max(tok.get_vocab_size(true));
    let table = byte_level_table();
    let mut out = vec![Vec::new(); n];
    for (id, slot) in out.iter_mut().enumerate() {
        let id = id as u32;
        if let Some(at) = added.get(&id) {
            let looks_special = at.content.starts_with('<') && at.content.ends_with('>');
            if at.special || looks_special {
                slot.push(TokTrie::SPECIAL_TOKEN_MARKER);
            }
            slot.extend_from_slice(at.content.as_bytes());
            continue;
        }
        let Some(name) = tok.id_to_token(id) else {
            continue;
        };
        *slot = match decoding {
            // A character outside the byte table (should not happen): never allowed.
            Decoding::ByteLevel => name
                .chars()
                .map(|c| table.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_default(),
            Decoding::SentencePiece {
                byte_fallback,
                space,
            } => {
                let hex = name
                    .strip_prefix("<0x")
                    .and_then(|s| s.strip_suffix('>'))
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) if byte_fallback => vec![b],
                    _ => name.replace(space, " ").into_bytes(),
                }
            }
        };
    }
    Ok(out)
}

/// The `TokenizerEnv` llguidance runs on.
struct LlmrtTokEnv {
    trie: TokTrie,
    /// Shares the engine's tokenizer (a handle, not a copy).
    tokenizer: Tokenizer,
}

impl LlmrtTokEnv {
    /// Tokenizes with the real tokenizer when its ids spell exactly these bytes (a
    /// pre-tokenizer that adds a prefix space would not), else greedily over the trie.
    fn encode(&self, s: &str) -> Vec<TokenId> {
        if let Ok(enc) = self.tokenizer.inner().encode(s, false) {
            let ids = enc.get_ids();
            let mut pos = 0;
            let bytes = s.as_bytes();
            let exact = ids.iter().all(|&id| {
                let t = self.trie.token(id);
                let ok = !t.is_empty()
                    && t[0] != TokTrie::SPECIAL_TOKEN_MARKER
                    && bytes[pos..].starts_with(t);
                pos += t.len();
                ok
            }) && pos == bytes.len();
            if exact {
                return ids.to_vec();
            }
        }
        self.trie.greedy_tokenize(s.as_bytes())
    }
}

impl TokenizerEnv for LlmrtTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie
            .tokenize_with_greedy_fallback(s, |s| self.encode(s))
    }

    fn tokenize_bytes_special(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.trie.tokenize_with_special(s, |s| self.encode(s))
        })
    }
}

/// llguidance's token environment for `tokenizer`, over `vocab_size` ids (the logits row
/// length; at least the tokenizer's size), with `eos_ids` as the tokens that end a
/// sequence (those at or beyond the size are dropped; empty: the tokenizer's EOS).
pub(crate) fn tok_env(tokenizer: &Tokenizer, eos_ids: &[u32], vocab_size: usize) -> Result<TokEnv> {
    let mut bytes = token_bytes(tokenizer.inner())?;
    let n = bytes.len().max(vocab_size);
    bytes.resize(n, Vec::new());
    let mut eos: Vec<u32> = eos_ids
        .iter()
        .copied()
        .filter(|&e| (e as usize) < n)
        .collect();
    if eos.is_empty() {
        eos.extend(tokenizer.eos_token_id().filter(|&e| (e as usize) < n));
    }
    let info = TokRxInfo::new(n as u32, eos.first().copied().unwrap_or(INVALID_TOKEN));
    let mut trie = TokTrie::from(&info, &bytes);
    if eos.len() > 1 {
        trie = trie.with_eos_tokens(&eos);
    }
    Ok(Arc::new(LlmrtTokEnv {
        trie,
        tokenizer: tokenizer.clone_handle(),
    }))
}
