//! `Llm`: synchronous, offline generation over an `EngineCore` (as vLLM's `LLM` class):
//! submit a list of requests, step until all finish, return their outputs in order.

use crate::config::{EngineConfig, ModelConfig};
use crate::engine::{CoreRequest, EngineCore};
use crate::error::Result;
use crate::model::{Model, Tokenizer};
use crate::sample::SamplingParams;
use crate::sched::{FinishReason, SchedulerStats};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_token_ids: Vec<u32>,
    pub params: SamplingParams,
    /// Also return the logits at every prompt position.
    pub return_prompt_logits: bool,
}

#[derive(Clone, Debug)]
pub struct RequestOutput {
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    /// `prompt_len x vocab` logits when asked: row t is the distribution after `prompt[..=t]`.
    pub prompt_logits: Option<Vec<f32>>,
}

pub struct Llm {
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub config: ModelConfig,
    core: EngineCore,
    next_id: u64,
}

impl Llm {
    /// Loads the model at `path` (overriding `opts.model`).
    pub fn load(path: &Path, opts: EngineConfig) -> Result<Llm> {
        let model = Model::load(path)?;
        let (core, info) = EngineCore::new(
            model,
            EngineConfig {
                model: path.to_path_buf(),
                ..opts
            },
        )?;
        Ok(Llm {
            tokenizer: info.tokenizer,
            chat_template: info.chat_template,
            config: info.config,
            core,
            next_id: 0,
        })
    }

    pub fn max_model_len(&self) -> usize {
        self.core.max_model_len()
    }

    pub fn stats(&self) -> SchedulerStats {
        self.core.stats()
    }

    /// Generates for every request, batching them; `on_token(request_index, token_id)` is
    /// called for each generated token as it is produced. Every request is validated
    /// before any runs.
    pub fn generate(
        &mut self,
        requests: Vec<GenerateRequest>,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<RequestOutput>> {
        let core_requests: Vec<CoreRequest> = requests
            .into_iter()
            .map(|r| CoreRequest {
                prompt_token_ids: r.prompt_token_ids,
                params: r.params,
                return_prompt_logits: r.return_prompt_logits,
                ..Default::default()
            })
            .collect();
        for r in &core_requests {
            self.core.validate(r)?;
        }
        let first_id = self.next_id;
        let mut outputs: Vec<RequestOutput> = core_requests
            .iter()
            .map(|r| RequestOutput {
                prompt_token_ids: r.prompt_token_ids.clone(),
                token_ids: vec![],
                text: String::new(),
                finish_reason: FinishReason::Length,
                num_cached_tokens: 0,
                prompt_logits: r.return_prompt_logits.then(Vec::new),
            })
            .collect();
        for r in core_requests {
            self.core.add_request(self.next_id, r)?;
            self.next_id += 1;
        }
        while self.core.has_unfinished() {
            for o in self.core.step() {
                let i = (o.request_id - first_id) as usize;
                let out = &mut outputs[i];
                for &t in &o.new_token_ids {
                    on_token(i, t);
                }
                out.token_ids.extend(&o.new_token_ids);
                if let Some(l) = &mut out.prompt_logits {
                    l.extend(&o.prompt_logits);
                }
                out.num_cached_tokens = o.num_cached_tokens;
                if let Some(reason) = o.finish_reason {
                    out.finish_reason = reason;
                }
            }
        }
        for o in &mut outputs {
            o.text = self.tokenizer.decode(&o.token_ids, true)?;
        }
        Ok(outputs)
    }
}
