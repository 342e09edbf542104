//! The tokenizer: a `tokenizers::Tokenizer` plus the special-token facts the engine needs.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Cheap to clone: the engine, its output thread and the structured-output compiler share
/// one `tokenizers::Tokenizer` (its vocabulary and merges take megabytes; it is immutable
/// and thread-safe once built).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl Tokenizer {
    /// Wraps a built tokenizer. `bos_token`/`eos_token` are the special tokens' strings
    /// (as `tokenizer_config.json` names them), used by chat templates and stop checks.
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        Tokenizer {
            inner: Arc::new(inner),
            bos_token,
            eos_token,
        }
    }

    /// Reads `tokenizer.json`.
    pub fn from_file(
        path: &Path,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::invalid_model(path, format!("tokenizer.json: {e}")))?;
        Ok(Self::new(inner, bos_token, eos_token))
    }

    /// Another handle on the same tokenizer (for use while the model is borrowed elsewhere).
    pub fn clone_handle(&self) -> Tokenizer {
        self.clone()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes text; `add_special_tokens` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }
}
