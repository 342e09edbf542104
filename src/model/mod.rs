//! Everything that turns model files into a runnable model.

pub mod arch;
pub mod chat_template;
pub mod decoder;
pub mod loader;
pub mod tokenizer;
pub mod tokenizer_gguf;
pub mod weights;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::Weight;
use std::collections::HashMap;
use std::path::Path;

pub use tokenizer::Tokenizer;
pub use weights::ModelWeights;

/// Tensors by their Hugging Face checkpoint name, in HF layout (GGUF loaders rename and
/// un-permute into this form).
#[derive(Default, Clone)]
pub struct TensorStore {
    pub tensors: HashMap<String, Weight>,
}

impl TensorStore {
    pub fn insert(&mut self, name: impl Into<String>, w: Weight) {
        self.tensors.insert(name.into(), w);
    }

    pub fn get(&self, name: &str) -> Option<&Weight> {
        self.tensors.get(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Sampling defaults a model ships (`generation_config.json`), applied as vLLM does when a
/// request leaves a field unset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub repetition_penalty: Option<f32>,
    pub eos_token_ids: Vec<u32>,
}

/// What a loader produces: hyper-parameters, tensors, tokenizer and chat template.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub tensors: TensorStore,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub generation_defaults: GenerationDefaults,
}

/// A model ready to run: config, weights in the decoder's structure, tokenizer, template.
pub struct Model {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub generation_defaults: GenerationDefaults,
}

impl Model {
    /// Loads a Hugging Face model folder or a GGUF file.
    pub fn load(path: &Path) -> Result<Model> {
        let loaded = if path.is_dir() {
            loader::hf_dir::load(path)?
        } else if path.is_file() {
            loader::gguf::load(path)?
        } else {
            return Err(Error::invalid_model(path, "no such file or folder"));
        };
        let weights = ModelWeights::from_store(&loaded.config, &loaded.tensors)
            .map_err(|reason| Error::invalid_model(path, reason))?;
        Ok(Model {
            config: loaded.config,
            weights,
            tokenizer: loaded.tokenizer,
            chat_template: loaded.chat_template,
            generation_defaults: loaded.generation_defaults,
        })
    }

    /// Token ids that end generation: the config's and generation_config's EOS ids and the tokenizer's.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        ids.extend(&self.generation_defaults.eos_token_ids);
        ids.extend(self.tokenizer.eos_token_id());
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
