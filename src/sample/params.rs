//! Sampling parameters with vLLM's names and meanings.

use crate::error::{Error, Result};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (-1 or 0 = off).
    pub top_k: i32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's (0 = off).
    pub min_p: f32,
    /// Subtracted from the logit of every token that occurs in the output so far (-2..2).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the output so far (-2..2).
    pub frequency_penalty: f32,
    /// Tokens of the prompt or the output so far: a positive logit is divided by it, a
    /// negative one multiplied (1 = off; must be > 0).
    pub repetition_penalty: f32,
    /// Added to the logits of these token ids (checked against the vocabulary at submission).
    pub logit_bias: Vec<(u32, f32)>,
    /// Sample only among these token ids (None = all).
    pub allowed_token_ids: Option<Vec<u32>>,
    /// Words never to generate: tokenized at submission into `bad_words_token_ids`.
    pub bad_words: Vec<String>,
    /// Token sequences never to complete: the last token of a sequence is banned when the
    /// output ends with the others. Filled from `bad_words` by `update_from_tokenizer`.
    pub bad_words_token_ids: Vec<Vec<u32>>,
    /// Per-request seed: the same seed gives the same tokens whatever else runs.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// End-of-sequence and stop tokens are ignored until this many tokens are generated.
    pub min_tokens: usize,
    /// Keep generating after an end-of-sequence token.
    pub ignore_eos: bool,
    /// Extra token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation when they appear in the text (found across token
    /// boundaries; the text is cut before them).
    pub stop: Vec<String>,
    /// Keep the stop string that ended generation in the text.
    pub include_stop_str_in_output: bool,
    /// Leave special tokens out of the text.
    pub skip_special_tokens: bool,
    /// Accepted for vLLM compatibility; has no effect: the `tokenizers` crate's decoder
    /// (as vLLM's fast-tokenizer path) joins special tokens as its decoder defines.
    pub spaces_between_special_tokens: bool,
    /// Produce text at all (token ids only when false).
    pub detokenize: bool,
    /// Return, per generated token, its logprob and rank plus the `k` most likely tokens
    /// (0..=20; -1: the whole vocabulary). None: no logprobs.
    pub logprobs: Option<i32>,
    /// The same for every prompt token after the first.
    pub prompt_logprobs: Option<i32>,
    /// Which distribution logprobs describe.
    pub logprobs_mode: LogprobsMode,
    /// Sequences returned for this prompt.
    pub n: usize,
    /// Sequences generated (>= n); the `n` with the highest cumulative logprob are
    /// returned. None: `n`.
    pub best_of: Option<usize>,
    /// Beam search with this many beams (0: off). Uses `max_tokens`, `ignore_eos` and
    /// `length_penalty`; returns `n` (<= beam_width) best beams.
    pub beam_width: usize,
    /// Beam score = cumulative logprob / (sequence length ^ length_penalty).
    pub length_penalty: f32,
    /// Constrain the output (vLLM's `structured_outputs`: json, regex, choice, grammar,
    /// json_object); compiled at submission.
    pub structured_outputs: Option<crate::structured::StructuredOutputs>,
    /// Split the text into `reasoning` and content (vLLM's reasoning parsers).
    pub reasoning_parser: Option<String>,
    /// Parse tool calls out of the text (vLLM's tool-call parsers).
    pub tool_call_parser: Option<String>,
}

/// vLLM's `logprobs_mode`: raw (model output) or processed (after logit processors,
/// penalties and temperature), as logprobs or as logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogprobsMode {
    #[default]
    RawLogprobs,
    RawLogits,
    ProcessedLogprobs,
    ProcessedLogits,
}

impl LogprobsMode {
    pub fn parse(s: &str) -> Result<LogprobsMode> {
        Ok(match s {
            "raw_logprobs" => LogprobsMode::RawLogprobs,
            "raw_logits" => LogprobsMode::RawLogits,
            "processed_logprobs" => LogprobsMode::ProcessedLogprobs,
            "processed_logits" => LogprobsMode::ProcessedLogits,
            other => {
                return Err(Error::InvalidRequest(format!(
                    "`logprobs_mode` must be raw_logprobs, raw_logits, processed_logprobs or processed_logits, got {other:?}"
                )))
            }
        })
    }

    pub fn is_processed(self) -> bool {
        matches!(
            self,
            LogprobsMode::ProcessedLogprobs | LogprobsMode::ProcessedLogits
        )
    }

