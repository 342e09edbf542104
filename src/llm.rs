//! `Llm`: synchronous, offline generation over an `EngineCore` (as vLLM's `LLM` class):
//! submit a list of requests, step until all finish, return their outputs in order.

use crate::config::{EngineConfig, ModelConfig};
use crate::engine::{CoreRequest, EngineCore};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::model::{Model, Tokenizer};
use crate::output::parsers::ToolCall;
use crate::output::{Event, OutputProcessor};
use crate::sample::{SamplingParams, TokenLogprobs};
use crate::sched::{FinishReason, SchedulerStats};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_token_ids: Vec<u32>,
    pub params: SamplingParams,
    /// Also return the logits at every prompt position.
    pub return_prompt_logits: bool,
}

/// One generated sequence (vLLM's `CompletionOutput`).
#[derive(Clone, Debug)]
pub struct CompletionOutput {
    /// Which sequence (0..n); best_of and beam search number the returned ones best first.
    pub index: u32,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// The stop string that ended the output, if one did; the text is cut at it (or after
    /// it with `include_stop_str_in_output`).
    pub stop_string: Option<String>,
    /// The stop token that ended it, if one did.
    pub stop_token_id: Option<u32>,
    /// When computed (logprobs, best_of, beam search).
    pub cumulative_logprob: Option<f64>,
    /// One per token, when `logprobs` was asked.
    pub logprobs: Vec<TokenLogprobs>,
    /// With a reasoning parser: the reasoning (`text` holds the content).
    pub reasoning_content: String,
    /// With a tool-call parser: the calls found (`text` holds what is outside them).
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Clone, Debug)]
pub struct RequestOutput {
    pub prompt_token_ids: Vec<u32>,
    /// The first sequence's tokens, text, finish reason and stop string (`outputs[0]`).
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub stop_string: Option<String>,
    /// Every returned sequence, by index.
    pub outputs: Vec<CompletionOutput>,
    /// With `prompt_logprobs`: one per prompt token after the first.
    pub prompt_logprobs: Vec<TokenLogprobs>,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    /// `prompt_len x vocab` logits when asked: row t is the distribution after `prompt[..=t]`.
    pub prompt_logits: Option<Vec<f32>>,
}

impl CompletionOutput {
    pub fn new(index: u32) -> Self {
        CompletionOutput {
            index,
            token_ids: vec![],
            text: String::new(),
            finish_reason: FinishReason::Length,
            stop_string: None,
            stop_token_id: None,
            cumulative_logprob: None,
            logprobs: vec![],
            reasoning_content: String::new(),
            tool_calls: vec![],
        }
    }

    /// Adds one of this sequence's events (tool-call pieces joined by call index).
    pub fn push_event(&mut self, e: &Event) {
        self.token_ids.extend(&e.token_ids);
        self.text.push_str(&e.text);
        self.reasoning_content.push_str(&e.reasoning);
        for c in &e.tool_calls {
            match self.tool_calls.get_mut(c.index) {
                Some(call) => call.arguments.push_str(&c.arguments),
                None => self.tool_calls.push(ToolCall {
                    id: c.id.clone().unwrap_or_default(),
                    name: c.name.clone().unwrap_or_default(),
                    arguments: c.arguments.clone(),
                }),
            }
        }
        self.logprobs.extend(e.logprobs.iter().cloned());
        if e.cumulative_logprob.is_some() {
            self.cumulative_logprob = e.cumulative_logprob;
        }
        if let Some(r) = e.finish_reason {
            self.finish_reason = r;
            self.stop_string.clone_from(&e.stop_string);
            self.stop_token_id = e.stop_token_id;
        }
    }
}

/// Folds one request's events into its sequences, by index.
pub fn sequences_from_events<'a>(
    outputs: &mut Vec<CompletionOutput>,
    events: impl IntoIterator<Item = &'a Event>,
) {
    for e in events {
        let i = e.index as usize;
        while outputs.len() <= i {
            outputs.push(CompletionOutput::new(outputs.len() as u32));
        }
        outputs[i].push_event(e);
    }
}

impl RequestOutput {
    fn apply(&mut self, e: Event) {
        sequences_from_events(&mut self.outputs, [&e]);
        self.prompt_logprobs.extend(e.prompt_logprobs);
        if let Some(u) = e.usage {
            self.num_cached_tokens = u.cached_prompt_tokens;
        }
    }

    /// The first sequence's fields at the top level, once the request is done.
    fn finish(&mut self) {
        if let Some(o) = self.outputs.first() {
            self.token_ids.clone_from(&o.token_ids);
            self.text.clone_from(&o.text);
            self.finish_reason = o.finish_reason;
            self.stop_string.clone_from(&o.stop_string);
        }
    }
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
    /// called for each token of a request's first sequence as it is produced (at the end
    /// for best_of and beam search). Every request is validated before any runs.
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
                outputs: vec![],
                prompt_logprobs: vec![],
                num_cached_tokens: 0,
                prompt_logits: r.return_prompt_logits.then(Vec::new),
            })
            .collect();
        let mut processor = OutputProcessor::new(self.tokenizer.clone_handle());
        let mut metrics = Metrics::default();
        for r in core_requests {
            let params = Arc::new(r.params.clone());
            processor.register(self.next_id, &r.prompt_token_ids, &params, Instant::now());
            self.core.add_request(self.next_id, r)?;
            self.next_id += 1;
        }
        while self.core.has_unfinished() {
            let mut step_outputs = self.core.step();
            loop {
                for mut o in step_outputs {
                    let i = (o.request_id - first_id) as usize;
                    if let Some(l) = &mut outputs[i].prompt_logits {
                        l.append(&mut o.prompt_logits);
                    }
                    for e in processor.process(o, &mut metrics) {
                        if e.index == 0 {
                            e.token_ids.iter().for_each(|&t| on_token(i, t));
                        }
                        outputs[i].apply(e);
                    }
                }
                // Sequences a stop string ended: finish them in the core too.
                step_outputs = processor
                    .take_stopped()
                    .into_iter()
                    .filter_map(|seq| self.core.finish_sequence(seq, FinishReason::Stop))
                    .collect();
                if step_outputs.is_empty() {
                    break;
                }
            }
        }
        outputs.iter_mut().for_each(RequestOutput::finish);
        Ok(outputs)
    }
}
