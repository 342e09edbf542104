//! The `llmrt` binary as scripts use it.

mod common;
use common::*;
use std::process::Command;

fn llmrt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmrt"))
}

#[test]
fn generate_json_gives_the_reference_greedy_tokens() {
    let dir = fixtures().join("models").join("llama");
    let expected = read_json(&dir.join("expected.json"));
    let prompt = ids(&expected["prompts"][2]["ids"]);
    let greedy = ids(&expected["greedy_ids"][2]);
    let list: Vec<String> = prompt.iter().map(|t| t.to_string()).collect();
    let out = llmrt()
        .args(["generate", "--model"])
        .arg(&dir)
        .args([
            "--prompt-token-ids",
            &list.join(","),
            "--max-tokens",
            "32",
            "--ignore-eos",
            "--output",
            "json",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(ids(&v["prompt_token_ids"]), prompt);
    assert_eq!(ids(&v["token_ids"]), greedy);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["text"].is_string());
}

#[test]
fn generate_stops_at_eos_unless_ignored() {
    // qwen2moe prompt 1 emits <|im_end|> (the EOS, id 2) during its greedy continuation.
    let dir = fixtures().join("models").join("qwen2moe");
    let expected = read_json(&dir.join("expected.json"));
    let prompt = ids(&expected["prompts"][1]["ids"]);
    let greedy = ids(&expected["greedy_ids"][1]);
    let eos_at = greedy
        .iter()
        .position(|&t| t == 2)
        .expect("reference emits EOS");
    let list: Vec<String> = prompt.iter().map(|t| t.to_string()).collect();
    let out = llmrt()
        .args(["generate", "--model"])
        .arg(&dir)
        .args([
            "--prompt-token-ids",
            &list.join(","),
            "--max-tokens",
            "32",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v["token_ids"]), greedy[..=eos_at].to_vec());
    assert_eq!(v["finish_reason"], "stop");
}

#[test]
fn streamed_text_equals_the_decoded_tokens() {
    let dir = fixtures().join("models").join("qwen2");
    let args = [
        "--prompt",
        "The quick brown fox",
        "--max-tokens",
        "24",
        "--ignore-eos",
        "--temperature",
        "0.8",
        "--seed",
        "5",
    ];
    let text = llmrt()
        .args(["generate", "--model"])
        .arg(&dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let json = llmrt()
        .args(["generate", "--model"])
        .arg(&dir)
        .args(args)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let streamed = String::from_utf8(text.stdout).unwrap();
    assert_eq!(
        streamed.strip_suffix('\n').unwrap(),
        v["text"].as_str().unwrap()
    );
    assert_eq!(ids(&v["token_ids"]).len(), 24);
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = fixtures().join("models").join("llama");
    let cases: &[(&[&str], &str)] = &[
        (&["--prompt-token-ids", "1,2,99999"], "out of range"),
        (&["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (&["--prompt", "hi", "--top-p", "0"], "top_p"),
        (&["--prompt", "hi", "--max-tokens", "0"], "max_tokens"),
        (&[], "--prompt"),
    ];
    for (args, needle) in cases {
        let out = llmrt()
            .args(["generate", "--model"])
            .arg(&dir)
            .args(*args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: error `{err}` should mention `{needle}`"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = llmrt()
        .args(["generate", "--model", "/nonexistent/model", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
}
