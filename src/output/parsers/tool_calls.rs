//! Tool-call parsers, as vLLM's `--tool-call-parser`: find the function calls a model
//! wrote in its output and return them in OpenAI's shape, with the rest as content.
//!
//! Formats (the text syntax lives in `json_calls` and `pythonic`):
//! - `hermes` (Hermes, Qwen2.5/Qwen3): `<tool_call>{"name": .., "arguments": {..}}</tool_call>`
//!   blocks anywhere in the text, any number of them.
//! - `llama3_json` (alias `llama4_json`): the output starts (after optional whitespace and
//!   `<|python_tag|>`) with `{"name": .., "parameters"|"arguments": {..}}` objects
//!   separated by `;`.
//! - `mistral`: `[TOOL_CALLS]` then a JSON array of `{"name", "arguments"}` (tokenizers
//!   before v11), or `[TOOL_CALLS]name[ARGS]{..}` / `[TOOL_CALLS]name{..}` per call (v11+).
//! - `pythonic` (alias `llama4_pythonic`): the output starts with a Python list of calls,
//!   `[f(a=1, b="x"), g()]`, optionally inside `<|python_start|>`..`<|python_end|>`.
//!
//! Semantics shared by all formats, chosen so that streaming and non-streaming agree for
//! any split of the text into deltas (`extract` is the streaming machine run once):
//! - Text outside tool calls is content, before and after them (vLLM's streaming path;
//!   its non-streaming path keeps only the text before the first call). Whitespace right
//!   after a call is dropped, so the newlines between `</tool_call>` blocks are not content.
//! - A tool call that does not parse is content, as written, and only that call: vLLM
//!   turns the whole output into content instead, which a stream that has already sent
//!   earlier calls cannot do. A call cut off by the end of the output is content, except a
//!   Hermes block whose `</tool_call>` is missing but whose JSON is whole (as vLLM).
//! - Arguments are the model's JSON re-serialised compactly (key order kept); a string
//!   holding a JSON object is unwrapped, as vLLM does.
//! - Streaming buffers each tool call and, once it is whole, emits one chunk with its
//!   index, id and name (arguments "") and one with all its arguments; content outside
//!   calls streams at once, holding back only a possible marker prefix.
//! - Ids are `call_` + 24 alphanumerics (OpenAI's shape), derived from a per-parser random
//!   seed and the call's index, so `extract` and a stream on the same parser agree. Mistral
//!   ids are 9 alphanumerics: Mistral's chat templates reject any other id when the call is
//!   sent back in the conversation.

use serde::Serialize;

use super::json_calls;
use super::pythonic;
use super::scan::ws_len;
use crate::error::{Error, Result};

/// The tool-call parser names `ToolCallParser::new` accepts.
pub const TOOL_CALL_PARSERS: &[&str] = &[
    "hermes",
    "llama3_json",
    "llama4_json",
    "mistral",
    "pythonic",
    "llama4_pythonic",
];

/// One function call, in OpenAI's `tool_calls[i]` shape (`type` is always "function").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// The result of parsing a whole output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExtractedToolCalls {
    pub tools_called: bool,
    pub tool_calls: Vec<ToolCall>,
    /// The text outside tool calls; None when empty.
    pub content: Option<String>,
}

/// One streamed piece of a tool call, as OpenAI's `delta.tool_calls[]` entries: the first
/// piece of each index carries the id and name, the later ones argument text to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCallChunk {
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// What one streamed delta adds: content text and tool-call pieces, either may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ToolCallDelta {
    pub content: String,
    pub tool_calls: Vec<ToolCallChunk>,
}

impl ToolCallDelta {
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.tool_calls.is_empty()
    }
}

/// A parsed call before it gets an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawCall {
    pub name: String,
    pub arguments: String,
}

/// Where a start-anchored format (llama3_json, pythonic) is; the others ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Nothing decided yet: the output may still open with tool calls.
    Start,
    /// Just after a call: a separator or closing marker may follow.
    AfterCall,
    /// Plain content to the end.
    Text,
}

