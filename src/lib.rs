//! llmrt: an LLM inference engine with a C ABI.
//!
//! Data flows one way: engine -> scheduler -> runner -> backend; results come back as values.

pub mod backend;
pub mod config;
pub mod error;
pub mod kv;
pub mod model;
pub mod runner;
pub mod sample;
pub mod tensor;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use model::Model;
