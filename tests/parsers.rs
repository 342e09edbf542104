//! Reasoning and tool-call parsers on recorded-style model outputs, and the streaming
//! invariant: for any split of an output into deltas (every 2- and 3-piece split at a
//! char boundary, and one char at a time), the streamed pieces add up to `extract`.

use llmrt::output::parsers::{
    ExtractedToolCalls, ReasoningParser, ToolCall, ToolCallParser, TOOL_CALL_PARSERS,
};
use serde_json::{json, Value};

// ---- splitting helpers ----

/// Every way to cut `text` into deltas: two pieces, three pieces, one char each.
fn splits(text: &str) -> Vec<Vec<&str>> {
    let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
    let mut out = vec![vec![text]];
    for &a in &cuts {
        out.push(vec![&text[..a], &text[a..]]);
        for &b in cuts.iter().filter(|&&b| b > a) {
            out.push(vec![&text[..a], &text[a..b], &text[b..]]);
        }
    }
    out.push(
        text.char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect(),
    );
    out
}

// ---- reasoning ----

fn stream_reasoning(parser: &ReasoningParser, deltas: &[&str]) -> (Option<String>, Option<String>) {
    let mut p = parser.clone();
    p.reset();
    let (mut reasoning, mut content) = (String::new(), String::new());
    for d in deltas {
        let out = p.push(d);
        reasoning.push_str(&out.reasoning);
        content.push_str(&out.content);
    }
    let out = p.finish();
    reasoning.push_str(&out.reasoning);
    content.push_str(&out.content);
    let some = |s: String| (!s.is_empty()).then_some(s);
    (some(reasoning), some(content))
}

fn check_reasoning(
    parser: &ReasoningParser,
    text: &str,
    reasoning: Option<&str>,
    content: Option<&str>,
) {
    let want = (reasoning.map(str::to_string), content.map(str::to_string));
    assert_eq!(parser.extract(text), want, "extract of {text:?}");
    for deltas in splits(text) {
        assert_eq!(stream_reasoning(parser, &deltas), want, "deltas {deltas:?}");
    }
}

#[test]
fn deepseek_r1_outputs() {
    let p = ReasoningParser::new("deepseek_r1").unwrap();
    check_reasoning(
        &p,
        "Okay, the user asks for 9.11 vs 9.8. Compare decimals: 0.8 > 0.11.\n</think>\n\n**9.8** is larger.",
        Some("Okay, the user asks for 9.11 vs 9.8. Compare decimals: 0.8 > 0.11.\n"),
        Some("\n\n**9.8** is larger."),
    );
    check_reasoning(
        &p,
        "<think>\nHmm, greet back.\n</think>\n\nHello! How can I help?",
        Some("\nHmm, greet back.\n"),
        Some("\n\nHello! How can I help?"),
    );
    check_reasoning(
        &p,
        "<think>\nStill working on it, the max_tokens",
        Some("\nStill working on it, the max_tokens"),
        None,
    );
    check_reasoning(&p, "</think>Only an answer.", None, Some("Only an answer."));
    check_reasoning(
        &p,
        "a </thin b <thinking> c</think>",
        Some("a </thin b <thinking> c"),
        None,
    );
    check_reasoning(
        &p,
        "東京について考える…</think>答えは「東京」です。",
        Some("東京について考える…"),
        Some("答えは「東京」です。"),
    );
}