    pub fn is_logits(self) -> bool {
        matches!(
            self,
            LogprobsMode::RawLogits | LogprobsMode::ProcessedLogits
        )
    }
}

/// Largest `logprobs`/`prompt_logprobs` other than -1 (as vLLM's default max_logprobs).
pub const MAX_LOGPROBS: i32 = 20;
/// Largest `n`, `best_of` and `beam_width`.
pub const MAX_SEQUENCES: usize = 256;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: vec![],
            allowed_token_ids: None,
            bad_words: vec![],
            bad_words_token_ids: vec![],
            seed: None,
            max_tokens: 16,
            min_tokens: 0,
            ignore_eos: false,
            stop_token_ids: vec![],
            stop: vec![],
            include_stop_str_in_output: false,
            skip_special_tokens: true,
            spaces_between_special_tokens: true,
            detokenize: true,
            logprobs: None,
            prompt_logprobs: None,
            logprobs_mode: LogprobsMode::RawLogprobs,
            n: 1,
            best_of: None,
            beam_width: 0,
            length_penalty: 1.0,
            structured_outputs: None,
            reasoning_parser: None,
            tool_call_parser: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Default::default()
        }
    }

    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be a non-negative number, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k < -1 {
            return bad(format!(
                "top_k must be -1 (off), 0 (off) or positive, got {}",
                self.top_k
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be a number greater than zero, got {}",
                self.repetition_penalty
            ));
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            return bad(format!(
                "logit_bias of token {id} must be a finite number, got {b}"
            ));
        }
        if self
            .allowed_token_ids
            .as_ref()
            .is_some_and(|a| a.is_empty())
        {
            return bad("allowed_token_ids must not be empty".into());
        }
        if self.bad_words.iter().any(|w| w.trim_start().is_empty()) {
            return bad("bad_words must not contain an empty string".into());
        }
        if self.bad_words_token_ids.iter().any(|w| w.is_empty()) {
            return bad("bad_words_token_ids must not contain an empty sequence".into());
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop must not contain an empty string".into());
        }
        if !self.stop.is_empty() && !self.detokenize {
            return bad("stop strings need detokenize to be true".into());
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.min_tokens > self.max_tokens {
            return bad(format!(
                "min_tokens ({}) must not exceed max_tokens ({})",
                self.min_tokens, self.max_tokens
            ));
        }
        for (name, v) in [
            ("logprobs", self.logprobs),
            ("prompt_logprobs", self.prompt_logprobs),
        ] {
            if let Some(k) = v.filter(|k| !(-1..=MAX_LOGPROBS).contains(k)) {
                return bad(format!(
                    "{name} must be -1 (whole vocabulary) or in 0..={MAX_LOGPROBS}, got {k}"
                ));
            }
        }
        if let Some(name) = &self.reasoning_parser {
            crate::output::parsers::ReasoningParser::new(name)?;
        }
        if let Some(name) = &self.tool_call_parser {
            crate::output::parsers::ToolCallParser::new(name)?;
        }
        self.validate_sequences()
    }

    /// n, best_of and beam search.
    fn validate_sequences(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if !(1..=MAX_SEQUENCES).contains(&self.n) {
            return bad(format!("n must be in 1..={MAX_SEQUENCES}, got {}", self.n));
        }
        if let Some(b) = self.best_of {
            if b < self.n || b > MAX_SEQUENCES {
                return bad(format!(
                    "best_of must be in n..={MAX_SEQUENCES} (n = {}), got {b}",
                    self.n
                ));
            }
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty must be a finite number, got {}",
                self.length_penalty
            ));
        }
        if self.beam_width > 0 {
            if self.beam_width > MAX_SEQUENCES {
                return bad(format!(
                    "beam_width must be in 1..={MAX_SEQUENCES}, got {}",
                    self.beam_width
                ));
            }
            if self.n > self.beam_width {
                return bad(format!(
                    "n ({}) must not exceed beam_width ({})",
                    self.n, self.beam_width
                ));
            }
            if self.best_of.is_some_and(|b| b != self.n) {
                return bad("best_of cannot be combined with beam search".into());
            }
            if self.structured_outputs.is_some() {
                return bad("structured_outputs cannot be combined with beam search".into());
            }
        }
        Ok(())
    }

    /// Sequences generated for the prompt (best_of, or n).
    pub fn num_sequences(&self) -> usize {
        self.best_of.unwrap_or(self.n).max(self.n)
    }

    pub fn is_beam_search(&self) -> bool {
        self.beam_width > 0
    }

    /// Whether the runner must compute the sampled token's logprob (for `logprobs`, or the
    /// cumulative logprob that ranks best_of candidates).
    pub fn needs_sample_logprob(&self) -> bool {
        self.logprobs.is_some() || self.num_sequences() > self.n
    }

    /// Checks the token ids the fields name against a vocabulary of `vocab_size` tokens
    /// (done at submission, where the model is known).
    pub fn validate_token_ids(&self, vocab_size: usize) -> Result<()> {
        let out = |t: u32| t as usize >= vocab_size;
        let bad = |field: &str, t: u32| {
            Err(Error::InvalidRequest(format!(
                "{field}: token id {t} is out of range (vocabulary size {vocab_size})"
            )))
        };
        if let Some(&(t, _)) = self.logit_bias.iter().find(|(t, _)| out(*t)) {
            return bad("logit_bias", t);
        }
        if let Some(&t) = self.allowed_token_ids.iter().flatten().find(|&&t| out(t)) {
            return bad("allowed_token_ids", t);
        }
        if let Some(&t) = self.bad_words_token_ids.iter().flatten().find(|&&t| out(t)) {
            return bad("bad_words", t);
        }
        if !self.bad_words.is_empty() && self.bad_words_token_ids.is_empty() {
            return Err(Error::InvalidRequest(
                "bad_words must be tokenized before submission (SamplingParams::update_from_tokenizer)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Tokenizes `bad_words` into `bad_words_token_ids` as vLLM does: each word (leading
    /// spaces stripped) without and with a leading space, the latter kept when it gives a
    /// different first token and as many tokens. Nothing to do without bad words.
    pub fn update_from_tokenizer(&mut self, tokenizer: &crate::model::Tokenizer) -> Result<()> {
        if self.bad_words.is_empty() {
            return Ok(());
        }
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        for word in &self.bad_words {
            let word = word.trim_start();
            let plain = tokenizer.encode(word, false)?;
            if plain.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "bad_words: {word:?} gives no tokens"
                )));
            }
            let spaced = tokenizer.encode(&format!(" {word}"), false)?;
            let keep_spaced =
                !spaced.is_empty() && spaced[0] != plain[0] && spaced.len() == plain.len();
            seqs.push(plain);
            if keep_spaced {
                seqs.push(spaced);
            }
        }
        self.bad_words_token_ids = seqs;
        Ok(())
    }

    /// vLLM's sampling fields from a JSON object (null: defaults); unknown fields and
    /// wrong types are errors naming the field; the result is validated.
    pub fn from_json(v: &Value) -> Result<SamplingParams> {
        let bad = |m: String| Error::InvalidRequest(m);
        let obj = match v {
            Value::Null => return Ok(SamplingParams::default()),
            Value::Object(o) => o,
            _ => return Err(bad("`sampling` must be an object".into())),
        };
        let mut p = SamplingParams::default();
        for (k, val) in obj {
            let num = || {
                val.as_f64()
                    .ok_or_else(|| bad(format!("`{k}` must be a number")))
            };
            let uint = || {
                val.as_u64()
                    .ok_or_else(|| bad(format!("`{k}` must be a non-negative integer")))
            };
            let boolean = || {
                val.as_bool()
                    .ok_or_else(|| bad(format!("`{k}` must be true or false")))
            };
            match k.as_str() {
                "temperature" => p.temperature = num()? as f32,
                "top_p" => p.top_p = num()? as f32,
                "min_p" => p.min_p = num()? as f32,
                "presence_penalty" => p.presence_penalty = num()? as f32,
                "frequency_penalty" => p.frequency_penalty = num()? as f32,
                "repetition_penalty" => p.repetition_penalty = num()? as f32,
                "logit_bias" => {
                    let msg = || {
                        bad("`logit_bias` must be an object mapping token ids to numbers".into())
                    };
                    let o = val.as_object().ok_or_else(msg)?;
                    p.logit_bias = o
                        .iter()
                        .map(|(id, b)| {
                            let id: u32 = id.trim().parse().map_err(|_| {
                                bad(format!("`logit_bias` key {id:?} is not a token id"))
                            })?;
                            Ok((id, b.as_f64().ok_or_else(msg)? as f32))
                        })
                        .collect::<Result<_>>()?;
                    p.logit_bias.sort_unstable_by_key(|&(id, _)| id);
                }
                "allowed_token_ids" => {
                    p.allowed_token_ids = match val {
                        Value::Null => None,
                        _ => Some(id_list(k, val)?),
                    }
                }
                "bad_words" => p.bad_words = string_list(k, val)?,
                "stop" => {
                    p.stop = match val {
                        Value::String(s) => vec![s.clone()],
                        _ => string_list(k, val)?,
                    }
                }
                "include_stop_str_in_output" => p.include_stop_str_in_output = boolean()?,
                "spaces_between_special_tokens" => p.spaces_between_special_tokens = boolean()?,
                "top_k" => {
                    p.top_k =
                        val.as_i64()
                            .ok_or_else(|| bad("`top_k` must be an integer".into()))?
                            .clamp(i32::MIN as i64, i32::MAX as i64) as i32
                }
                "seed" => p.seed = Some(uint()?),
                "max_tokens" => p.max_tokens = uint()?.min(usize::MAX as u64) as usize,
                "min_tokens" => p.min_tokens = uint()? as usize,
                "ignore_eos" => p.ignore_eos = boolean()?,
                "skip_special_tokens" => p.skip_special_tokens = boolean()?,
                "detokenize" => p.detokenize = boolean()?,
                "stop_token_ids" => p.stop_token_ids = id_list(k, val)?,
                "logprobs" => p.logprobs = logprobs_k(k, val)?,
                "prompt_logprobs" => p.prompt_logprobs = logprobs_k(k, val)?,
                "logprobs_mode" => {
                    let s = val
                        .as_str()
                        .ok_or_else(|| bad("`logprobs_mode` must be a string".into()))?;
                    p.logprobs_mode = LogprobsMode::parse(s)?;
                }
                "n" => p.n = uint()?.min(u32::MAX as u64) as usize,
                "best_of" => {
                    p.best_of = match val {
                        Value::Null => None,
                        _ => Some(uint()?.min(u32::MAX as u64) as usize),
                    }
                }
                "beam_width" => p.beam_width = uint()?.min(u32::MAX as u64) as usize,
                "length_penalty" => p.length_penalty = num()? as f32,
                "structured_outputs" => {
                    p.structured_outputs = match val {
                        Value::Null => None,
                        _ => Some(crate::structured::StructuredOutputs::from_json(val)?),
                    }
                }
                "reasoning_parser" => p.reasoning_parser = opt_string(k, val)?,
                "tool_call_parser" => p.tool_call_parser = opt_string(k, val)?,
                other => return Err(bad(format!("unknown field `{other}`"))),
            }
        }
        p.validate()?;
        Ok(p)
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }

    /// Whether any penalty is on (the runner then keeps output token counts).
    pub fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
    }
}

