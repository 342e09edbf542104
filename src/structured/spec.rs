//! The request-side description of a structured output: vLLM's `structured_outputs` field
//! (`StructuredOutputsParams`), read from JSON and checked before anything is compiled.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// What the generated text must match. Exactly one kind per request, as in vLLM.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputConstraint {
    /// A JSON Schema (an object or a boolean schema); the output is one JSON value valid
    /// against it.
    Json(Value),
    /// A regular expression (Rust `regex` syntax, no look-around) the whole output matches.
    Regex(String),
    /// The output is exactly one of these strings.
    Choice(Vec<String>),
    /// A context-free grammar: llguidance's Lark dialect, or llama.cpp's GBNF (recognised
    /// by a `name ::= ...` rule; converted to Lark, start symbol `root`).
    Grammar(String),
    /// Any JSON object (the schema `{"type": "object"}`).
    JsonObject,
}

impl OutputConstraint {
    /// The `structured_outputs` field this kind is given by.
    pub fn field(&self) -> &'static str {
        match self {
            OutputConstraint::Json(_) => "json",
            OutputConstraint::Regex(_) => "regex",
            OutputConstraint::Choice(_) => "choice",
            OutputConstraint::Grammar(_) => "grammar",
            OutputConstraint::JsonObject => "json_object",
        }
    }
}

/// A request's `structured_outputs`: the constraint and vLLM's options for JSON output.
#[derive(Clone, Debug, PartialEq)]
pub struct StructuredOutputs {
    pub constraint: OutputConstraint,
    /// JSON kinds: no whitespace between tokens of the JSON text (vLLM's
    /// `disable_any_whitespace`). By default JSON whitespace is allowed there, at most 20
    /// characters a gap.
    pub disable_any_whitespace: bool,
    /// JSON kinds: objects of the schema that do not say `additionalProperties` get
    /// `additionalProperties: false` (vLLM's `disable_additional_properties`).
    pub disable_additional_properties: bool,
    /// JSON kinds: the regex whitespace between JSON tokens must match (vLLM's
    /// `whitespace_pattern`); overrides `disable_any_whitespace`.
    pub whitespace_pattern: Option<String>,
}

/// The fields that each name one kind, in the order errors list them.
const KIND_FIELDS: [&str; 5] = ["json", "regex", "choice", "grammar", "json_object"];

fn invalid(field: &str, what: impl std::fmt::Display) -> Error {
    Error::InvalidRequest(format!("structured_outputs.{field}: {what}"))
}

impl StructuredOutputs {
    /// A constraint with vLLM's default options.
    pub fn new(constraint: OutputConstraint) -> Self {
        StructuredOutputs {
            constraint,
            disable_any_whitespace: false,
            disable_additional_properties: false,
            whitespace_pattern: None,
        }
    }

    pub fn json(schema: Value) -> Self {
        Self::new(OutputConstraint::Json(schema))
    }

    pub fn regex(regex: impl Into<String>) -> Self {
        Self::new(OutputConstraint::Regex(regex.into()))
    }

    pub fn choice<S: Into<String>>(choices: impl IntoIterator<Item = S>) -> Self {
        Self::new(OutputConstraint::Choice(
            choices.into_iter().map(Into::into).collect(),
        ))
    }

    pub fn grammar(grammar: impl Into<String>) -> Self {
        Self::new(OutputConstraint::Grammar(grammar.into()))
    }

    pub fn json_object() -> Self {
        Self::new(OutputConstraint::JsonObject)
    }

    /// Reads vLLM's `structured_outputs` object. Exactly one of `json` (a schema object or
    /// boolean, or a string holding one), `regex`, `choice` (non-empty list of strings),
    /// `grammar` and `json_object: true` must be given; `null` counts as absent. Also read:
    /// `disable_any_whitespace`, `disable_additional_properties`, `whitespace_pattern`, and
    /// `disable_fallback` (accepted, no effect: there is one backend and no fallback).
    /// Anything else, `structural_tag` included, is `Error::InvalidRequest` naming the field.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| {
            Error::InvalidRequest(format!(
                "structured_outputs must be a JSON object, got {}",
                type_name(value)
            ))
        })?;
        let mut kinds: Vec<OutputConstraint> = Vec::new();
        let mut out = StructuredOutputs::new(OutputConstraint::JsonObject);
        for (key, v) in obj {
            if v.is_null() {
                continue;
            }
            match key.as_str() {
                "json" => kinds.push(OutputConstraint::Json(read_schema(v)?)),
                "regex" => kinds.push(OutputConstraint::Regex(read_str(key, v)?)),
                "grammar" => {
                    let g = read_str(key, v)?;
                    if g.trim().is_empty() {
                        return Err(invalid(key, "the grammar is empty"));
                    }
                    kinds.push(OutputConstraint::Grammar(g));
                }
                "choice" => kinds.push(OutputConstraint::Choice(read_choice(v)?)),
                "json_object" => {
                    if read_bool(key, v)? {
                        kinds.push(OutputConstraint::JsonObject);
                    }
                }
                "disable_any_whitespace" => out.disable_any_whitespace = read_bool(key, v)?,
                "disable_additional_properties" => {
                    out.disable_additional_properties = read_bool(key, v)?
                }
                "whitespace_pattern" => out.whitespace_pattern = Some(read_str(key, v)?),
                "disable_fallback" => {
                    read_bool(key, v)?;
                }
                "structural_tag" => {
                    return Err(invalid(key, "is not supported"));
                }
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "structured_outputs: unknown field `{other}` (expected one of {}, \
                         disable_any_whitespace, disable_additional_properties, \
                         whitespace_pattern)",
                        KIND_FIELDS.join(", ")
                    )))
                }
            }
        }
        match kinds.len() {
            0 => Err(Error::InvalidRequest(format!(
                "structured_outputs: one of {} is required",
                KIND_FIELDS.join(", ")
            ))),
            1 => {
                out.constraint = kinds.pop().unwrap();
                Ok(out)
            }
            _ => {
                let given: Vec<String> = kinds.iter().map(|k| format!("`{}`", k.field())).collect();
                Err(Error::InvalidRequest(format!(
                    "structured_outputs: only one of {} may be given, got {}",
                    KIND_FIELDS.join(", "),
                    given.join(" and ")
                )))
            }
        }
    }

    /// The `structured_outputs` object that `from_json` reads back to `self`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let (k, v) = match &self.constraint {
            OutputConstraint::Json(s) => ("json", s.clone()),
            OutputConstraint::Regex(r) => ("regex", Value::from(r.as_str())),
            OutputConstraint::Choice(c) => ("choice", Value::from(c.clone())),
            OutputConstraint::Grammar(g) => ("grammar", Value::from(g.as_str())),
            OutputConstraint::JsonObject => ("json_object", Value::Bool(true)),
        };
        m.insert(k.into(), v);
        if self.disable_any_whitespace {
            m.insert("disable_any_whitespace".into(), Value::Bool(true));
        }
        if self.disable_additional_properties {
            m.insert("disable_additional_properties".into(), Value::Bool(true));
        }
        if let Some(p) = &self.whitespace_pattern {
            m.insert("whitespace_pattern".into(), Value::from(p.as_str()));
        }
        Value::Object(m)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_str(field: &str, v: &Value) -> Result<String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(field, format!("must be a string, got {}", type_name(v))))
}

