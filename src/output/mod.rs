//! Turning generated token ids into user-facing events and text.

pub mod detokenizer;
pub mod parsers;
pub mod processor;
pub mod stop;

pub use detokenizer::IncrementalDetokenizer;
pub use processor::{Event, OutputProcessor, Usage};