/// A string field that may be null.
fn opt_string(field: &str, v: &Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(Error::InvalidRequest(format!("`{field}` must be a string"))),
    }
}

/// `logprobs`/`prompt_logprobs`: null, -1 or a count (range checked by `validate`).
fn logprobs_k(field: &str, v: &Value) -> Result<Option<i32>> {
    if v.is_null() {
        return Ok(None);
    }
    v.as_i64()
        .map(|k| Some(k.clamp(i32::MIN as i64, i32::MAX as i64) as i32))
        .ok_or_else(|| Error::InvalidRequest(format!("`{field}` must be an integer or null")))
}

fn id_list(field: &str, v: &Value) -> Result<Vec<u32>> {
    let msg = || Error::InvalidRequest(format!("`{field}` must be a list of token ids"));
    v.as_array()
        .ok_or_else(msg)?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(msg)
        })
        .collect()
}

fn string_list(field: &str, v: &Value) -> Result<Vec<String>> {
    let msg = || Error::InvalidRequest(format!("`{field}` must be a list of strings"));
    v.as_array()
        .ok_or_else(msg)?
        .iter()
        .map(|x| x.as_str().map(str::to_string).ok_or_else(msg))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        match SamplingParams::from_json(&v) {
            Err(Error::InvalidRequest(m)) => m,
            other => panic!("expected an error for {v}, got {other:?}"),
        }
    }

    #[test]
    fn the_sampling_fields_parse() {
        let p = SamplingParams::from_json(&json!({
            "min_p": 0.1, "presence_penalty": -0.5, "frequency_penalty": 1.5,
            "repetition_penalty": 1.2, "logit_bias": {"7": 2.5, "3": -100},
            "allowed_token_ids": [1, 2, 3], "bad_words": ["foo bar"], "min_tokens": 2,
            "stop": ["\n\n", "END"], "include_stop_str_in_output": true,
            "spaces_between_special_tokens": false,
        }))
        .unwrap();
        assert_eq!(p.min_p, 0.1);
        assert_eq!((p.presence_penalty, p.frequency_penalty), (-0.5, 1.5));
        assert_eq!(p.repetition_penalty, 1.2);
        assert_eq!(p.logit_bias, vec![(3, -100.0), (7, 2.5)]);
        assert_eq!(p.allowed_token_ids, Some(vec![1, 2, 3]));
        assert_eq!(p.bad_words, ["foo bar"]);
        assert_eq!(p.stop, ["\n\n", "END"]);
        assert!(p.include_stop_str_in_output && !p.spaces_between_special_tokens);
        // `stop` may be one string, as in vLLM.
        let p = SamplingParams::from_json(&json!({"stop": "x"})).unwrap();
        assert_eq!(p.stop, ["x"]);
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (json!({"min_p": 1.5}), "min_p"),
            (json!({"min_p": -0.1}), "min_p"),
            (json!({"min_p": "a"}), "min_p"),
            (json!({"presence_penalty": 2.5}), "presence_penalty"),
            (json!({"presence_penalty": -3}), "presence_penalty"),
            (json!({"frequency_penalty": -2.01}), "frequency_penalty"),
            (json!({"frequency_penalty": true}), "frequency_penalty"),
            (json!({"repetition_penalty": 0}), "repetition_penalty"),
            (json!({"repetition_penalty": -1}), "repetition_penalty"),
            (json!({"logit_bias": [1, 2]}), "logit_bias"),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (json!({"logit_bias": {"-1": 1}}), "logit_bias"),
            (json!({"logit_bias": {"1": "a"}}), "logit_bias"),
            (json!({"allowed_token_ids": []}), "allowed_token_ids"),
            (json!({"allowed_token_ids": [1, -1]}), "allowed_token_ids"),
            (json!({"allowed_token_ids": 3}), "allowed_token_ids"),
            (json!({"bad_words": "x"}), "bad_words"),
            (json!({"bad_words": [""]}), "bad_words"),
            (json!({"bad_words": [1]}), "bad_words"),
            (json!({"stop": [""]}), "stop"),
            (json!({"stop": [1]}), "stop"),
            (json!({"stop": ["a"], "detokenize": false}), "stop"),
            (
                json!({"include_stop_str_in_output": 1}),
                "include_stop_str_in_output",
            ),
            (
                json!({"spaces_between_special_tokens": "no"}),
                "spaces_between_special_tokens",
            ),
            (json!({"min_tokens": 5, "max_tokens": 4}), "min_tokens"),
            (json!({"stop_token_ids": [4294967296u64]}), "stop_token_ids"),
        ];
        for (v, field) in cases {
            let m = err(v.clone());
            assert!(m.contains(field), "{v}: {m:?} does not name {field}");
        }
    }

    #[test]
    fn token_ids_are_checked_against_the_vocabulary() {
        let ok = SamplingParams {
            logit_bias: vec![(9, 1.0)],
            allowed_token_ids: Some(vec![0, 9]),
            bad_words_token_ids: vec![vec![1, 9]],
            ..Default::default()
        };
        ok.validate_token_ids(10).unwrap();
        for (p, field) in [
            (
                SamplingParams {
                    logit_bias: vec![(10, 1.0)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    allowed_token_ids: Some(vec![3, 10]),
                    ..Default::default()
                },
                "allowed_token_ids",
            ),
            (
                SamplingParams {
                    bad_words_token_ids: vec![vec![12]],
                    ..Default::default()
                },
                "bad_words",
            ),
            (
                SamplingParams {
                    bad_words: vec!["x".into()],
                    ..Default::default()
                },
                "bad_words",
            ),
        ] {
            match p.validate_token_ids(10) {
                Err(Error::InvalidRequest(m)) => assert!(m.contains(field), "{m}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
