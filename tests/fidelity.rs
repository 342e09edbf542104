//! The decoder against transformers on the tiny models of every architecture: logits,
//! prompt top-5 logprobs and greedy tokens, under every batching and paging shape.

mod common;
use common::*;

const TOL: f64 = 1e-3;

const SHAPES: &[RunShape] = &[
    RunShape {
        all_in_one_batch: true,
        prefill_chunk: 512,
        block_size: 16,
    },
    RunShape {
        all_in_one_batch: false,
        prefill_chunk: 512,
        block_size: 16,
    },
    RunShape {
        all_in_one_batch: true,
        prefill_chunk: 1,
        block_size: 16,
    },
    RunShape {
        all_in_one_batch: true,
        prefill_chunk: 7,
        block_size: 1,
    },
    RunShape {
        all_in_one_batch: true,
        prefill_chunk: 64,
        block_size: 32,
    },
    RunShape {
        all_in_one_batch: false,
        prefill_chunk: 7,
        block_size: 32,
    },
    RunShape {
        all_in_one_batch: false,
        prefill_chunk: 64,
        block_size: 1,
    },
];

fn check_model(name: &str) {
    let dir = fixtures().join("models").join(name);
    let expected = read_json(&dir.join("expected.json"));
    let prompts: Vec<Vec<u32>> = expected["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids(&p["ids"]))
        .collect();
    let vocab = expected["last_logits"][0].as_array().unwrap().len();
    for shape in SHAPES {
        let run = run_prompts(&dir, &prompts, 32, *shape);
        for (p, prompt) in prompts.iter().enumerate() {
            let what = format!("{name} prompt {p} {shape:?}");
            let logits = &run.prompt_logits[p];
            let last = &logits[(prompt.len() - 1) * vocab..];
            let reference = floats(&expected["last_logits"][p]);
            let max_diff = last
                .iter()
                .zip(&reference)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(max_diff <= TOL, "{what}: last logits differ by {max_diff}");
            let top5 = &expected["prompt_top5"][p];
            for t in 0..prompt.len() {
                let lp = log_softmax(&logits[t * vocab..(t + 1) * vocab]);
                check_top5(
                    &format!("{what} position {t}"),
                    &lp,
                    &ids(&top5["ids"][t]),
                    &floats(&top5["logprobs"][t]),
                    top5["sixth_logprob"][t].as_f64().unwrap(),
                    TOL,
                );
            }
            assert_eq!(
                run.greedy[p],
                ids(&expected["greedy_ids"][p]),
                "{what}: greedy tokens"
            );
        }
    }
}

#[test]
fn llama_matches_transformers() {
    check_model("llama");
}

#[test]
fn qwen2_matches_transformers() {
    check_model("qwen2");
}

#[test]
fn qwen3_matches_transformers() {
    check_model("qwen3");
}

#[test]
fn mixtral_matches_transformers() {
    check_model("mixtral");
}

#[test]
fn qwen2moe_matches_transformers() {
    check_model("qwen2moe");
}
