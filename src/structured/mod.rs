//! Structured outputs (vLLM's `structured_outputs`): JSON Schema, JSON object, regex,
//! choice and grammar (Lark or GBNF) constraints, enforced with llguidance token masks.
//!
//! - [`StructuredOutputs`] is the request field, read by [`StructuredOutputs::from_json`].
//! - [`GrammarCompiler`] is built once per engine from the model's tokenizer, its EOS ids
//!   and its `vocab_size` (the logits row length).
//! - [`Matcher`] is one sequence's state: it masks a logits row and advances over each
//!   sampled token.
//!
//! How the engine uses it:
//! 1. At submission, on the caller's thread (`Engine::add_request` and the C API), a
//!    request with `structured_outputs` is compiled: `compiler.compile(&spec)?`. A bad
//!    schema, regex or grammar is `Error::InvalidRequest` there, before the request is
//!    queued, so the engine thread never compiles. The `Matcher` travels with the request.
//! 2. Every step in which the sequence samples, the sampler applies, in vLLM's order:
//!    logit processors (allowed ids, bad words, min_tokens, logit_bias), penalties, then
//!    `matcher.apply_to_logits(row)` (disallowed ids to -inf), then temperature, min_p,
//!    top_k, top_p and the draw. Logprobs stay those of the raw logits unless
//!    `logprobs_mode` says otherwise. Sampling code that batches the work can instead call
//!    `fill_bitmask` per sequence (in parallel: matchers are independent) and
//!    [`apply_bitmask`] per row. A mask costs ~0.04 ms (median; mean ~0.1 ms, worst
//!    ~2 ms) for a small JSON schema on SmolLM2's 49k vocabulary (`tests/structured.rs`
//!    prints it).
//! 3. After sampling, `matcher.accept_token(token)`. EOS is allowed exactly while the text
//!    is a complete match. Once `is_terminated()` the grammar is complete and only EOS may
//!    follow: the engine finishes the request there with `finish_reason` "stop" (as if EOS
//!    had been sampled) rather than spend a step, so `ignore_eos` and `min_tokens` (which
//!    mask EOS) can never leave a row with no allowed token. An error from
//!    `apply_to_logits` or `accept_token` finishes that request with `finish_reason`
//!    "error"; the rest of the batch goes on.
//! 4. `n > 1` forks clone the matcher with the sequence; a preempted request keeps its
//!    matcher (its accepted tokens are kept too). `rollback(k)` undoes accepted tokens for
//!    speculative decoding, and `validate_tokens` checks drafts without advancing.
//!
//! Compilation is bounded by [`StructuredLimits`] (llguidance's fuel and size limits); so
//! is each mask, which fails with an error rather than run long.

mod gbnf;
mod matcher;
mod spec;
mod vocab;

pub use gbnf::{gbnf_to_lark, is_gbnf};
pub use matcher::{apply_bitmask, GrammarCompiler, Matcher, StructuredLimits};
pub use spec::{OutputConstraint, StructuredOutputs};

use crate::error::{Error, Result};
use crate::model::Tokenizer;
use std::sync::OnceLock;

/// An engine's grammar compiler, built on the first constrained request (building the
/// token trie of a 49k vocabulary takes a few hundred milliseconds) and then shared by
/// every submitting thread.
pub struct LazyCompiler {
    tokenizer: Tokenizer,
    eos_token_ids: Vec<u32>,
    vocab_size: usize,
    compiler: OnceLock<std::result::Result<GrammarCompiler, String>>,
}

impl LazyCompiler {
    pub fn new(tokenizer: Tokenizer, eos_token_ids: Vec<u32>, vocab_size: usize) -> Self {
        LazyCompiler {
            tokenizer,
            eos_token_ids,
            vocab_size,
            compiler: OnceLock::new(),
        }
    }

    /// Compiles a request's constraint; errors name the field and carry the parser's message.
    pub fn compile(&self, spec: &StructuredOutputs) -> Result<Matcher> {
        let compiler = self.compiler.get_or_init(|| {
            GrammarCompiler::new(&self.tokenizer, &self.eos_token_ids, self.vocab_size)
                .map_err(|e| e.to_string())
        });
        match compiler {
            Ok(c) => c.compile(spec),
            Err(e) => Err(Error::InvalidRequest(format!(
                "structured outputs are unavailable for this model: {e}"
            ))),
        }
    }
}
