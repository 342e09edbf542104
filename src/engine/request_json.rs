//! Requests as JSON objects, with vLLM's field names: what the C API (and every binding on
//! top of it) submits.
//!
//! ```json
//! {"prompt": "text"}                       // tokenized with the tokenizer's special tokens
//! {"prompt_token_ids": [1, 2, 3]}
//! {"messages": [{"role": "user", "content": "hi"}],
//!  "add_generation_prompt": true,          // default true
//!  "chat_template_kwargs": {...},          // extra template variables
//!  "tools": [...],                         // tool schemas handed to the template
//!  "documents": [...],                     // retrieval documents for the template
//!  "chat_template": "{% for m in ... %}"}  // this request's template instead of the model's
//! ```
//!
//! Exactly one of `prompt`, `prompt_token_ids` and `messages` is given. Beside it: `priority`
//! (integer, lower runs first under the priority policy), `cache_salt` (string: isolates the
//! request's prefix-cache blocks) and vLLM's sampling fields at the top level
//! (`max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `ignore_eos`, ... see
//! `SamplingParams::from_json`: also `n`, `best_of`, `beam_width`, `length_penalty`,
//! `logprobs`, `prompt_logprobs`, `logprobs_mode`, `structured_outputs` (`{"json":
//! schema}`, `{"regex": ..}`, `{"choice": [..]}`, `{"grammar": ..}`, `{"json_object":
//! true}`), `reasoning_parser` and `tool_call_parser`). Any other field is an error naming
//! it.

use super::CoreRequest;
use crate::error::{Error, Result};
use crate::model::chat_template::ChatTemplate;
use crate::model::Tokenizer;
use crate::sample::SamplingParams;
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// A request field that only a test build of the host may use: with the environment
/// variable `LLMRT_TEST_HOOKS=1`, `{"llmrt_test_panic": true}` makes parsing panic, so tests
/// can prove that a panic inside the library comes back as an error. Without the variable
/// the field is unknown like any other.
pub const TEST_PANIC_FIELD: &str = "llmrt_test_panic";

fn test_hooks_enabled() -> bool {
    std::env::var_os("LLMRT_TEST_HOOKS").is_some_and(|v| v == "1")
}

/// Parses request JSON against one model's tokenizer and chat template. The template is
/// compiled once, on first use.
pub struct RequestParser {
    template_source: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    template: OnceLock<std::result::Result<ChatTemplate, String>>,
}

impl RequestParser {
    /// `chat_template` is the model's template source (None: chat requests are refused).
    pub fn new(tokenizer: &Tokenizer, chat_template: Option<String>) -> Self {
        RequestParser {
            template_source: chat_template,
            bos_token: tokenizer.bos_token().map(str::to_string),
            eos_token: tokenizer.eos_token().map(str::to_string),
            template: OnceLock::new(),
        }
    }

    /// The parser for an engine's model.
    pub fn for_engine(engine: &super::Engine) -> Self {
        Self::new(
            engine.tokenizer(),
            engine.model_info().chat_template.clone(),
        )
    }

