//! The serving engine.

pub mod core;

pub use self::core::{CoreRequest, EngineCore, ModelInfo};