/// What a format decides about the front of the unparsed text.
#[derive(Debug)]
pub(super) enum Step {
    /// The first n bytes are content.
    Content(usize),
    /// The first n bytes are tool-call text, parsed into these calls.
    Calls(usize, Vec<RawCall>),
    /// The first n bytes are markup to drop.
    Skip(usize),
    /// Undecided until more text arrives (never returned at the end of the text).
    Wait,
    /// Inside a tool call that only one of these characters can close. Every decision a
    /// step makes stays the same when more text is appended (a whole call stays whole,
    /// a broken one broken), so retrying later changes when output appears, never what
    /// it is; the machine skips retries that cannot succeed, which keeps a long call from
    /// being re-parsed on every delta.
    WaitClose(&'static [char]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Hermes,
    Llama3Json,
    Mistral,
    Pythonic,
}

impl Format {
    fn by_name(name: &str) -> Option<Format> {
        Some(match name {
            "hermes" => Format::Hermes,
            "llama3_json" | "llama4_json" => Format::Llama3Json,
            "mistral" => Format::Mistral,
            "pythonic" | "llama4_pythonic" => Format::Pythonic,
            _ => return None,
        })
    }

    fn step(self, phase: &mut Phase, buf: &str, at_end: bool) -> Step {
        match self {
            Format::Hermes => json_calls::hermes_step(buf, at_end),
            Format::Llama3Json => json_calls::llama3_step(phase, buf, at_end),
            Format::Mistral => json_calls::mistral_step(buf, at_end),
            Format::Pythonic => pythonic::pythonic_step(phase, buf, at_end),
        }
    }
}

/// The output of the segmenting machine, in text order.
enum Piece {
    Content(String),
    Call(RawCall),
}

/// The streaming state: unparsed text and where the format is.
#[derive(Debug, Clone)]
struct Machine {
    format: Format,
    phase: Phase,
    buf: String,
    /// Drop whitespace until the next non-whitespace character.
    after_call: bool,
    /// Set while waiting inside a call: what new text must hold for a retry to be worth it.
    retry: Option<Retry>,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    /// A character that may close the call.
    on: &'static [char],
    /// The buffer length at the last try: retry anyway once it has doubled, so that a
    /// call that broke early is found out in bounded time and total work stays linear.
    tried_len: usize,
}

impl Machine {
    fn new(format: Format) -> Machine {
        Machine {
            format,
            phase: Phase::Start,
            buf: String::new(),
            after_call: false,
            retry: None,
        }
    }

