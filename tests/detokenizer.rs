//! Incremental detokenisation: whole UTF-8 deltas whose concatenation is the one-shot decode.

mod common;
use common::*;
use llmrt::model::Tokenizer;
use llmrt::output::IncrementalDetokenizer;

const TEXTS: &[&str] = &[
    "Hello world, this is a test.",
    "Grüße aus Köln — ça va? Ελληνικά и русский.",
    "中文字符和日本語のテキスト 한국어",
    "emoji 🎉👩‍💻 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "  spaces\tand\nnewlines  ",
];

fn check(tok: &Tokenizer, prompt: &[u32], text: &str) {
    let ids = tok.encode(text, false).unwrap();
    let mut detok = IncrementalDetokenizer::new(prompt, false);
    let mut joined = String::new();
    let mut held_back = 0;
    for &id in &ids {
        let delta = detok.push(tok, id);
        assert!(
            !delta.contains('\u{FFFD}'),
            "{text:?}: delta {delta:?} has a replacement character"
        );
        if delta.is_empty() {
            held_back += 1;
        }
        joined.push_str(&delta);
    }
    assert_eq!(joined, tok.decode(&ids, false).unwrap(), "{text:?}");
    assert_eq!(joined, text, "byte-level BPE round-trips the text");
    if !text.is_ascii() && ids.len() > text.chars().count() {
        assert!(
            held_back > 0,
            "{text:?}: a character spans tokens, so some token must be held back"
        );
    }
}

#[test]
fn deltas_are_whole_and_concatenate_to_the_decode() {
    let dir = fixtures().join("models").join("qwen2");
    let tok =
        Tokenizer::from_file(&dir.join("tokenizer.json"), None, Some("<|im_end|>".into())).unwrap();
    let prompt = tok.encode("Prompt text before the output:", false).unwrap();
    for text in TEXTS {
        check(&tok, &prompt, text);
        check(&tok, &[], text);
    }
}

#[test]
fn deltas_with_the_gguf_tokenizer() {
    let path = llmrt::default_model_path();
    assert!(
        path.exists(),
        "default model missing: run scripts/fetch-default-model.sh"
    );
    let model = llmrt::Model::load(&path).unwrap();
    let prompt = model
        .tokenizer
        .encode("<|im_start|>assistant\n", false)
        .unwrap();
    for text in TEXTS {
        check(&model.tokenizer, &prompt, text);
    }
}
