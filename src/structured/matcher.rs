//! Compiling a `StructuredOutputs` into a per-sequence `Matcher`, and the matcher's mask.

use super::gbnf;
use super::spec::{OutputConstraint, StructuredOutputs};
use super::vocab;
use crate::error::{Error, Result};
use crate::model::Tokenizer;
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{SimpleVob, TokEnv};
use llguidance::{JsonCompileOptions, ParserFactory};
use serde_json::{json, Value};

/// Bounds on the work one grammar may cost, at compile time and per mask (llguidance's
/// `ParserLimits`; the defaults are llguidance's, which keep masks to a few ms).
#[derive(Clone, Debug, PartialEq)]
pub struct StructuredLimits {
    /// Largest grammar (symbols in productions) accepted, JSON schemas included.
    pub max_grammar_size: usize,
    /// Lexer work allowed while compiling (regex derivative "fuel").
    pub initial_lexer_fuel: u64,
    /// Lexer work allowed for one token mask.
    pub step_lexer_fuel: u64,
    /// Earley items allowed for one token mask.
    pub step_max_items: usize,
    /// Lexer states kept (memory: about 1-2 kB each).
    pub max_lexer_states: usize,
    /// Largest Earley row (the grammar's branching factor).
    pub max_items_in_row: usize,
}

impl Default for StructuredLimits {
    fn default() -> Self {
        let d = ParserLimits::default();
        StructuredLimits {
            max_grammar_size: d.max_grammar_size,
            initial_lexer_fuel: d.initial_lexer_fuel,
            step_lexer_fuel: d.step_lexer_fuel,
            step_max_items: d.step_max_items,
            max_lexer_states: d.max_lexer_states,
            max_items_in_row: d.max_items_in_row,
        }
    }
}

/// Compiles structured-output requests against one model's tokenizer. Built once per
/// engine (it indexes the whole vocabulary: ~0.35 s for SmolLM2's 49k tokens); `compile`
/// is then cheap (~1-3 ms for a small JSON schema) and may run on any thread
/// (`GrammarCompiler` is `Send + Sync`).
pub struct GrammarCompiler {
    factory: ParserFactory,
    vocab_size: usize,
    eos_ids: Vec<u32>,
}

impl GrammarCompiler {
    /// `eos_token_ids`: the engine's EOS ids (`Model::eos_token_ids()`), allowed exactly
    /// when the grammar accepts; `vocab_size`: the logits row length (the model's
    /// `vocab_size`, which may exceed the tokenizer's; those extra ids are never allowed).
    pub fn new(tokenizer: &Tokenizer, eos_token_ids: &[u32], vocab_size: usize) -> Result<Self> {
        Self::with_limits(
            tokenizer,
            eos_token_ids,
            vocab_size,
            StructuredLimits::default(),
        )
    }

    pub fn with_limits(
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
        vocab_size: usize,
        limits: StructuredLimits,
    ) -> Result<Self> {
        let env: TokEnv = vocab::tok_env(tokenizer, eos_token_ids, vocab_size)?;
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Unsupported(format!("structured outputs: {e}")))?;
        factory.quiet();
        let l = factory.limits_mut();
        l.max_grammar_size = limits.max_grammar_size;
        l.initial_lexer_fuel = limits.initial_lexer_fuel;
        l.step_lexer_fuel = limits.step_lexer_fuel;
        l.step_max_items = limits.step_max_items;
        l.max_lexer_states = limits.max_lexer_states;
        l.max_items_in_row = limits.max_items_in_row;
        // Errors carry llguidance's message, not its whole parser state and grammar.
        l.verbose_errors = false;
        let trie = env.tok_trie();
        Ok(GrammarCompiler {
            vocab_size: trie.vocab_size(),
            eos_ids: trie
                .eos_tokens()
                .iter()
                .copied()
                .filter(|&t| (t as usize) < trie.vocab_size())
                .collect(),
            factory,
        })
    }

    /// Ids the masks cover (`max(model vocab_size, tokenizer size)`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The EOS ids the grammar allows when complete.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The Lark grammar llguidance compiles for a `grammar`/`choice` request (GBNF
    /// converted), or `None` for the JSON and regex kinds, which llguidance reads directly.
    pub fn lark_source(spec: &StructuredOutputs) -> Result<Option<String>> {
        match &spec.constraint {
            OutputConstraint::Grammar(g) if gbnf::is_gbnf(g) => gbnf::gbnf_to_lark(g)
                .map(Some)
                .map_err(|e| Error::InvalidRequest(format!("structured_outputs.grammar: {e}"))),
            OutputConstraint::Grammar(g) => Ok(Some(g.clone())),
            OutputConstraint::Choice(choices) => {
                let mut lark = String::from("start: ");
                for (i, c) in choices.iter().enumerate() {
                    if i > 0 {
                        lark.push_str(" | ");
                    }
                    gbnf::write_lark_string(&mut lark, c);
                }
                Ok(Some(lark))
            }
            _ => Ok(None),
        }
    }

    /// Compiles `spec` into a fresh matcher at the start of the output. Invalid schemas,
    /// regexes and grammars, and ones over the limits, are `Error::InvalidRequest` naming
    /// the field, with llguidance's message.
    pub fn compile(&self, spec: &StructuredOutputs) -> Result<Matcher> {
        let field = spec.constraint.field();
        let grammar = match &spec.constraint {
            OutputConstraint::Json(schema) => {
                TopLevelGrammar::from_json_schema(json_schema(schema.clone(), spec))
            }
            OutputConstraint::JsonObject => {
                TopLevelGrammar::from_json_schema(json_schema(json!({"type": "object"}), spec))
            }
            OutputConstraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            OutputConstraint::Grammar(_) | OutputConstraint::Choice(_) => {
                TopLevelGrammar::from_lark(Self::lark_source(spec)?.unwrap())
            }
        };
        let what = match field {
            "json" | "json_object" => "cannot compile the JSON schema",
            "regex" => "cannot compile the regex",
            "choice" => "cannot compile the choices",
            _ => "cannot compile the grammar",
        };
        let parser = llguidance::panic_utils::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.factory.create_parser(grammar)
        }))
        .map_err(|e| {
            Error::InvalidRequest(format!(
                "structured_outputs.{field}: {what}: {}",
                clean(&e.to_string())
            ))
        })?;
        let inner = llguidance::Matcher::new(Ok(parser));
        if let Some(e) = inner.get_error() {
            return Err(Error::InvalidRequest(format!(
                "structured_outputs.{field}: {what}: {}",
                clean(&e)
            )));
        }
        Ok(Matcher {
            inner,
            vocab_size: self.vocab_size,
            eos_ids: self.eos_ids.clone(),
            mask: SimpleVob::alloc(self.vocab_size),
            eos_after_stop: false,
        })
    }
}

