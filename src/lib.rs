//! llmrt: an LLM inference engine with a C ABI.
//!
//! Data flows one way: engine -> scheduler -> runner -> backend; results come back as values.

pub mod backend;
pub mod capi;
pub mod config;
pub mod engine;
pub mod error;
pub mod kv;
pub mod model;
pub mod runner;
pub mod sample;
pub mod sched;
pub mod structured;
pub mod tensor;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use model::Model;
pub mod llm;
pub mod metrics;
pub mod output;

pub use config::EngineConfig;
pub use engine::{CoreRequest, Engine};
pub use llm::{sequences_from_events, CompletionOutput, GenerateRequest, Llm, RequestOutput};
pub use output::{Event, Usage};
pub use sample::{LogprobsMode, SamplingParams};
pub use sched::FinishReason;

/// Where the default model (SmolLM2-135M-Instruct Q4_1) is cached by
/// `scripts/fetch-default-model.sh`: `$LLMRT_CACHE_DIR/models/...`, by default under
/// `$HOME/.cache/llmrt`.
pub fn default_model_path() -> std::path::PathBuf {
    let cache = std::env::var_os("LLMRT_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            std::path::PathBuf::from(home).join(".cache").join("llmrt")
        });
    cache.join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf")
}
