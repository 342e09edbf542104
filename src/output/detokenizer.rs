//! Incremental detokenisation ("prefix offset / read offset", as vLLM and HF TGI do it):
//! each new token's text is the decode of a short window of recent tokens minus the decode
//! of the window without the new tokens, emitted only when it is whole UTF-8, so that a
//! character split across tokens is held back until complete and the concatenated deltas
//! equal one decode of all tokens.

use crate::model::Tokenizer;

#[derive(Clone)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
}

/// How many already-emitted tokens to decode before the new ones, for context
/// (byte-level BPE and SentencePiece need neighbours to render spaces and bytes right).
const CONTEXT_TOKENS: usize = 5;

impl IncrementalDetokenizer {
    /// Starts after `prompt` (whose text is not emitted).
    pub fn new(prompt: &[u32], skip_special_tokens: bool) -> Self {
        let start = prompt.len().saturating_sub(CONTEXT_TOKENS);
        IncrementalDetokenizer {
            ids: prompt[start..].to_vec(),
            prefix_offset: 0,
            read_offset: prompt.len() - start,
            skip_special_tokens,
        }
    }

    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let skip = self.skip_special_tokens;
        let prefix = tok
            .decode(&self.ids[self.prefix_offset..self.read_offset], skip)
            .unwrap_or_default();
        let full = tok
            .decode(&self.ids[self.prefix_offset..], skip)
            .unwrap_or_default();
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            delta
        } else {
            String::new()
        }
    }

    /// At the end of the output: the text still held back (an incomplete character is
    /// rendered as the decoder renders it, U+FFFD), so that all deltas together equal
    /// the one-shot decode.
    pub fn flush(&mut self, tok: &Tokenizer) -> String {
        let skip = self.skip_special_tokens;
        let prefix = tok
            .decode(&self.ids[self.prefix_offset..self.read_offset], skip)
            .unwrap_or_default();
        let full = tok
            .decode(&self.ids[self.prefix_offset..], skip)
            .unwrap_or_default();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        match full.strip_prefix(&prefix) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        }
    }
}
