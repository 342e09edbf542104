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

#[test]
fn batch_runs_every_request_and_reports_metrics() {
    let dir = fixtures().join("models").join("llama");
    let expected = read_json(&dir.join("expected.json"));
    let tmp = std::env::temp_dir().join(format!("llmrt-batch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut input = String::new();
    for p in 0..6 {
        let line = serde_json::json!({
            "id": format!("req-{p}"),
            "prompt_token_ids": expected["prompts"][p]["ids"],
            "sampling": {"temperature": 0, "max_tokens": 32, "ignore_eos": true},
        });
        input.push_str(&format!("{line}\n"));
    }
    input.push_str("{\"id\": \"bad\", \"prompt\": \"x\", \"sampling\": {\"temprature\": 1}}\n");
    input.push_str("{\"id\": \"text\", \"prompt\": \"The quick brown fox\", \"sampling\": {\"max_tokens\": 5, \"ignore_eos\": true}}\n");
    std::fs::write(tmp.join("in.jsonl"), input).unwrap();
    let out = llmrt()
        .args(["batch", "--model"])
        .arg(&dir)
        .args([
            "--max-num-batched-tokens",
            "64",
            "--block-size",
            "8",
            "--threads",
            "2",
            "--input",
        ])
        .arg(tmp.join("in.jsonl"))
        .arg("--output")
        .arg(tmp.join("out.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(tmp.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    for p in 0..6 {
        let l = &lines[p];
        assert_eq!(l["id"], format!("req-{p}"));
        assert_eq!(
            ids(&l["token_ids"]),
            ids(&expected["greedy_ids"][p]),
            "request {p}"
        );
        assert_eq!(
            ids(&l["prompt_token_ids"]),
            ids(&expected["prompts"][p]["ids"])
        );
        assert_eq!(l["finish_reason"], "length");
        assert_eq!(l["usage"]["completion_tokens"], 32);
    }
    assert!(lines[6]["error"].as_str().unwrap().contains("temprature"));
    assert_eq!(ids(&lines[7]["token_ids"]).len(), 5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let metrics: serde_json::Value =
        serde_json::from_str(stderr.lines().last().unwrap()).expect("metrics JSON on stderr");
    assert_eq!(metrics["generation_tokens"], 6 * 32 + 5);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bench_prints_one_json_object_with_the_stable_keys() {
    let dir = fixtures().join("models").join("qwen3");
    let out = llmrt()
        .args(["bench", "--model"])
        .arg(&dir)
        .args([
            "--threads",
            "2",
            "--pp",
            "64",
            "--tg",
            "16",
            "--concurrency",
            "4",
            "--prompt-len",
            "16",
            "--gen-len",
            "8",
            "--reps",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "pp64_tok_s",
        "tg16_tok_s",
        "concurrent4_out_tok_s",
        "concurrent4_ttft_p50_s",
        "peak_rss_bytes",
        "load_s",
    ] {
        assert!(
            v[key].as_f64().is_some_and(|x| x > 0.0),
            "{key} missing or not positive in {v}"
        );
    }
}

/// `--logprobs K` / `--prompt-logprobs K` with `--output json`: K `[token_id, logprob]`
/// pairs per position, highest first, matching the reference's top-5.
#[test]
fn generate_json_carries_logprobs_and_prompt_logprobs() {
    let dir = fixtures().join("models").join("llama");
    let expected = read_json(&dir.join("expected.json"));
    let prompt = ids(&expected["prompts"][2]["ids"]);
    let list: Vec<String> = prompt.iter().map(|t| t.to_string()).collect();
    let out = llmrt()
        .args(["generate", "--model"])
        .arg(&dir)
        .args(["--prompt-token-ids", &list.join(","), "--max-tokens", "8"])
        .args(["--ignore-eos", "--logprobs", "5", "--prompt-logprobs", "5"])
        .args(["--output", "json", "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let compare = |ours: &serde_json::Value, reference: &serde_json::Value, t: usize| {
        let pairs = ours.as_array().unwrap();
        assert_eq!(pairs.len(), 5);
        let ref_ids = ids(&reference["ids"][t]);
        let ref_lp = floats(&reference["logprobs"][t]);
        if ref_lp[0] - ref_lp[1] >= 2e-3 {
            assert_eq!(pairs[0][0].as_u64().unwrap() as u32, ref_ids[0]);
        }
        for pair in pairs {
            let id = pair[0].as_u64().unwrap() as u32;
            if let Some(k) = ref_ids.iter().position(|&r| r == id) {
                assert!((pair[1].as_f64().unwrap() - ref_lp[k]).abs() < 2e-3);
            }
        }
    };
    let plp = v["prompt_logprobs"].as_array().unwrap();
    assert_eq!(plp.len(), prompt.len());
    assert!(plp[0].is_null());
    for (t, entry) in plp.iter().enumerate().skip(1) {
        compare(entry, &expected["prompt_top5"][2], t - 1);
    }
    let lp = v["logprobs"].as_array().unwrap();
    assert_eq!(lp.len(), 8);
    for (i, step) in lp.iter().enumerate() {
        compare(step, &expected["greedy_top5"][2], i);
    }
}

/// Batch lines asking for n > 1 or beam search get one object per sequence.
#[test]
fn batch_lines_carry_sequences_and_logprobs() {
    let dir = fixtures().join("models").join("llama");
    let expected = read_json(&dir.join("expected.json"));
    let tmp = std::env::temp_dir().join(format!("llmrt-batch-seq-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let prompt = &expected["prompts"][2]["ids"];
    let lines = [
        serde_json::json!({"prompt_token_ids": prompt,
            "sampling": {"n": 3, "seed": 4, "max_tokens": 6, "ignore_eos": true, "logprobs": 2}}),
        serde_json::json!({"prompt_token_ids": prompt,
            "sampling": {"beam_width": 2, "n": 2, "max_tokens": 5, "ignore_eos": true}}),
    ];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(tmp.join("in.jsonl"), input).unwrap();
    let out = llmrt()
        .args(["batch", "--model"])
        .arg(&dir)
        .args(["--threads", "2", "--input"])
        .arg(tmp.join("in.jsonl"))
        .arg("--output")
        .arg(tmp.join("out.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<serde_json::Value> = std::fs::read_to_string(tmp.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let n = got[0]["outputs"].as_array().unwrap();
    assert_eq!(n.len(), 3);
    for (i, o) in n.iter().enumerate() {
        assert_eq!(o["index"], i);
        assert_eq!(ids(&o["token_ids"]).len(), 6);
        assert_eq!(o["logprobs"].as_array().unwrap().len(), 6);
        assert_eq!(o["logprobs"][0].as_array().unwrap().len(), 2);
    }
    assert_eq!(got[0]["token_ids"], n[0]["token_ids"]);
    assert_eq!(got[0]["usage"]["completion_tokens"], 18);
    let beams = got[1]["outputs"].as_array().unwrap();
    assert_eq!(beams.len(), 2);
    let score = |o: &serde_json::Value| o["cumulative_logprob"].as_f64().unwrap();
    assert!(score(&beams[0]) >= score(&beams[1]), "best beam first");
    let _ = std::fs::remove_dir_all(&tmp);
}