fn read_bool(field: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| invalid(field, format!("must be a boolean, got {}", type_name(v))))
}

/// A schema given as an object, a boolean, or a string holding either (vLLM accepts both).
fn read_schema(v: &Value) -> Result<Value> {
    let schema = match v {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| invalid("json", format!("not valid JSON: {e}")))?,
        other => other.clone(),
    };
    match schema {
        Value::Object(_) | Value::Bool(_) => Ok(schema),
        other => Err(invalid(
            "json",
            format!(
                "a JSON Schema must be an object or a boolean, got {}",
                type_name(&other)
            ),
        )),
    }
}

fn read_choice(v: &Value) -> Result<Vec<String>> {
    let arr = v.as_array().ok_or_else(|| {
        invalid(
            "choice",
            format!("must be a list of strings, got {}", type_name(v)),
        )
    })?;
    if arr.is_empty() {
        return Err(invalid("choice", "the list of choices is empty"));
    }
    arr.iter()
        .enumerate()
        .map(|(i, c)| {
            c.as_str().map(str::to_string).ok_or_else(|| {
                invalid(
                    "choice",
                    format!("item {i} must be a string, got {}", type_name(c)),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        StructuredOutputs::from_json(&v).unwrap_err().to_string()
    }

    #[test]
    fn reads_each_kind() {
        let s = StructuredOutputs::from_json(&json!({"json": {"type": "integer"}})).unwrap();
        assert_eq!(
            s.constraint,
            OutputConstraint::Json(json!({"type": "integer"}))
        );
        let s = StructuredOutputs::from_json(&json!({"json": "{\"type\": \"string\"}"})).unwrap();
        assert_eq!(
            s.constraint,
            OutputConstraint::Json(json!({"type": "string"}))
        );
        let s = StructuredOutputs::from_json(&json!({"regex": "a+", "json": null})).unwrap();
        assert_eq!(s.constraint, OutputConstraint::Regex("a+".into()));
        let s = StructuredOutputs::from_json(&json!({"choice": ["a", "b"]})).unwrap();
        assert_eq!(s, StructuredOutputs::choice(["a", "b"]));
        let s = StructuredOutputs::from_json(&json!({"grammar": "start: \"x\""})).unwrap();
        assert_eq!(
            s.constraint,
            OutputConstraint::Grammar("start: \"x\"".into())
        );
        let s = StructuredOutputs::from_json(&json!({"json_object": true,
            "disable_any_whitespace": true, "whitespace_pattern": " ?",
            "disable_additional_properties": true, "disable_fallback": true}))
        .unwrap();
        assert_eq!(s.constraint, OutputConstraint::JsonObject);
        assert!(s.disable_any_whitespace && s.disable_additional_properties);
        assert_eq!(s.whitespace_pattern.as_deref(), Some(" ?"));
        assert_eq!(StructuredOutputs::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn rejects_bad_requests_naming_the_field() {
        assert!(err(json!({"regex": "a", "foo": 1})).contains("unknown field `foo`"));
        assert!(err(json!({})).contains("one of json, regex, choice, grammar, json_object"));
        assert!(err(json!({"json_object": false})).contains("is required"));
        let e = err(json!({"regex": "a", "choice": ["a"]}));
        assert!(e.contains("`regex`") && e.contains("`choice`"), "{e}");
        assert!(err(json!({"choice": []})).contains("structured_outputs.choice"));
        assert!(err(json!({"choice": ["a", 3]})).contains("item 1"));
        assert!(err(json!({"regex": 3})).contains("structured_outputs.regex: must be a string"));
        assert!(err(json!({"json": "{nope"})).contains("structured_outputs.json: not valid JSON"));
        assert!(err(json!({"json": [1]})).contains("structured_outputs.json"));
        assert!(err(json!({"grammar": "  "})).contains("structured_outputs.grammar"));
        assert!(err(json!({"structural_tag": "{}"})).contains("structural_tag"));
        assert!(err(json!("regex")).contains("must be a JSON object"));
        assert!(matches!(
            StructuredOutputs::from_json(&json!({})),
            Err(Error::InvalidRequest(_))
        ));
    }
}
