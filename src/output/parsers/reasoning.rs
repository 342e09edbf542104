//! Reasoning parsers, as vLLM's `--reasoning-parser`: split a reasoning model's output
//! into `reasoning_content` (the thinking between a start and an end tag) and `content`.
//!
//! All the parsers here are tag parsers; they differ in where the output starts:
//!
//! - `deepseek_r1`: `<think>` / `</think>`, and the output starts *inside* the reasoning.
//!   DeepSeek-R1's chat template (and QwQ's) ends the prompt with `<think>\n`, so the model
//!   often never writes the start tag: everything before the first `</think>` is reasoning,
//!   and a `<think>` written before it is dropped. With no `</think>` at all the whole
//!   output is reasoning (a truncated thought), as vLLM's `BaseThinkingReasoningParser`.
//!   Unlike vLLM, text before a `<think>` is kept as reasoning rather than dropped.
//! - `qwen3`: `<think>` / `</think>`, and the output starts as content: reasoning begins
//!   only at a `<think>` in the output (with `enable_thinking=False` the template puts an
//!   empty think block in the prompt, and the output is plain content). This is vLLM's
//!   `Qwen3ReasoningParser` rule "no start tag means no reasoning"; so a `</think>` with no
//!   `<think>` before it is content too. Models whose template writes `<think>` into the
//!   prompt (Qwen3-*-Thinking-2507) want `deepseek_r1` instead. One difference from vLLM's
//!   non-streaming Qwen3 parser, which needs both tags: `<think>` without `</think>` is a
//!   truncated thought here (reasoning), as vLLM's streaming path treats it, because a
//!   stream cannot take back reasoning already sent once it finds no end tag.
//! - `ReasoningParser::with_tags(start, end)`: any tag pair, `qwen3` style; add
//!   `.starts_in_reasoning(true)` for the `deepseek_r1` style.
//!
//! Only the first start tag and the first end tag count; later tags are content text.
//! Streaming (`push`/`finish`) holds back only a tail that may still become a tag
//! (`"</th"` waiting for `"ink>"`), and for any split of a text into deltas the streamed
//! pieces concatenate to what `extract` returns: `extract` is the same state machine run
//! over the whole text at once.

use serde::Serialize;

use super::scan::{scan, Scan};
use crate::error::{Error, Result};

/// The reasoning parser names `ReasoningParser::new` accepts.
pub const REASONING_PARSERS: &[&str] = &["deepseek_r1", "qwen3"];

/// The text a streamed delta adds to each field; either may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReasoningDelta {
    pub reasoning: String,
    pub content: String,
}

impl ReasoningDelta {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }

    fn append(&mut self, other: ReasoningDelta) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
    }
}

/// Where the parser is in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Content until a start tag.
    BeforeStart,
    /// Reasoning until the end tag; a start tag not yet seen is dropped if it comes.
    Reasoning { start_seen: bool },
    /// Content to the end.
    Content,
}

#[derive(Debug, Clone)]
pub struct ReasoningParser {
    start: String,
    end: String,
    initial: Phase,
    phase: Phase,
    /// Text received but not emitted: a possible tag prefix.
    held: String,
}

impl ReasoningParser {
    /// A parser by vLLM's name (`REASONING_PARSERS`).
    pub fn new(name: &str) -> Result<ReasoningParser> {
        match name {
            "deepseek_r1" => Ok(Self::with_tags("<think>", "</think>")?.starts_in_reasoning(true)),
            "qwen3" => Self::with_tags("<think>", "</think>"),
            _ => Err(Error::InvalidRequest(format!(
                "unknown reasoning parser {name:?} (known: {})",
                REASONING_PARSERS.join(", ")
            ))),
        }
    }

    /// A parser for reasoning between `start` and `end`, with the output starting as
    /// content. Empty tags are an error.
    pub fn with_tags(start: &str, end: &str) -> Result<ReasoningParser> {
        if start.is_empty() || end.is_empty() {
            return Err(Error::InvalidRequest(
                "reasoning tags must not be empty".to_string(),
            ));
        }
        Ok(ReasoningParser {
            start: start.to_string(),
            end: end.to_string(),
            initial: Phase::BeforeStart,
            phase: Phase::BeforeStart,
            held: String::new(),
        })
    }

    /// Whether the output starts inside the reasoning (the prompt opened it), as
    /// `deepseek_r1`. Resets the streaming state.
    pub fn starts_in_reasoning(mut self, yes: bool) -> ReasoningParser {
        self.initial = if yes {
            Phase::Reasoning { start_seen: false }
        } else {
            Phase::BeforeStart
        };
        self.reset();
        self
    }

    /// Splits a whole output into (reasoning_content, content); an empty part is None.
    pub fn extract(&self, text: &str) -> (Option<String>, Option<String>) {
        let mut fresh = self.clone();
        fresh.reset();
        let mut all = fresh.push(text);
        all.append(fresh.finish());
        let some = |s: String| (!s.is_empty()).then_some(s);
        (some(all.reasoning), some(all.content))
    }

    /// Adds streamed text; returns what can be told apart now.
    pub fn push(&mut self, delta: &str) -> ReasoningDelta {
        self.held.push_str(delta);
        self.advance(false)
    }

    /// The end of the output: flushes held text (a tag prefix that never completed is
    /// text). The parser then stays at the end; `reset` starts a new output.
    pub fn finish(&mut self) -> ReasoningDelta {
        self.advance(true)
    }

    /// Back to the start of an output.
    pub fn reset(&mut self) {
        self.phase = self.initial;
        self.held.clear();
    }

