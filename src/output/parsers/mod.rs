//! Parsers of generated text, as vLLM's `--reasoning-parser` and `--tool-call-parser`:
//! plain data in, data out, each usable on a whole output (`extract`) or on a stream of
//! text deltas (`push` ... `finish`), with both giving the same result for any split.

mod json_calls;
mod pythonic;
pub mod reasoning;
mod scan;
pub mod tool_calls;

pub use reasoning::{ReasoningDelta, ReasoningParser, REASONING_PARSERS};
pub use tool_calls::{
    ExtractedToolCalls, ToolCall, ToolCallChunk, ToolCallDelta, ToolCallParser, TOOL_CALL_PARSERS,
};