    fn push(&mut self, delta: &str, out: &mut Vec<Piece>) {
        self.buf.push_str(delta);
        let worth_it = match self.retry {
            Some(r) => delta.contains(r.on) || self.buf.len() >= 2 * r.tried_len,
            None => true,
        };
        if worth_it {
            self.advance(false, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<Piece>) {
        self.advance(true, out);
    }

    /// Consumes every decided prefix of `buf`.
    fn advance(&mut self, at_end: bool, out: &mut Vec<Piece>) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut pos = 0;
        self.retry = None;
        while pos < buf.len() {
            if self.after_call {
                pos += ws_len(&buf[pos..]);
                if pos == buf.len() {
                    break;
                }
                self.after_call = false;
            }
            let rest = &buf[pos..];
            match self.format.step(&mut self.phase, rest, at_end) {
                Step::Wait if !at_end => break,
                Step::WaitClose(on) if !at_end => {
                    let tried_len = rest.len();
                    self.retry = Some(Retry { on, tried_len });
                    break;
                }
                Step::Content(n) if valid_len(rest, n) => {
                    out.push(Piece::Content(rest[..n].to_string()));
                    pos += n;
                }
                Step::Calls(n, calls) if valid_len(rest, n) => {
                    out.extend(calls.into_iter().map(Piece::Call));
                    self.after_call = true;
                    pos += n;
                }
                Step::Skip(n) if valid_len(rest, n) => pos += n,
                // A step that would not make progress (a bug): the rest is content, so
                // the loop always ends and nothing is lost.
                _ => {
                    out.push(Piece::Content(rest.to_string()));
                    self.phase = Phase::Text;
                    pos = buf.len();
                }
            }
        }
        buf.drain(..pos);
        self.buf = buf;
    }
}

fn valid_len(rest: &str, n: usize) -> bool {
    n > 0 && n <= rest.len() && rest.is_char_boundary(n)
}

#[derive(Debug, Clone)]
pub struct ToolCallParser {
    name: &'static str,
    format: Format,
    id_seed: u64,
    machine: Machine,
    /// Calls emitted so far in this output: the next call's index.
    calls: usize,
}

impl ToolCallParser {
    /// A parser by vLLM's name (`TOOL_CALL_PARSERS`), with a random id seed. Use one
    /// parser per output (or `reset` between outputs).
    pub fn new(name: &str) -> Result<ToolCallParser> {
        let known = TOOL_CALL_PARSERS.iter().find(|&&n| n == name);
        let Some((name, format)) = known.and_then(|&n| Some((n, Format::by_name(n)?))) else {
            return Err(Error::InvalidRequest(format!(
                "unknown tool call parser {name:?} (known: {})",
                TOOL_CALL_PARSERS.join(", ")
            )));
        };
        Ok(ToolCallParser {
            name,
            format,
            id_seed: rand::random(),
            machine: Machine::new(format),
            calls: 0,
        })
    }

    /// Fixes the seed the call ids derive from (for reproducible ids).
    pub fn with_id_seed(mut self, seed: u64) -> ToolCallParser {
        self.id_seed = seed;
        self
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Parses a whole output. Independent of any streaming in progress.
    pub fn extract(&self, text: &str) -> ExtractedToolCalls {
        let mut machine = Machine::new(self.format);
        let mut pieces = Vec::new();
        machine.push(text, &mut pieces);
        machine.finish(&mut pieces);
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Content(text) => content.push_str(&text),
                Piece::Call(call) => tool_calls.push(ToolCall {
                    id: self.call_id(tool_calls.len()),
                    name: call.name,
                    arguments: call.arguments,
                }),
            }
        }
        ExtractedToolCalls {
            tools_called: !tool_calls.is_empty(),
            tool_calls,
            content: (!content.is_empty()).then_some(content),
        }
    }

    /// Adds streamed text; returns the content and tool-call pieces decided now.
    pub fn push(&mut self, delta: &str) -> ToolCallDelta {
        let mut pieces = Vec::new();
        self.machine.push(delta, &mut pieces);
        self.absorb(pieces)
    }

    /// The end of the output: decides what was held back (an unfinished call becomes
    /// content). `reset` starts a new output.
    pub fn finish(&mut self) -> ToolCallDelta {
        let mut pieces = Vec::new();
        self.machine.finish(&mut pieces);
        self.absorb(pieces)
    }

    /// Whether this output has called a tool so far (for `finish_reason: "tool_calls"`).
    pub fn tools_called(&self) -> bool {
        self.calls > 0
    }

    /// Back to the start of an output, with a fresh id seed so ids do not repeat.
    pub fn reset(&mut self) {
        self.machine = Machine::new(self.format);
        self.calls = 0;
        self.id_seed = splitmix64(&mut self.id_seed);
    }

    /// Turns the machine's pieces into a delta, numbering the calls.
    fn absorb(&mut self, pieces: Vec<Piece>) -> ToolCallDelta {
        let mut delta = ToolCallDelta::default();
        for piece in pieces {
            match piece {
                Piece::Content(text) => delta.content.push_str(&text),
                Piece::Call(call) => self.emit_call(call, &mut delta.tool_calls),
            }
        }
        delta
    }