    /// Emits all of `held` that is decided, leaving a possible tag prefix.
    fn advance(&mut self, at_end: bool) -> ReasoningDelta {
        let buf = std::mem::take(&mut self.held);
        let mut out = ReasoningDelta::default();
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            if self.phase == Phase::Content {
                out.content.push_str(rest);
                pos = buf.len();
                break;
            }
            let tags = self.tags();
            let sink = match self.phase {
                Phase::BeforeStart => &mut out.content,
                _ => &mut out.reasoning,
            };
            match scan(rest, &tags, at_end) {
                Scan::Clear => {
                    sink.push_str(rest);
                    pos = buf.len();
                }
                Scan::Partial { at } => {
                    sink.push_str(&rest[..at]);
                    pos += at;
                    break;
                }
                Scan::Found { at, tag } => {
                    sink.push_str(&rest[..at]);
                    pos += at + tags[tag].len();
                    self.phase = self.after_tag(tags[tag] == self.end);
                }
            }
        }
        self.held = buf[pos..].to_string();
        out
    }

    /// The tags that change the phase, in priority order.
    fn tags(&self) -> Vec<&str> {
        match self.phase {
            Phase::BeforeStart => vec![self.start.as_str()],
            Phase::Reasoning { start_seen: false } => vec![self.end.as_str(), self.start.as_str()],
            Phase::Reasoning { start_seen: true } => vec![self.end.as_str()],
            Phase::Content => Vec::new(),
        }
    }

    fn after_tag(&self, is_end: bool) -> Phase {
        if is_end && self.phase != Phase::BeforeStart {
            Phase::Content
        } else {
            Phase::Reasoning { start_seen: true }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(r: Option<&str>, c: Option<&str>) -> (Option<String>, Option<String>) {
        (r.map(str::to_string), c.map(str::to_string))
    }

    #[test]
    fn deepseek_r1_without_start_tag() {
        let p = ReasoningParser::new("deepseek_r1").unwrap();
        let out = "Okay, 2 + 2 is 4.\n</think>\n\nThe answer is **4**.";
        assert_eq!(
            p.extract(out),
            parts(
                Some("Okay, 2 + 2 is 4.\n"),
                Some("\n\nThe answer is **4**.")
            )
        );
    }

    #[test]
    fn deepseek_r1_with_start_tag_and_truncated() {
        let p = ReasoningParser::new("deepseek_r1").unwrap();
        assert_eq!(
            p.extract("<think>\nHmm.\n</think>\n\nHello!"),
            parts(Some("\nHmm.\n"), Some("\n\nHello!"))
        );
        assert_eq!(
            p.extract("<think>Still going"),
            parts(Some("Still going"), None)
        );
        assert_eq!(
            p.extract("No tags at all"),
            parts(Some("No tags at all"), None)
        );
        assert_eq!(
            p.extract("</think>Just content"),
            parts(None, Some("Just content"))
        );
        // Only the first end tag counts.
        assert_eq!(
            p.extract("a</think>b</think>c"),
            parts(Some("a"), Some("b</think>c"))
        );
    }

    #[test]
    fn qwen3_needs_start_tag() {
        let p = ReasoningParser::new("qwen3").unwrap();
        assert_eq!(
            p.extract("<think>\nThe user wants Paris.\n</think>\n\nParis."),
            parts(Some("\nThe user wants Paris.\n"), Some("\n\nParis."))
        );
        assert_eq!(
            p.extract("Paris is the capital."),
            parts(None, Some("Paris is the capital."))
        );
        assert_eq!(p.extract("x</think>y"), parts(None, Some("x</think>y")));
        assert_eq!(p.extract("<think>cut off"), parts(Some("cut off"), None));
        assert_eq!(p.extract("<think></think>"), parts(None, None));
        assert_eq!(
            p.extract("pre<think>r</think>post"),
            parts(Some("r"), Some("prepost"))
        );
    }

    #[test]
    fn generic_tags() {
        let p = ReasoningParser::with_tags("<seed:think>", "</seed:think>").unwrap();
        assert_eq!(
            p.extract("<seed:think>plan</seed:think>do"),
            parts(Some("plan"), Some("do"))
        );
        let p = p.starts_in_reasoning(true);
        assert_eq!(
            p.extract("plan</seed:think>do"),
            parts(Some("plan"), Some("do"))
        );
        assert!(ReasoningParser::with_tags("", "</x>").is_err());
    }

    #[test]
    fn unknown_name_is_named_in_error() {
        let err = ReasoningParser::new("granite9").unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)));
        assert!(err.to_string().contains("granite9"), "{err}");
    }

    #[test]
    fn streaming_holds_back_only_tag_prefixes() {
        let mut p = ReasoningParser::new("deepseek_r1").unwrap();
        let d = p.push("thinking </th");
        assert_eq!(
            (d.reasoning.as_str(), d.content.as_str()),
            ("thinking ", "")
        );
        let d = p.push("ink>ans");
        assert_eq!((d.reasoning.as_str(), d.content.as_str()), ("", "ans"));
        let d = p.push("wer </th");
        assert_eq!(d.content, "wer </th", "after the end tag nothing is held");
        assert!(p.finish().is_empty());

        let mut p = ReasoningParser::new("qwen3").unwrap();
        assert_eq!(p.push("a <").content, "a ");
        assert_eq!(p.push("b").content, "<b");
        assert_eq!(p.push("<thi").content, "");
        assert_eq!(
            p.finish().content,
            "<thi",
            "an unfinished tag is text at the end"
        );
    }

    #[test]
    fn reset_starts_a_new_output() {
        let mut p = ReasoningParser::new("deepseek_r1").unwrap();
        p.push("x</think>y");
        p.reset();
        assert_eq!(p.push("z").reasoning, "z");
    }
}
