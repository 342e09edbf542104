//! Turning generated token ids into text.

pub mod detokenizer;

pub use detokenizer::IncrementalDetokenizer;