    fn template(&self) -> Result<&ChatTemplate> {
        let source = self.template_source.as_deref().ok_or_else(|| {
            Error::InvalidRequest(
                "the model has no chat template: send `prompt` or `prompt_token_ids`".into(),
            )
        })?;
        self.template
            .get_or_init(|| {
                ChatTemplate::new(source, self.bos_token.as_deref(), self.eos_token.as_deref())
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Template(e.clone()))
    }

    /// Renders a chat with the model's template: `{"messages": [...],
    /// "add_generation_prompt": bool (default true), "tools": [...],
    /// "chat_template_kwargs": {...}}`; other fields are errors naming them.
    pub fn render_chat(&self, v: &Value) -> Result<String> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("a chat must be a JSON object with `messages`"))?;
        let mut chat = ChatFields::default();
        for (k, val) in obj {
            if !chat.take(k, val)? {
                return Err(Error::InvalidRequest(format!("unknown chat field `{k}`")));
            }
        }
        let messages = chat
            .messages
            .ok_or_else(|| bad("a chat needs `messages`"))?;
        self.render(messages, &chat)
    }

    fn render(&self, messages: &Value, chat: &ChatFields) -> Result<String> {
        let mut extra = chat.kwargs.cloned().unwrap_or_default();
        if let Some(d) = chat.documents {
            extra.insert("documents".into(), d.clone());
        }
        let add_generation_prompt = chat.add_generation_prompt.unwrap_or(true);
        let tools = chat.tools.filter(|t| !t.is_null());
        match chat.template {
            // The request's own template, compiled for this request only.
            Some(source) => {
                ChatTemplate::new(source, self.bos_token.as_deref(), self.eos_token.as_deref())?
                    .render(messages, add_generation_prompt, tools, Some(&extra))
            }
            None => self
                .template()?
                .render(messages, add_generation_prompt, tools, Some(&extra)),
        }
    }

    /// Parses one request (see the module documentation). Prompts are tokenized here, so
    /// the result is ready for `Engine::add_request`, which validates it against the model.
    pub fn parse(&self, tokenizer: &Tokenizer, v: &Value) -> Result<CoreRequest> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad("a request must be a JSON object"))?;
        let mut prompt: Option<&str> = None;
        let mut prompt_ids: Option<Vec<u32>> = None;
        let mut chat = ChatFields::default();
        let mut priority = 0i32;
        let mut cache_salt = None;
        let mut sampling = Map::new();
        for (k, val) in obj {
            match k.as_str() {
                "prompt" => {
                    prompt = Some(
                        val.as_str()
                            .ok_or_else(|| bad("`prompt` must be a string"))?,
                    )
                }
                "prompt_token_ids" => prompt_ids = Some(token_ids(val)?),
                "priority" => {
                    priority = val
                        .as_i64()
                        .and_then(|p| i32::try_from(p).ok())
                        .ok_or_else(|| bad("`priority` must be a 32-bit integer"))?
                }
                "cache_salt" => {
                    let s = val
                        .as_str()
                        .ok_or_else(|| bad("`cache_salt` must be a string"))?;
                    if s.is_empty() {
                        return Err(bad("`cache_salt` must not be empty"));
                    }
                    cache_salt = Some(s.to_string());
                }
                TEST_PANIC_FIELD if test_hooks_enabled() => {
                    if val.as_bool() == Some(true) {
                        panic!("panic forced by the `{TEST_PANIC_FIELD}` test hook");
                    }
                }
                _ => {
                    if !chat.take(k, val)? {
                        sampling.insert(k.clone(), val.clone());
                    }
                }
            }
        }
        let given = [
            prompt.is_some(),
            prompt_ids.is_some(),
            chat.messages.is_some(),
        ];
        if given.iter().filter(|&&g| g).count() != 1 {
            return Err(bad(
                "give exactly one of `prompt` (a string), `prompt_token_ids` (a list of token ids) or `messages` (a chat)",
            ));
        }
        if chat.messages.is_none() {
            for (name, set) in [
                (
                    "add_generation_prompt",
                    chat.add_generation_prompt.is_some(),
                ),
                ("chat_template_kwargs", chat.kwargs.is_some()),
                ("tools", chat.tools.is_some()),
                ("documents", chat.documents.is_some()),
                ("chat_template", chat.template.is_some()),
            ] {
                if set {
                    return Err(Error::InvalidRequest(format!(
                        "`{name}` applies only to chat requests (`messages`)"
                    )));
                }
            }
        }
        // Sampling fields are checked before the (costlier) tokenization.
        let params = SamplingParams::from_json(&Value::Object(sampling))?;
        let prompt_token_ids = match (prompt, prompt_ids, chat.messages) {
            (Some(text), _, _) => tokenizer.encode(text, true)?,
            (_, Some(ids), _) => ids,
            (_, _, Some(messages)) => {
                let text = self.render(messages, &chat)?;
                tokenizer.encode(&text, false)?
            }
            _ => unreachable!("exactly one prompt form was checked above"),
        };
        Ok(CoreRequest {
            prompt_token_ids,
            params,
            priority,
            cache_salt,
            return_prompt_logits: false,
            matcher: None,
        })
    }
}

