//! Turning logits into tokens.

pub mod params;
pub mod processors;
pub mod sampler;

pub use params::SamplingParams;
pub use sampler::Sampler;
