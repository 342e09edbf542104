//! Structured outputs, reasoning and tool-call parsing through the engine on SmolLM2 (the
//! default model): constrained outputs always satisfy their constraint (JSON schema over
//! seeds, choice, regex, with n > 1 and 32 requests at once), invalid constraints are
//! refused at submission while serving continues, and the parsers split forced outputs.

use llmrt::engine::Engine;
use llmrt::{EngineConfig, Event, GenerateRequest, Llm, SamplingParams};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn config() -> EngineConfig {
    EngineConfig {
        model: llmrt::default_model_path(),
        num_threads: 2,
        max_model_len: Some(512),
        ..Default::default()
    }
}

fn params(structured: Value, seed: u64, max_tokens: usize) -> SamplingParams {
    let mut p = SamplingParams::from_json(&json!({
        "structured_outputs": structured, "seed": seed, "max_tokens": max_tokens,
        "temperature": 1.0,
    }))
    .unwrap();
    p.n = 1;
    p
}

fn schema() -> Value {
    json!({"type": "object",
           "properties": {"name": {"type": "string", "maxLength": 10},
                          "age": {"type": "integer", "minimum": 0, "maximum": 150}},
           "required": ["name", "age"], "additionalProperties": false})
}

/// The schema above, checked by hand.
fn valid_person(text: &str) -> bool {
    let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let name_ok = o["name"].as_str().is_some_and(|s| s.chars().count() <= 10);
    let age_ok = o
        .get("age")
        .and_then(Value::as_i64)
        .is_some_and(|a| (0..=150).contains(&a));
    o.len() == 2 && name_ok && age_ok
}

fn generate(llm: &mut Llm, prompt: &str, p: SamplingParams) -> llmrt::RequestOutput {
    let ids = llm.tokenizer.encode(prompt, true).unwrap();
    let r = GenerateRequest {
        prompt_token_ids: ids,
        params: p,
        return_prompt_logits: false,
    };
    llm.generate(vec![r], |_, _| {}).unwrap().remove(0)
}

#[test]
fn json_schema_choice_and_regex_outputs_satisfy_their_constraint() {
    let mut llm = Llm::load(&llmrt::default_model_path(), config()).unwrap();
    for seed in 0..6 {
        let out = generate(
            &mut llm,
            "Describe a person as JSON:",
            params(json!({"json": schema()}), seed, 80),
        );
        assert!(valid_person(&out.text), "seed {seed}: {:?}", out.text);
        assert_eq!(out.finish_reason.as_str(), "stop");
    }
    let choices = ["red", "green", "blue"];
    for seed in 0..4 {
        let out = generate(
            &mut llm,
            "Pick a color:",
            params(json!({"choice": choices}), seed, 16),
        );
        assert!(choices.contains(&out.text.as_str()), "{:?}", out.text);
    }
    let re = regex::Regex::new(r"^[0-9]{3}-[0-9]{4}$").unwrap();
    for seed in 0..4 {
        let out = generate(
            &mut llm,
            "A phone number:",
            params(json!({"regex": "[0-9]{3}-[0-9]{4}"}), seed, 16),
        );
        assert!(re.is_match(&out.text), "{:?}", out.text);
    }
    // n > 1: every forked sequence is constrained from the start.
    let mut p = params(json!({"json_object": true}), 9, 60);
    p.n = 3;
    let out = generate(&mut llm, "JSON please:", p);
    assert_eq!(out.outputs.len(), 3);
    for o in &out.outputs {
        if o.finish_reason.as_str() == "stop" {
            assert!(
                serde_json::from_str::<Value>(&o.text).unwrap().is_object(),
                "{:?}",
                o.text
            );
        }
    }
}

fn drain(engine: &Engine, n: usize) -> HashMap<u64, Vec<Event>> {
    let mut events: HashMap<u64, Vec<Event>> = HashMap::new();
    let mut open = n;
    while open > 0 {
        for e in engine.poll(256, Duration::from_millis(200)) {
            open -= e.is_final() as usize;
            events.entry(e.request_id).or_default().push(e);
        }
    }
    events
}

#[test]
fn thirty_two_concurrent_constrained_requests_are_all_valid() {
    let engine = Engine::new(config()).unwrap();
    // Refused at submission with the parser's message; nothing else is disturbed.
    let bad = engine.add_prompt("x", params(json!({"json": {"type": "no-such-type"}}), 0, 8));
    assert!(bad.unwrap_err().to_string().contains("structured_outputs"));
    let bad = engine.add_prompt("x", params(json!({"regex": "(unclosed"}), 0, 8));
    assert!(bad.unwrap_err().to_string().contains("regex"));
    let ids: Vec<u64> = (0..32)
        .map(|i| {
            engine
                .add_prompt(
                    "Describe a person as JSON:",
                    params(json!({"json": schema()}), i, 80),
                )
                .unwrap()
        })
        .collect();
    let events = drain(&engine, ids.len());
    let mut valid = 0;
    for id in &ids {
        let text: String = events[id].iter().map(|e| e.text.as_str()).collect();
        let last = events[id].last().unwrap();
        assert!(
            valid_person(&text) || last.finish_reason.map(|r| r.as_str()) == Some("length"),
            "{text:?}"
        );
        valid += valid_person(&text) as usize;
    }
    assert!(valid >= 30, "{valid} of 32 finished within max_tokens");
    let m = engine.metrics();
    assert!(m.structured_output_masks > 0);
    let per_mask_ms = 1e3 * m.structured_output_mask_seconds / m.structured_output_masks as f64;
    eprintln!(
        "structured outputs: {} masks, {per_mask_ms:.3} ms per mask, {:.2} ms per step at batch 32",
        m.structured_output_masks,
        32.0 * per_mask_ms
    );
}

#[test]
fn reasoning_and_tool_call_parsers_split_the_output() {
    let mut llm = Llm::load(&llmrt::default_model_path(), config()).unwrap();
    let mut p = params(
        json!({"regex": "<think>[a-z]{3,8}</think>[a-z]{2,6}"}),
        3,
        40,
    );
    p.reasoning_parser = Some("qwen3".into());
    let out = generate(&mut llm, "Think, then answer:", p)
        .outputs
        .remove(0);
    assert!(
        (3..=8).contains(&out.reasoning_content.len()),
        "{:?}",
        out.reasoning_content
    );
    assert!((2..=6).contains(&out.text.len()), "{:?}", out.text);
    assert!(!out.text.contains('<'));

    let call = r#"<tool_call>\{"name": "get_weather", "arguments": \{"city": "[A-Z][a-z]{2,8}"\}\}</tool_call>"#;
    let mut p = params(json!({"regex": call}), 4, 60);
    p.tool_call_parser = Some("hermes".into());
    let out = generate(&mut llm, "Call the tool:", p).outputs.remove(0);
    assert_eq!(out.tool_calls.len(), 1, "{out:?}");
    assert_eq!(out.tool_calls[0].name, "get_weather");
    assert!(out.tool_calls[0].id.starts_with("call_"));
    let args: Value = serde_json::from_str(&out.tool_calls[0].arguments).unwrap();
    assert!(args["city"]
        .as_str()
        .unwrap()
        .chars()
        .next()
        .unwrap()
        .is_ascii_uppercase());
    assert_eq!(out.text.trim(), "", "no content outside the call");

    let err = SamplingParams::from_json(&json!({"tool_call_parser": "nope"})).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
