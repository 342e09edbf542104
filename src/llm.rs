//! `Llm`: synchronous, offline generation over an `EngineCore` (as vLLM's `LLM` class):
//! submit a list of requests, step until all finish, return their outputs in order.

use crate::config::{EngineConfig, ModelConfig};
use crate::engine::{CoreRequest, EngineCore};
use crate::error::Result;
use crate::model::{Model, Tokenizer};
use crate::output::stop::StopChecker;
use crate::output::IncrementalDetokenizer;
use crate::sample::SamplingParams;
use crate::sched::{FinishReason, SchedulerStats};
use std::path::Path;

/// A request's text so far, for its stop strings.
struct StopState {
    detok: IncrementalDetokenizer,
    checker: StopChecker,
    text: String,
    stopped: bool,
}

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
    /// The stop string (of `SamplingParams::stop`) that ended the output, if one did; the
    /// text is cut at it (or after it with `include_stop_str_in_output`).
    pub stop_string: Option<String>,
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
            .map(|mut r| {
                r.params.update_from_tokenizer(&self.tokenizer)?;
                Ok(CoreRequest {
                    prompt_token_ids: r.prompt_token_ids,
                    params: r.params,
                    return_prompt_logits: r.return_prompt_logits,
                    ..Default::default()
                })
            })
            .collect::<Result<_>>()?;
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
                stop_string: None,
                num_cached_tokens: 0,
                prompt_logits: r.return_prompt_logits.then(Vec::new),
            })
            .collect();
        // Requests with stop strings are detokenized as they go.
        let mut stops: Vec<Option<StopState>> = core_requests
            .iter()
            .map(|r| {
                let p = &r.params;
                let checker = StopChecker::new(&p.stop, p.include_stop_str_in_output)
                    .filter(|_| p.detokenize)?;
                Some(StopState {
                    detok: IncrementalDetokenizer::new(&r.prompt_token_ids, p.skip_special_tokens),
                    checker,
                    text: String::new(),
                    stopped: false,
                })
            })
            .collect();
        for r in core_requests {
            self.core.add_request(self.next_id, r)?;
            self.next_id += 1;
        }
        while self.core.has_unfinished() {
            for mut o in self.core.step() {
                let i = (o.request_id - first_id) as usize;
                let out = &mut outputs[i];
                if let Some(st) = &mut stops[i] {
                    if st.stopped {
                        continue;
                    }
                    for (k, &t) in o.new_token_ids.iter().enumerate() {
                        let delta = st.detok.push(&self.tokenizer, t);
                        if let Some(j) = st.checker.push(&delta, &mut st.text) {
                            st.stopped = true;
                            out.stop_string = Some(st.checker.stop_str(j).to_string());
                            o.new_token_ids.truncate(k + 1);
                            if o.finish_reason.is_none() {
                                self.core.finish_request(o.request_id, FinishReason::Stop);
                            }
                            o.finish_reason = Some(FinishReason::Stop);
                            break;
                        }
                    }
                }
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
        for (o, st) in outputs.iter_mut().zip(stops) {
            match st {
                None => o.text = self.tokenizer.decode(&o.token_ids, true)?,
                Some(mut st) => {
                    if !st.stopped {
                        let rest = st.detok.flush(&self.tokenizer);
                        match st.checker.push(&rest, &mut st.text) {
                            Some(j) => {
                                o.stop_string = Some(st.checker.stop_str(j).to_string());
                                o.finish_reason = FinishReason::Stop;
                            }
                            None => st.checker.flush(&mut st.text),
                        }
                    }
                    o.text = st.text;
                }
            }
        }
        Ok(outputs)
    }
}
