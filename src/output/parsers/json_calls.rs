//! The JSON tool-call formats: `hermes`, `llama3_json` and `mistral` (see `tool_calls`
//! for the shared semantics). Each `*_step` looks at the front of the unparsed text and
//! decides what it is, or waits when only more text can tell.

use serde_json::Value;

use super::scan::{marker_at, scan, ws_len, Marker, Scan};
use super::tool_calls::{Phase, RawCall, Step};

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_BOT: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";

/// A JSON value at the start of a text.
enum Decoded {
    /// The value and the bytes it spans.
    Value(Value, usize),
    /// The text ends inside the value.
    Incomplete,
    Invalid,
}

/// Decodes the JSON value that starts `s` (which starts with `{` or `[`), ignoring what
/// follows it, as Python's `raw_decode`. serde_json reports a text cut short as an EOF
/// error, which tells "wait for more" from "not JSON".
fn decode_prefix(s: &str) -> Decoded {
    let mut values = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    match values.next() {
        Some(Ok(value)) => Decoded::Value(value, values.byte_offset()),
        Some(Err(e)) if e.is_eof() => Decoded::Incomplete,
        Some(Err(_)) => Decoded::Invalid,
        None => Decoded::Incomplete,
    }
}

/// The arguments as compact JSON text: an object, or a string holding one; missing or
/// null means no arguments.
fn arguments_text(args: Option<&Value>) -> Option<String> {
    match args {
        None | Some(Value::Null) => Some("{}".to_string()),
        Some(v @ Value::Object(_)) => serde_json::to_string(v).ok(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => serde_json::to_string(&v).ok(),
            _ => None,
        },
        Some(_) => None,
    }
}

/// `{"name": .., "arguments"|"parameters": ..}` as a call. Llama 3 needs the arguments
/// key: its calls are told from a plain JSON answer only by their shape.
fn call_from_object(value: &Value, require_arguments: bool) -> Option<RawCall> {
    let obj = value.as_object()?;
    let name = obj.get("name")?.as_str().filter(|n| !n.is_empty())?;
    let args = obj.get("arguments").or_else(|| obj.get("parameters"));
    if require_arguments && args.is_none() {
        return None;
    }
    Some(RawCall {
        name: name.to_string(),
        arguments: arguments_text(args)?,
    })
}

/// Plain text before `marker`, holding back a possible marker prefix; None when the marker
/// starts `buf`.
fn text_before(buf: &str, marker: &str, at_end: bool) -> Option<Step> {
    match scan(buf, &[marker], at_end) {
        Scan::Clear => Some(Step::Content(buf.len())),
        Scan::Partial { at: 0 } => Some(Step::Wait),
        Scan::Partial { at } | Scan::Found { at, .. } if at > 0 => Some(Step::Content(at)),
        _ => None,
    }
}

/// Everything from here on is content (start-anchored formats that saw no call).
pub(super) fn to_text(phase: &mut Phase, buf: &str) -> Step {
    *phase = Phase::Text;
    Step::Content(buf.len())
}

// ---- hermes ----

pub(super) fn hermes_step(buf: &str, at_end: bool) -> Step {
    if let Some(step) = text_before(buf, HERMES_OPEN, at_end) {
        return step;
    }
    let body_start = HERMES_OPEN.len();
    let (body, end) = match buf[body_start..].find(HERMES_CLOSE) {
        Some(i) => (
            &buf[body_start..body_start + i],
            body_start + i + HERMES_CLOSE.len(),
        ),
        // vLLM also takes a block the output ends in without its closing tag.
        None if at_end => (&buf[body_start..], buf.len()),
        None => return Step::WaitClose(&['>']),
    };
    let call = serde_json::from_str::<Value>(body.trim())
        .ok()
        .and_then(|v| call_from_object(&v, false));
    match call {
        Some(call) => Step::Calls(end, vec![call]),
        None => Step::Content(end),
    }
}

// ---- llama3_json ----

pub(super) fn llama3_step(phase: &mut Phase, buf: &str, at_end: bool) -> Step {
    match *phase {
        Phase::Text => Step::Content(buf.len()),
        Phase::Start => {
            let mut i = ws_len(buf);
            match marker_at(&buf[i..], PYTHON_TAG, at_end) {
                Marker::Maybe => return Step::Wait,
                Marker::Yes => {
                    i += PYTHON_TAG.len();
                    i += ws_len(&buf[i..]);
                }
                Marker::No => {}
            }
            llama3_object(phase, buf, i, at_end)
        }
        // Calls are separated by `;` (the whitespace after a call is already gone).
        Phase::AfterCall if buf.starts_with(';') => {
            let i = 1 + ws_len(&buf[1..]);
            llama3_object(phase, buf, i, at_end)
        }
        Phase::AfterCall => to_text(phase, buf),
    }
}

/// A call object at `buf[i..]`, the text before it being markup of the call.
fn llama3_object(phase: &mut Phase, buf: &str, i: usize, at_end: bool) -> Step {
    let rest = &buf[i..];
    if rest.is_empty() {
        return if at_end {
            to_text(phase, buf)
        } else {
            Step::Wait
        };
    }
    if !rest.starts_with('{') {
        return to_text(phase, buf);
    }
    match decode_prefix(rest) {
        Decoded::Value(v, n) => match call_from_object(&v, true) {
            Some(call) => {
                *phase = Phase::AfterCall;
                Step::Calls(i + n, vec![call])
            }
            None => to_text(phase, buf),
        },
        Decoded::Incomplete if !at_end => Step::WaitClose(&['}']),
        _ => to_text(phase, buf),
    }
}