/// The chat fields of a request or of a chat to render.
#[derive(Default)]
struct ChatFields<'a> {
    messages: Option<&'a Value>,
    add_generation_prompt: Option<bool>,
    kwargs: Option<&'a Map<String, Value>>,
    tools: Option<&'a Value>,
    /// Retrieval documents handed to the template as `documents`.
    documents: Option<&'a Value>,
    /// A template for this request instead of the model's.
    template: Option<&'a str>,
}

impl<'a> ChatFields<'a> {
    /// Takes `k` if it is a chat field (false if it is not one).
    fn take(&mut self, k: &str, val: &'a Value) -> Result<bool> {
        match k {
            "messages" => {
                let list = val
                    .as_array()
                    .ok_or_else(|| bad("`messages` must be a list of messages"))?;
                if list.is_empty() {
                    return Err(bad("`messages` must not be empty"));
                }
                if !list.iter().all(Value::is_object) {
                    return Err(bad(
                        "`messages` must be a list of objects like {\"role\": ..., \"content\": ...}",
                    ));
                }
                self.messages = Some(val);
            }
            "add_generation_prompt" => {
                self.add_generation_prompt = Some(
                    val.as_bool()
                        .ok_or_else(|| bad("`add_generation_prompt` must be true or false"))?,
                )
            }
            "chat_template_kwargs" => {
                self.kwargs = Some(
                    val.as_object()
                        .ok_or_else(|| bad("`chat_template_kwargs` must be an object"))?,
                )
            }
            "tools" => {
                if !(val.is_array() || val.is_null()) {
                    return Err(bad("`tools` must be a list of tool schemas"));
                }
                self.tools = Some(val);
            }
            "documents" => {
                if !(val.is_array() || val.is_null()) {
                    return Err(bad("`documents` must be a list of documents"));
                }
                self.documents = Some(val).filter(|d| !d.is_null());
            }
            "chat_template" => {
                self.template =
                    Some(val.as_str().ok_or_else(|| {
                        bad("`chat_template` must be a string (a Jinja template)")
                    })?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn bad(msg: &str) -> Error {
    Error::InvalidRequest(msg.to_string())
}

fn token_ids(v: &Value) -> Result<Vec<u32>> {
    let msg = "`prompt_token_ids` must be a list of token ids (non-negative integers)";
    v.as_array()
        .ok_or_else(|| bad(msg))?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| bad(msg))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama")
    }

    fn setup() -> (Tokenizer, RequestParser) {
        let dir = fixture();
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        let tok = Tokenizer::from_file(
            &dir.join("tokenizer.json"),
            cfg["bos_token"].as_str().map(str::to_string),
            cfg["eos_token"].as_str().map(str::to_string),
        )
        .unwrap();
        let template = cfg["chat_template"].as_str().map(str::to_string);
        let parser = RequestParser::new(&tok, template);
        (tok, parser)
    }

    fn expected() -> Value {
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap()
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    fn err(p: &RequestParser, tok: &Tokenizer, v: Value) -> String {
        match p.parse(tok, &v) {
            Err(Error::InvalidRequest(m)) => m,
            other => panic!("expected InvalidRequest for {v}, got {other:?}"),
        }
    }

    #[test]
    fn prompt_forms_give_the_reference_ids() {
        let (tok, p) = setup();
        let e = expected();
        let text = &e["prompts"][2];
        let r = p
            .parse(&tok, &json!({"prompt": text["text"], "max_tokens": 3}))
            .unwrap();
        assert_eq!(r.prompt_token_ids, ids(&text["ids"]));
        assert_eq!(r.params.max_tokens, 3);
        let r = p
            .parse(
                &tok,
                &json!({"prompt_token_ids": text["ids"], "temperature": 0, "priority": -3,
                         "cache_salt": "tenant-a", "ignore_eos": true}),
            )
            .unwrap();
        assert_eq!(r.prompt_token_ids, ids(&text["ids"]));
        assert!(r.params.is_greedy() && r.params.ignore_eos);
        assert_eq!(r.priority, -3);
        assert_eq!(r.cache_salt.as_deref(), Some("tenant-a"));
        let chat = e["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p.get("messages").is_some())
            .unwrap();
        let r = p
            .parse(&tok, &json!({"messages": chat["messages"]}))
            .unwrap();
        assert_eq!(r.prompt_token_ids, ids(&chat["ids"]));
        let rendered = p
            .render_chat(&json!({"messages": chat["messages"], "add_generation_prompt": true}))
            .unwrap();
        assert_eq!(rendered, chat["text"].as_str().unwrap());
        let no_gen = p
            .render_chat(&json!({"messages": chat["messages"], "add_generation_prompt": false}))
            .unwrap();
        assert!(rendered.starts_with(&no_gen) && rendered.len() > no_gen.len());
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let (tok, p) = setup();
        let cases = [
            (json!([1, 2]), "JSON object"),
            (json!({}), "exactly one of"),
            (
                json!({"prompt": "a", "prompt_token_ids": [1]}),
                "exactly one of",
            ),
            (json!({"prompt": 3}), "`prompt` must be a string"),
            (json!({"prompt_token_ids": [1, -2]}), "prompt_token_ids"),
            (
                json!({"prompt_token_ids": [1, 4294967296u64]}),
                "prompt_token_ids",
            ),
            (json!({"prompt_token_ids": "1 2"}), "prompt_token_ids"),
            (json!({"prompt": "a", "bogus_field": 1}), "`bogus_field`"),
            (json!({"prompt": "a", "max_tokens": -1}), "`max_tokens`"),
            (json!({"prompt": "a", "max_tokens": "8"}), "`max_tokens`"),
            (json!({"prompt": "a", "temperature": -1.0}), "temperature"),
            (json!({"prompt": "a", "priority": 1.5}), "`priority`"),
            (json!({"prompt": "a", "priority": 1u64 << 40}), "`priority`"),
            (json!({"prompt": "a", "cache_salt": ""}), "`cache_salt`"),
            (
                json!({"prompt": "a", "add_generation_prompt": false}),
                "add_generation_prompt",
            ),
            (json!({"prompt": "a", "tools": []}), "`tools`"),
            (json!({"messages": []}), "`messages`"),
            (json!({"messages": "hi"}), "`messages`"),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": 1}),
                "`tools`",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": 1}),
                "chat_template_kwargs",
            ),
            (
                json!({"prompt": "a", TEST_PANIC_FIELD: true}),
                TEST_PANIC_FIELD,
            ),
        ];
        for (v, want) in cases {
            let m = err(&p, &tok, v.clone());
            assert!(m.contains(want), "{v}: {m:?} does not mention {want:?}");
        }
        let m =
            match p.render_chat(&json!({"messages": [{"role": "user", "content": "x"}], "x": 1})) {
                Err(Error::InvalidRequest(m)) => m,
                other => panic!("{other:?}"),
            };
        assert!(m.contains("`x`"));
    }

    #[test]
    fn a_request_may_bring_its_template_and_documents() {
        let (_, p) = setup();
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let own = "{% for d in documents %}[{{ d.title }}]{% endfor %}{% for m in messages %}{{ m.role }}:{{ m.content }}{% endfor %}";
        let text = p
            .render_chat(&json!({"messages": msgs, "chat_template": own,
                                 "documents": [{"title": "a"}, {"title": "b"}]}))
            .unwrap();
        assert_eq!(text, "[a][b]user:hi");
        let model_default = p.render_chat(&json!({"messages": msgs})).unwrap();
        assert_ne!(model_default, text, "the model's template otherwise");
        let m = match p.render_chat(&json!({"messages": msgs, "chat_template": "{% if %}"})) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("rendered {t:?}"),
        };
        assert!(!m.is_empty());
        for (field, v) in [("documents", json!(3)), ("chat_template", json!(1))] {
            let mut req = json!({"messages": msgs});
            req[field] = v;
            let m = p.render_chat(&req).unwrap_err().to_string();
            assert!(m.contains(field), "{m}");
        }
    }

    #[test]
    fn chat_without_a_template_is_refused() {
        let (tok, _) = setup();
        let p = RequestParser::new(&tok, None);
        let m = err(
            &p,
            &tok,
            json!({"messages": [{"role": "user", "content": "x"}]}),
        );
        assert!(m.contains("no chat template"), "{m}");
        let p = RequestParser::new(&tok, Some("{% if %}".into()));
        assert!(matches!(
            p.parse(
                &tok,
                &json!({"messages": [{"role": "user", "content": "x"}]})
            ),
            Err(Error::Template(_))
        ));
    }
}
