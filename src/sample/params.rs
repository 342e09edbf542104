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
    /// Per-request seed: the same seed gives the same tokens whatever else runs.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// End-of-sequence and stop tokens are ignored until this many tokens are generated.
    pub min_tokens: usize,
    /// Keep generating after an end-of-sequence token.
    pub ignore_eos: bool,
    /// Extra token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Leave special tokens out of the text.
    pub skip_special_tokens: bool,
    /// Produce text at all (token ids only when false).
    pub detokenize: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            seed: None,
            max_tokens: 16,
            min_tokens: 0,
            ignore_eos: false,
            stop_token_ids: vec![],
            skip_special_tokens: true,
            detokenize: true,
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
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.min_tokens > self.max_tokens {
            return bad(format!(
                "min_tokens ({}) must not exceed max_tokens ({})",
                self.min_tokens, self.max_tokens
            ));
        }
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
                "stop_token_ids" => {
                    p.stop_token_ids = val
                        .as_array()
                        .ok_or_else(|| bad("`stop_token_ids` must be a list of token ids".into()))?
                        .iter()
                        .map(|x| {
                            x.as_u64().map(|x| x as u32).ok_or_else(|| {
                                bad("`stop_token_ids` must be a list of token ids".into())
                            })
                        })
                        .collect::<Result<_>>()?
                }
                other => return Err(bad(format!("unknown field `{other}`"))),
            }
        }
        p.validate()?;
        Ok(p)
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }
}
