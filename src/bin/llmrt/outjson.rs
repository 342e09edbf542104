//! The JSON shapes `generate --output json` and `batch` print for sequences and logprobs.

use llmrt::sample::TokenLogprobs;
use llmrt::{CompletionOutput, Event};
use serde_json::{json, Value};

/// `[[token_id, logprob], ...]` (the top entries, most likely first) per position.
pub fn logprobs_json(list: &[TokenLogprobs]) -> Value {
    list.iter()
        .map(|p| {
            p.top
                .iter()
                .map(|l| json!([l.token_id, l.logprob]))
                .collect::<Value>()
        })
        .collect()
}

/// As `logprobs_json` with `null` for the first prompt token (nothing predicts it).
pub fn prompt_logprobs_json(list: &[TokenLogprobs]) -> Value {
    std::iter::once(Value::Null)
        .chain(
            list.iter()
                .map(|p| logprobs_json(std::slice::from_ref(p))[0].clone()),
        )
        .collect()
}

/// As vLLM: the stop string, or the stop token id, that ended the sequence.
fn stop_reason(stop_string: &Option<String>, stop_token_id: Option<u32>) -> Value {
    match (stop_string, stop_token_id) {
        (Some(s), _) => json!(s),
        (None, Some(t)) => json!(t),
        (None, None) => Value::Null,
    }
}

/// One sequence; `logprobs` only when the request asked for them.
pub fn sequence_json(o: &CompletionOutput, with_logprobs: bool) -> Value {
    let mut v = json!({
        "index": o.index,
        "token_ids": o.token_ids,
        "text": o.text,
        "finish_reason": o.finish_reason.as_str(),
        "stop_reason": stop_reason(&o.stop_string, o.stop_token_id),
        "cumulative_logprob": o.cumulative_logprob,
    });
    if with_logprobs {
        v["logprobs"] = logprobs_json(&o.logprobs);
    }
    v
}

/// Folds a request's events into its sequences, by index.
pub fn sequences_from_events(events: &[Event]) -> Vec<CompletionOutput> {
    let mut seqs = Vec::new();
    llmrt::sequences_from_events(&mut seqs, events);
    seqs
}