#[test]
fn qwen3_outputs() {
    let p = ReasoningParser::new("qwen3").unwrap();
    check_reasoning(
        &p,
        "<think>\nThe user wants the capital of France. That's Paris.\n</think>\n\nThe capital of France is Paris.",
        Some("\nThe user wants the capital of France. That's Paris.\n"),
        Some("\n\nThe capital of France is Paris."),
    );
    check_reasoning(
        &p,
        "The capital of France is Paris.",
        None,
        Some("The capital of France is Paris."),
    );
    check_reasoning(
        &p,
        "<think>\n\n</think>\n\nHi!",
        Some("\n\n"),
        Some("\n\nHi!"),
    );
    check_reasoning(
        &p,
        "reasoning?</think>answer",
        None,
        Some("reasoning?</think>answer"),
    );
    check_reasoning(
        &p,
        "<think>cut off mid-thought <",
        Some("cut off mid-thought <"),
        None,
    );
    check_reasoning(
        &p,
        "<<think>>x</think></think>",
        Some(">x"),
        Some("<</think>"),
    );
    check_reasoning(&p, "<think>ü</think>ß", Some("ü"), Some("ß"));
}

#[test]
fn generic_tag_outputs() {
    let p = ReasoningParser::with_tags("<seed:think>", "</seed:think>").unwrap();
    check_reasoning(
        &p,
        "<seed:think>plan it</seed:think>Done.",
        Some("plan it"),
        Some("Done."),
    );
    check_reasoning(
        &p,
        "<seed:thin</seed:think>",
        None,
        Some("<seed:thin</seed:think>"),
    );
    let p = p.starts_in_reasoning(true);
    check_reasoning(
        &p,
        "plan it</seed:think>Done.",
        Some("plan it"),
        Some("Done."),
    );
    // Tags where one is a prefix of the other: at one position the end tag wins, and a
    // start tag that is still partial makes a later whole end tag wait.
    let p = ReasoningParser::with_tags("<<", "<")
        .unwrap()
        .starts_in_reasoning(true);
    check_reasoning(&p, "a<<b<c", Some("a"), Some("<b<c"));
    let p = ReasoningParser::with_tags("<a<b>", "<b").unwrap();
    check_reasoning(&p, "x<a<b>y<b z", Some("y"), Some("x z"));
    check_reasoning(&p, "x<a<b", None, Some("x<a<b"));
}

#[test]
fn unknown_parsers_are_errors_naming_them() {
    let e = ReasoningParser::new("nope_r2").unwrap_err().to_string();
    assert!(e.contains("nope_r2"), "{e}");
    let e = ToolCallParser::new("nope_xml").unwrap_err().to_string();
    assert!(e.contains("nope_xml"), "{e}");
    assert!(TOOL_CALL_PARSERS.contains(&"hermes"));
}

// ---- tool calls ----

const SEED: u64 = 0x5eed;

fn parser(name: &str) -> ToolCallParser {
    ToolCallParser::new(name).unwrap().with_id_seed(SEED)
}

/// Streams `deltas` through a fresh copy of `parser` and rebuilds the non-streaming
/// result, checking OpenAI's chunk shape on the way.
fn stream_tools(parser: &ToolCallParser, deltas: &[&str]) -> ExtractedToolCalls {
    let mut p = parser.clone();
    p.reset();
    let mut p = p.with_id_seed(SEED);
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    let mut absorb = |d: llmrt::output::parsers::ToolCallDelta| {
        content.push_str(&d.content);
        for chunk in d.tool_calls {
            if chunk.index == calls.len() {
                let (id, name) = (
                    chunk.id.expect("first chunk has id"),
                    chunk.name.expect("and name"),
                );
                calls.push(ToolCall {
                    id,
                    name,
                    arguments: chunk.arguments,
                });
            } else {
                assert_eq!(chunk.index + 1, calls.len(), "chunks come in index order");
                assert!(chunk.id.is_none() && chunk.name.is_none());
                calls[chunk.index].arguments.push_str(&chunk.arguments);
            }
        }
    };
    for d in deltas {
        absorb(p.push(d));
    }
    absorb(p.finish());
    ExtractedToolCalls {
        tools_called: !calls.is_empty(),
        tool_calls: calls,
        content: (!content.is_empty()).then_some(content),
    }
}