/// llguidance's message without the placeholder it leaves for omitted parser state.
fn clean(msg: &str) -> String {
    msg.replace("<non-verbose/>", "").trim().to_string()
}

/// The schema with vLLM's JSON options applied (llguidance reads them from `x-guidance`).
fn json_schema(schema: Value, spec: &StructuredOutputs) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        Value::Bool(false) => json!({"not": {}}),
        s => s,
    };
    if spec.disable_additional_properties {
        close_objects(&mut schema);
    }
    if schema.is_object() && schema.get("x-guidance").is_none() {
        // Flexible whitespace is bounded per gap between JSON tokens (as llama.cpp's JSON
        // grammars do): an unbounded run lets a small model wander in whitespace until
        // max_tokens.
        let bounded = (!spec.disable_any_whitespace).then(|| BOUNDED_WHITESPACE.to_string());
        let opts = JsonCompileOptions {
            whitespace_flexible: !spec.disable_any_whitespace,
            whitespace_pattern: spec.whitespace_pattern.clone().or(bounded),
            ..JsonCompileOptions::default()
        };
        opts.apply_to(&mut schema);
    }
    schema
}

/// JSON whitespace allowed between two tokens unless the request says otherwise.
const BOUNDED_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,20}";

/// `additionalProperties: false` on every object schema that does not say otherwise.
fn close_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let is_object = m.get("type").is_some_and(|t| {
                t == "object"
                    || t.as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "object"))
            }) || m.contains_key("properties");
            if is_object && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (k, child) in m.iter_mut() {
                // `properties`, `$defs` and the like map names to schemas; recurse into all
                // values, except those that are data rather than schemas.
                if !matches!(k.as_str(), "enum" | "const" | "default" | "examples") {
                    close_objects(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// One sequence's grammar state. Per step: `apply_to_logits` (or `fill_bitmask`) before
/// sampling, `accept_token` after. `Send`, so it can be compiled on the caller's thread
/// and moved to the engine's.
#[derive(Clone)]
pub struct Matcher {
    inner: llguidance::Matcher,
    vocab_size: usize,
    eos_ids: Vec<u32>,
    /// The last mask computed, kept so that the engine can read it without recomputing.
    mask: SimpleVob,
    /// EOS accepted after the grammar had already finished (llguidance did not see it).
    eos_after_stop: bool,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("vocab_size", &self.vocab_size)
            .field("terminated", &self.is_terminated())
            .finish_non_exhaustive()
    }
}

impl Matcher {
    fn fail(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::InvalidRequest(format!(
            "structured output: {what}: {}",
            clean(&e.to_string())
        ))
    }

    /// Computes the set of allowed next tokens (only EOS once the grammar is complete).
    fn update_mask(&mut self) -> Result<()> {
        if self.eos_after_stop {
            return Err(self.fail("mask", "the output already ended with EOS"));
        }
        self.mask = self
            .inner
            .compute_mask_or_eos()
            .map_err(|e| self.fail("mask", e))?;
        Ok(())
    }

    /// Sets every logit of a disallowed token to -inf: ids outside the tokenizer (a logits
    /// row longer than the vocabulary) included. Does not allocate beyond llguidance's own
    /// mask. Errors (the grammar failed: over the step limits, or an internal error) leave
    /// `logits` unchanged; the engine finishes that request with an error.
    pub fn apply_to_logits(&mut self, logits: &mut [f32]) -> Result<()> {
        self.update_mask()?;
        apply_bitmask(self.mask.as_slice(), logits);
        Ok(())
    }

    /// Computes the mask into `bitmask` (bit `i % 32` of word `i / 32` set: token `i`
    /// allowed; vLLM's/xgrammar's layout), for sampling code that applies masks itself (see
    /// `apply_bitmask`). Words beyond the vocabulary are zeroed. Any `bitmask` length works:
    /// ids it cannot hold are simply not reported.
    pub fn fill_bitmask(&mut self, bitmask: &mut [u32]) -> Result<()> {
        self.update_mask()?;
        let src = self.mask.as_slice();
        let n = src.len().min(bitmask.len());
        bitmask[..n].copy_from_slice(&src[..n]);
        bitmask[n..].fill(0);
        Ok(())
    }

    /// The allowed token ids now (allocates: for tests and debugging).
    pub fn allowed_tokens(&mut self) -> Result<Vec<u32>> {
        self.update_mask()?;
        Ok(self.mask.to_list())
    }

    /// Advances over the sampled token. A token the grammar does not allow here is an
    /// error and leaves the state unchanged. EOS is allowed exactly when the grammar
    /// accepts.
    pub fn accept_token(&mut self, token: u32) -> Result<()> {
        let is_eos = self.eos_ids.contains(&token);
        if self.eos_after_stop {
            return Err(self.fail("accept", "the output already ended with EOS"));
        }
        if is_eos && self.inner.is_stopped() && !self.inner.is_error() {
            self.eos_after_stop = true;
            return Ok(());
        }
        if token as usize >= self.vocab_size {
            return Err(self.fail("accept", format!("token {token} is outside the vocabulary")));
        }
        let n = self
            .inner
            .validate_tokens(&[token])
            .map_err(|e| self.fail("accept", e))?;
        if n != 1 && !(is_eos && self.is_accepting()) {
            let text = self
                .inner
                .tok_env()
                .map(|env| env.tok_trie().token_dbg(token))
                .unwrap_or_default();
            return Err(self.fail(
                "accept",
                format!("token {token} ({text}) is not allowed by the grammar here"),
            ));
        }
        self.inner
            .consume_token(token)
            .map_err(|e| self.fail("accept", e))
    }

    /// How many of `tokens` (e.g. speculative drafts) the grammar would accept in a row
    /// from here, without changing the state.
    pub fn validate_tokens(&mut self, tokens: &[u32]) -> Result<usize> {
        self.inner
            .validate_tokens(tokens)
            .map_err(|e| self.fail("validate", e))
    }

    /// Undoes the last `n` accepted tokens (for speculative decoding).
    pub fn rollback(&mut self, mut n: usize) -> Result<()> {
        if n > 0 && self.eos_after_stop {
            self.eos_after_stop = false;
            n -= 1;
        }
        self.inner.rollback(n).map_err(|e| self.fail("rollback", e))
    }

    /// The grammar is complete: nothing but EOS may follow (or EOS was accepted). The
    /// engine may finish the request here with `finish_reason` "stop" instead of running
    /// one more step whose only allowed token is EOS.
    pub fn is_terminated(&self) -> bool {
        self.eos_after_stop || (self.inner.is_stopped() && !self.inner.is_error())
    }

    /// EOS is allowed now (the text so far is a complete match).
    pub fn is_accepting(&mut self) -> bool {
        self.is_terminated() || self.inner.is_accepting().unwrap_or(false)
    }

    /// The error that stopped this matcher, if any (it then allows nothing).
    pub fn error(&self) -> Option<String> {
        if self.inner.is_error() {
            self.inner.get_error()
        } else {
            None
        }
    }

    /// Ids the mask covers.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// Applies a `fill_bitmask` mask to one logits row: -inf where the bit is clear, and for
/// every id past the mask's end.
pub fn apply_bitmask(bitmask: &[u32], logits: &mut [f32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = bitmask.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        if bits == 0 {
            chunk.fill(f32::NEG_INFINITY);
            continue;
        }
        for (b, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmask_masks_and_pads() {
        let mut logits = vec![1.0f32; 70];
        // Tokens 0, 33 and 63 allowed; 64.. beyond the mask.
        apply_bitmask(&[1, (1 << 1) | (1 << 31)], &mut logits);
        for (i, l) in logits.iter().enumerate() {
            assert_eq!(l.is_finite(), [0, 33, 63].contains(&i), "token {i}");
        }
    }

    #[test]
    fn closes_objects_without_touching_data() {
        let mut s = json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {}},
            "b": {"type": "object", "additionalProperties": true},
            "c": {"enum": [{"type": "object"}]}}});
        close_objects(&mut s);
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["a"]["additionalProperties"], false);
        assert_eq!(s["properties"]["b"]["additionalProperties"], true);
        assert!(s["properties"]["c"]["enum"][0]
            .get("additionalProperties")
            .is_none());
    }
}
