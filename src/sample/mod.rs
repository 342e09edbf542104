//! Turning logits into tokens.

pub mod logprobs;
pub mod params;
pub mod processors;
pub mod sampler;

pub use logprobs::{Logprob, TokenLogprobs};
pub use params::{LogprobsMode, SamplingParams};
pub use sampler::Sampler;
