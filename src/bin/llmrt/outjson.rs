//! The JSON shapes `generate --output json` and `batch` print for sequences and logprobs.

use llmrt::sample::TokenLogprobs;
use llmrt::{CompletionOutput, Event, FinishReason};
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
    let mut seqs: Vec<CompletionOutput> = Vec::new();
    for e in events {
        let i = e.index as usize;
        while seqs.len() <= i {
            seqs.push(CompletionOutput {
                index: seqs.len() as u32,
                token_ids: vec![],
                text: String::new(),
                finish_reason: FinishReason::Length,
                stop_string: None,
                stop_token_id: None,
                cumulative_logprob: None,
                logprobs: vec![],
                reasoning_content: String::new(),
                tool_calls: vec![],
            });
        }
        let s = &mut seqs[i];
        s.token_ids.extend(&e.token_ids);
        s.text.push_str(&e.text);
        s.logprobs.extend(e.logprobs.iter().cloned());
        if e.cumulative_logprob.is_some() {
            s.cumulative_logprob = e.cumulative_logprob;
        }
        if let Some(r) = e.finish_reason {
            s.finish_reason = r;
            s.stop_string.clone_from(&e.stop_string);
            s.stop_token_id = e.stop_token_id;
        }
    }
    seqs
}