/// Checks `extract` against the expected (name, arguments) list and content, then every
/// split of the text against `extract`.
fn check_tools(name: &str, text: &str, want_calls: &[(&str, Value)], want_content: Option<&str>) {
    let p = parser(name);
    let got = p.extract(text);
    let calls: Vec<(&str, Value)> = got
        .tool_calls
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                serde_json::from_str(&c.arguments).expect("arguments are JSON"),
            )
        })
        .collect();
    assert_eq!(calls, want_calls, "{name} calls of {text:?}");
    assert_eq!(
        got.content.as_deref(),
        want_content,
        "{name} content of {text:?}"
    );
    assert_eq!(got.tools_called, !want_calls.is_empty());
    let mut ids: Vec<&str> = got.tool_calls.iter().map(|c| c.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), got.tool_calls.len(), "ids are distinct");
    for deltas in splits(text) {
        assert_eq!(stream_tools(&p, &deltas), got, "{name} deltas {deltas:?}");
    }
}

#[test]
fn hermes_outputs() {
    check_tools(
        "hermes",
        "I'll look up both cities.\n<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Tokyo\", \"unit\": \"celsius\"}}\n</tool_call>",
        &[
            ("get_current_weather", json!({"location": "San Francisco, CA", "unit": "fahrenheit"})),
            ("get_current_weather", json!({"location": "Tokyo", "unit": "celsius"})),
        ],
        Some("I'll look up both cities.\n"),
    );
    check_tools(
        "hermes",
        "<tool_call>\n{\"name\": \"search\", \"arguments\": \"{\\\"q\\\": \\\"rust <tool_call>\\\"}\"}\n</tool_call>\nI searched; results follow.",
        &[("search", json!({"q": "rust <tool_call>"}))],
        Some("I searched; results follow."),
    );
    check_tools(
        "hermes",
        "No tools needed: 2 < 3 and <tool is fine.",
        &[],
        Some("No tools needed: 2 < 3 and <tool is fine."),
    );
    check_tools(
        "hermes",
        "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"tz\": \"Europe/Zürich\"}}",
        &[("get_time", json!({"tz": "Europe/Zürich"}))],
        None,
    );
}

#[test]
fn hermes_malformed_is_content() {
    let broken = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}\n</tool_call>";
    check_tools("hermes", broken, &[], Some(broken));
    let cut = "Sure.<tool_call>{\"name\": \"f\", \"argu";
    check_tools("hermes", cut, &[], Some(cut));
    check_tools(
        "hermes",
        "<tool_call>not json</tool_call>ok",
        &[],
        Some("<tool_call>not json</tool_call>ok"),
    );
    // One bad block does not spoil a good one.
    check_tools(
        "hermes",
        "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"oops\": 1}</tool_call>",
        &[("a", json!({}))],
        Some("<tool_call>{\"oops\": 1}</tool_call>"),
    );
}

#[test]
fn llama3_json_outputs() {
    check_tools(
        "llama3_json",
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 3}}; {\"name\": \"get_time\", \"parameters\": {\"tz\": \"Europe/Paris\"}}",
        &[
            ("get_weather", json!({"city": "Paris", "days": 3})),
            ("get_time", json!({"tz": "Europe/Paris"})),
        ],
        None,
    );
    check_tools(
        "llama3_json",
        "\n{\"name\": \"lookup\", \"arguments\": {\"q\": \"{nested} ; braces\"}}\nThat is the call.",
        &[("lookup", json!({"q": "{nested} ; braces"}))],
        Some("That is the call."),
    );
    check_tools(
        "llama3_json",
        "The weather in Paris is sunny.",
        &[],
        Some("The weather in Paris is sunny."),
    );
    check_tools(
        "llama3_json",
        "{\"answer\": 42}",
        &[],
        Some("{\"answer\": 42}"),
    );
    let bad = "{\"name\": \"f\", \"parameters\": {\"a\": }}";
    check_tools("llama3_json", bad, &[], Some(bad));
    let cut = "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": 1";
    check_tools("llama3_json", cut, &[], Some(cut));
    let open =
        "{\"name\": \"f\", \"parameters\": {\"a\": 1, \"b\": [2, 3], oops and then more words";
    check_tools("llama3_json", open, &[], Some(open));
}

