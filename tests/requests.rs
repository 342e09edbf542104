//! Bad requests are refused with an error naming the problem, and the model keeps serving.

mod common;
use common::*;
use llmrt::{EngineConfig, Error, GenerateRequest, Llm, SamplingParams};

fn request(prompt: Vec<u32>, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt_token_ids: prompt,
        params,
        return_prompt_logits: false,
    }
}

#[test]
fn invalid_requests_are_errors_and_serving_continues() {
    let dir = fixtures().join("models").join("llama");
    let expected = read_json(&dir.join("expected.json"));
    let prompt = ids(&expected["prompts"][1]["ids"]);
    let greedy = ids(&expected["greedy_ids"][1]);
    let opts = EngineConfig {
        max_model_len: Some(64),
        num_threads: 2,
        ..Default::default()
    };
    let mut llm = Llm::load(&dir, opts).unwrap();
    let bad: Vec<(GenerateRequest, &str)> = vec![
        (request(vec![], SamplingParams::greedy(4)), "empty"),
        (
            request(vec![1, 512], SamplingParams::greedy(4)),
            "512 is out of range",
        ),
        (
            request(vec![1; 64], SamplingParams::greedy(4)),
            "max_model_len",
        ),
        (
            request(
                vec![1],
                SamplingParams {
                    top_k: -2,
                    ..SamplingParams::greedy(4)
                },
            ),
            "top_k",
        ),
        (
            request(
                vec![1],
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
            ),
            "temperature",
        ),
    ];
    for (req, needle) in bad {
        match llm.generate(vec![req], |_, _| {}) {
            Err(Error::InvalidRequest(msg)) => {
                assert!(msg.contains(needle), "`{msg}` should mention `{needle}`")
            }
            Err(e) => panic!("wrong error kind: {e}"),
            Ok(_) => panic!("request accepted; expected an error mentioning {needle}"),
        }
    }
    let ok = request(
        prompt,
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(32)
        },
    );
    let out = llm.generate(vec![ok], |_, _| {}).unwrap();
    assert_eq!(out[0].token_ids, greedy);
}

#[test]
fn seeded_sampling_is_reproducible_and_batch_independent() {
    let dir = fixtures().join("models").join("qwen3");
    let mut llm = Llm::load(
        &dir,
        EngineConfig {
            num_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let params = |seed| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 50,
        seed: Some(seed),
        max_tokens: 20,
        ignore_eos: true,
        ..Default::default()
    };
    let alone = llm
        .generate(vec![request(vec![5, 6, 7], params(11))], |_, _| {})
        .unwrap();
    let batched = llm
        .generate(
            vec![
                request(vec![9, 9, 9, 9], params(3)),
                request(vec![5, 6, 7], params(11)),
            ],
            |_, _| {},
        )
        .unwrap();
    assert_eq!(alone[0].token_ids, batched[1].token_ids);
    let other = llm
        .generate(vec![request(vec![5, 6, 7], params(12))], |_, _| {})
        .unwrap();
    assert_ne!(
        alone[0].token_ids, other[0].token_ids,
        "a different seed should give different tokens"
    );
}