    fn emit_call(&mut self, call: RawCall, out: &mut Vec<ToolCallChunk>) {
        let index = self.calls;
        self.calls += 1;
        out.push(ToolCallChunk {
            index,
            id: Some(self.call_id(index)),
            name: Some(call.name),
            arguments: String::new(),
        });
        out.push(ToolCallChunk {
            index,
            id: None,
            name: None,
            arguments: call.arguments,
        });
    }

    fn call_id(&self, index: usize) -> String {
        match self.format {
            Format::Mistral => alphanumeric_id(self.id_seed, index, 9),
            _ => format!("call_{}", alphanumeric_id(self.id_seed, index, 24)),
        }
    }
}

/// `len` alphanumerics drawn from (seed, index): unpredictable across parsers (random
/// seeds), reproducible within one.
fn alphanumeric_id(seed: u64, index: usize, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut id = String::with_capacity(len);
    let mut bits = 0u64;
    for k in 0..len {
        // 62^10 < 2^64: ten characters per draw.
        if k % 10 == 0 {
            bits = splitmix64(&mut state);
        }
        id.push(ALPHABET[(bits % 62) as usize] as char);
        bits /= 62;
    }
    id
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_is_named_in_error() {
        let err = ToolCallParser::new("granite_xml").unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)));
        assert!(err.to_string().contains("granite_xml"), "{err}");
        for name in TOOL_CALL_PARSERS {
            assert_eq!(ToolCallParser::new(name).unwrap().name(), *name);
        }
    }

    #[test]
    fn ids_have_openai_and_mistral_shapes() {
        let p = ToolCallParser::new("hermes").unwrap().with_id_seed(1);
        let (a, b) = (p.call_id(0), p.call_id(1));
        assert!(a.starts_with("call_") && a.len() == 29, "{a}");
        assert!(a[5..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_eq!(a, p.call_id(0));
        let m = ToolCallParser::new("mistral").unwrap().with_id_seed(1);
        let id = m.call_id(0);
        assert!(
            id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{id}"
        );
        let other = ToolCallParser::new("hermes").unwrap().with_id_seed(2);
        assert_ne!(a, other.call_id(0));
    }

    #[test]
    fn streaming_emits_header_then_arguments() {
        let mut p = ToolCallParser::new("hermes").unwrap().with_id_seed(3);
        let d = p.push("Checking.\n<tool_call>{\"name\": \"f\", ");
        assert_eq!(d.content, "Checking.\n");
        assert!(d.tool_calls.is_empty());
        assert!(!p.tools_called());
        let d = p.push("\"arguments\": {\"x\": 1}}</tool_call>\n");
        assert_eq!(d.content, "");
        assert_eq!(d.tool_calls.len(), 2);
        assert_eq!(d.tool_calls[0].id.as_deref(), Some(p.call_id(0).as_str()));
        assert_eq!(d.tool_calls[0].name.as_deref(), Some("f"));
        assert_eq!(d.tool_calls[0].arguments, "");
        assert_eq!(
            (d.tool_calls[1].index, d.tool_calls[1].id.as_ref()),
            (0, None)
        );
        assert_eq!(d.tool_calls[1].arguments, "{\"x\":1}");
        assert!(p.tools_called());
        assert!(p.finish().is_empty());
        p.reset();
        assert!(!p.tools_called());
    }

    #[test]
    fn waiting_call_is_retried_on_a_closing_char_or_doubling() {
        let mut p = ToolCallParser::new("pythonic").unwrap();
        assert!(p.push("[Note").is_empty());
        // No `]` and the buffer has not doubled: not re-parsed yet.
        assert!(p.push("s").is_empty());
        // Doubled: re-parsed, found not to be a call, so it is content from here on.
        assert_eq!(p.push(": see").content, "[Notes: see");
        assert_eq!(p.push(" below").content, " below");

        let mut p = ToolCallParser::new("pythonic").unwrap();
        assert!(p.push("[f(x=1").is_empty());
        let d = p.push(")]");
        assert_eq!(d.tool_calls.len(), 2, "a closing char retries at once");
    }
}