#[test]
fn mistral_outputs() {
    check_tools(
        "mistral",
        "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\"}}, {\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Lyon, France\", \"format\": \"celsius\"}}]",
        &[
            ("get_current_weather", json!({"location": "Paris, France", "format": "celsius"})),
            ("get_current_weather", json!({"location": "Lyon, France", "format": "celsius"})),
        ],
        None,
    );
    check_tools(
        "mistral",
        "Let me check.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[CALL_ID]a1B2c3D4e[ARGS]{\"tz\": \"CET\"}",
        &[("get_weather", json!({"city": "Paris"})), ("get_time", json!({"tz": "CET"}))],
        Some("Let me check."),
    );
    check_tools(
        "mistral",
        "[TOOL_CALLS]add{\"a\": 3.5, \"b\": 4}",
        &[("add", json!({"a": 3.5, "b": 4}))],
        None,
    );
    let bad = "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {]";
    check_tools("mistral", bad, &[], Some(bad));
    check_tools(
        "mistral",
        "[TOOL_CALLS]Sorry, no tool.",
        &[],
        Some("[TOOL_CALLS]Sorry, no tool."),
    );
    check_tools(
        "mistral",
        "Plain [TOOL answer.",
        &[],
        Some("Plain [TOOL answer."),
    );
}

#[test]
fn pythonic_outputs() {
    check_tools(
        "pythonic",
        "[get_weather(city='San Francisco', metric='celsius'), get_time(tz=\"America/Los_Angeles\")]",
        &[
            ("get_weather", json!({"city": "San Francisco", "metric": "celsius"})),
            ("get_time", json!({"tz": "America/Los_Angeles"})),
        ],
        None,
    );
    check_tools(
        "pythonic",
        "[book_flight(passengers=[{'name': 'Ann', 'age': 31, 'vip': True}, {'name': 'Bo', 'age': None}], price=-12.5e2, seats=(1, 2), note='it\\'s \"fine\", ok]', extra={})]\nBooked.",
        &[(
            "book_flight",
            json!({
                "passengers": [{"name": "Ann", "age": 31, "vip": true}, {"name": "Bo", "age": null}],
                "price": -1250.0, "seats": [1, 2], "note": "it's \"fine\", ok]", "extra": {}
            }),
        )],
        Some("Booked."),
    );
    check_tools(
        "pythonic",
        "<|python_start|>[f(x=1)]<|python_end|>",
        &[("f", json!({"x": 1}))],
        None,
    );
    check_tools("pythonic", "Sure! [f(x=1)]", &[], Some("Sure! [f(x=1)]"));
    for garbage in [
        "[get_weather(city=)]",
        "[not a call]",
        "[f(1, 2)]",
        "[f(x='unterminated)]",
        "[[[[",
        "[Notes on the plan: nothing here ever closes the bracket, and it goes on.",
    ] {
        check_tools("pythonic", garbage, &[], Some(garbage));
    }
}

#[test]
fn every_parser_survives_arbitrary_text() {
    let junk = [
        "",
        "<tool_call><tool_call></tool_call></tool_call>",
        "[TOOL_CALLS][TOOL_CALLS][ARGS]{",
        "<|python_tag|><|python_tag|>;;{}",
        "[f(x=[1,(2,{3:'",
        "\u{0}\u{ffff}é😀<|python_start|>[",
        "{\"name\": \"f\", \"parameters\": {}};",
    ];
    for name in TOOL_CALL_PARSERS {
        for text in junk {
            let got = parser(name).extract(text);
            for deltas in splits(text) {
                assert_eq!(
                    stream_tools(&parser(name), &deltas),
                    got,
                    "{name} {deltas:?}"
                );
            }
        }
    }
}
