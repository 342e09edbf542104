//! Readers for model files. Each produces a `LoadedModel` in canonical (HF) layout.

pub mod gguf;
pub mod hf_dir;
pub mod safetensors;