// ---- mistral ----

/// How parsing a call that starts at a marker went.
enum Parsed {
    Calls(usize, Vec<RawCall>),
    /// The text ends before the name and markers do.
    Incomplete,
    /// The text ends inside the JSON.
    IncompleteJson,
    Invalid,
}

pub(super) fn mistral_step(buf: &str, at_end: bool) -> Step {
    if let Some(step) = text_before(buf, MISTRAL_BOT, at_end) {
        return step;
    }
    let i = MISTRAL_BOT.len() + ws_len(&buf[MISTRAL_BOT.len()..]);
    let rest = &buf[i..];
    let parsed = if rest.starts_with(['[', '{']) {
        mistral_json(rest)
    } else {
        mistral_named(rest)
    };
    match parsed {
        Parsed::Calls(n, calls) => Step::Calls(i + n, calls),
        Parsed::Incomplete if !at_end => Step::Wait,
        Parsed::IncompleteJson if !at_end => Step::WaitClose(&['}', ']']),
        // Not a call: the marker is text, and the scan goes on after it.
        _ => Step::Content(MISTRAL_BOT.len()),
    }
}

/// `[{"name": .., "arguments": {..}}, ..]` (or one object).
fn mistral_json(rest: &str) -> Parsed {
    let (value, n) = match decode_prefix(rest) {
        Decoded::Value(v, n) => (v, n),
        Decoded::Incomplete => return Parsed::IncompleteJson,
        Decoded::Invalid => return Parsed::Invalid,
    };
    let items = match &value {
        Value::Array(items) => items.iter().collect(),
        obj => vec![obj],
    };
    let calls: Option<Vec<RawCall>> = items.iter().map(|v| call_from_object(v, false)).collect();
    match calls {
        Some(calls) if !calls.is_empty() => Parsed::Calls(n, calls),
        _ => Parsed::Invalid,
    }
}

/// `name[ARGS]{..}`, `name[CALL_ID]id[ARGS]{..}` or `name{..}` (v11+ tokenizers).
fn mistral_named(rest: &str) -> Parsed {
    let is_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let name_len = rest.find(|c: char| !is_name(c)).unwrap_or(rest.len());
    if name_len == rest.len() {
        return Parsed::Incomplete;
    }
    if name_len == 0 {
        return Parsed::Invalid;
    }
    let mut i = name_len;
    match marker_at(&rest[i..], MISTRAL_CALL_ID, false) {
        Marker::Maybe => return Parsed::Incomplete,
        Marker::Yes => {
            i += MISTRAL_CALL_ID.len();
            match rest[i..].find(|c: char| !c.is_ascii_alphanumeric()) {
                Some(id_len) => i += id_len,
                None => return Parsed::Incomplete,
            }
        }
        Marker::No => {}
    }
    match marker_at(&rest[i..], MISTRAL_ARGS, false) {
        Marker::Maybe => return Parsed::Incomplete,
        Marker::Yes => i += MISTRAL_ARGS.len(),
        Marker::No => {}
    }
    i += ws_len(&rest[i..]);
    if i == rest.len() {
        return Parsed::Incomplete;
    }
    if !rest[i..].starts_with('{') {
        return Parsed::Invalid;
    }
    match decode_prefix(&rest[i..]) {
        Decoded::Value(args, n) => match arguments_text(Some(&args)) {
            Some(arguments) => {
                let name = rest[..name_len].to_string();
                Parsed::Calls(i + n, vec![RawCall { name, arguments }])
            }
            None => Parsed::Invalid,
        },
        Decoded::Incomplete => Parsed::IncompleteJson,
        Decoded::Invalid => Parsed::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_prefix_tells_cut_from_invalid() {
        let text = r#"{"name": "f", "arguments": {"a": [1, 2.5e-3, true, null], "s": "\u00e9\n"}}"#;
        assert!(matches!(decode_prefix(text), Decoded::Value(_, n) if n == text.len()));
        for (cut, _) in text.char_indices().skip(1) {
            assert!(
                matches!(decode_prefix(&text[..cut]), Decoded::Incomplete),
                "prefix {:?}",
                &text[..cut]
            );
        }
        assert!(matches!(decode_prefix("{\"a\": }"), Decoded::Invalid));
        assert!(matches!(
            decode_prefix("{\"a\": 1} rest"),
            Decoded::Value(_, 8)
        ));
    }

    #[test]
    fn arguments_forms() {
        let obj = serde_json::json!({"b": 1, "a": {"c": "x"}});
        assert_eq!(
            arguments_text(Some(&obj)).unwrap(),
            r#"{"b":1,"a":{"c":"x"}}"#
        );
        let s = Value::String(r#"{"q": "rust"}"#.to_string());
        assert_eq!(arguments_text(Some(&s)).unwrap(), r#"{"q":"rust"}"#);
        assert_eq!(arguments_text(None).unwrap(), "{}");
        assert!(arguments_text(Some(&Value::String("not json".into()))).is_none());
        assert!(arguments_text(Some(&serde_json::json!([1]))).is_none());
    }

    #[test]
    fn call_objects() {
        let v = serde_json::json!({"name": "f", "parameters": {"x": 1}});
        assert_eq!(call_from_object(&v, true).unwrap().arguments, r#"{"x":1}"#);
        let v = serde_json::json!({"name": "f"});
        assert!(call_from_object(&v, true).is_none());
        assert_eq!(call_from_object(&v, false).unwrap().arguments, "{}");
        assert!(call_from_object(&serde_json::json!({"answer": 42}), false).is_none());
        assert!(call_from_object(&serde_json::json!({"name": 3}), false).is_none());
    }
}
