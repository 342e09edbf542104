//! Structured outputs on real tokenizers: SmolLM2's (49k tokens, built from the default
//! model's GGUF metadata) and the tiny fixture models'. Each constraint kind is walked
//! token by token with a seeded pseudo-random choice among the allowed tokens, and the
//! text must satisfy the constraint; masks, EOS, errors and the mask time are checked.

mod common;
use common::fixtures;
use llmrt::model::loader::gguf::GgufFile;
use llmrt::model::tokenizer_gguf::tokenizer_from_gguf;
use llmrt::model::Tokenizer;
use llmrt::structured::{apply_bitmask, GrammarCompiler, Matcher, StructuredOutputs};
use llmrt::Error;
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Fixture {
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    compiler: GrammarCompiler,
}

fn smollm2() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = llmrt::default_model_path();
        assert!(
            path.exists(),
            "default model missing at {}: run scripts/fetch-default-model.sh",
            path.display()
        );
        let gguf = GgufFile::open(&path).unwrap();
        let tokenizer = tokenizer_from_gguf(&gguf.metadata, &path).unwrap();
        let eos: Vec<u32> = tokenizer.eos_token_id().into_iter().collect();
        assert!(!eos.is_empty());
        let t = Instant::now();
        let compiler = GrammarCompiler::new(&tokenizer, &eos, tokenizer.vocab_size()).unwrap();
        eprintln!(
            "SmolLM2: GrammarCompiler::new over {} tokens took {:.1} ms",
            compiler.vocab_size(),
            t.elapsed().as_secs_f64() * 1e3
        );
        Fixture {
            tokenizer,
            eos,
            compiler,
        }
    })
}

/// splitmix64: a deterministic choice without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

struct Walk {
    text: String,
    mask_times: Vec<Duration>,
}

/// Generates with `m`: each step masks a zero logits row, then picks uniformly among the
/// allowed tokens. EOS is taken once allowed after `min_steps` (or when it is all that is
/// allowed); after `close_after` steps, allowed tokens made only of `closers` characters are
/// preferred, so that open-ended constraints (strings, objects) finish.
fn walk(
    f: &Fixture,
    m: &mut Matcher,
    seed: u64,
    min_steps: usize,
    close_after: usize,
    closers: &str,
) -> Walk {
    let mut rng = Rng(seed);
    let n = f.compiler.vocab_size();
    let mut logits = vec![0f32; n];
    let mut tokens = Vec::new();
    let mut mask_times = Vec::new();
    for step in 0..400 {
        logits.fill(0.0);
        let t = Instant::now();
        m.apply_to_logits(&mut logits).unwrap();
        mask_times.push(t.elapsed());
        let allowed: Vec<u32> = (0..n as u32)
            .filter(|&i| logits[i as usize].is_finite())
            .collect();
        assert!(!allowed.is_empty(), "step {step}: nothing allowed");
        let eos = allowed.iter().copied().find(|t| f.eos.contains(t));
        let others: Vec<u32> = allowed
            .iter()
            .copied()
            .filter(|t| !f.eos.contains(t))
            .collect();
        let tok = if let Some(e) = eos.filter(|_| step >= min_steps || others.is_empty()) {
            e
        } else {
            let closing: Vec<u32> = if step >= close_after {
                others
                    .iter()
                    .copied()
                    .filter(|&t| {
                        let s = f.tokenizer.decode(&[t], false).unwrap();
                        !s.trim().is_empty()
                            && s.chars().all(|c| c.is_whitespace() || closers.contains(c))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            // Whitespace-only tokens are many in a BPE vocabulary and a JSON grammar allows
            // them between all tokens: take them one time in eight, or the walk is mostly
            // whitespace.
            let solid: Vec<u32> = others
                .iter()
                .copied()
                .filter(|&t| !f.tokenizer.decode(&[t], false).unwrap().trim().is_empty())
                .collect();
            if !closing.is_empty() {
                rng.pick(&closing)
            } else if solid.is_empty() || rng.next().is_multiple_of(8) {
                rng.pick(&others)
            } else {
                rng.pick(&solid)
            }
        };
        m.accept_token(tok).unwrap();
        tokens.push(tok);
        if f.eos.contains(&tok) {
            assert!(m.is_terminated());
            let body = &tokens[..tokens.len() - 1];
            return Walk {
                text: f.tokenizer.decode(body, false).unwrap(),
                mask_times,
            };
        }
    }
    panic!(
        "no EOS after 400 steps: {:?}",
        f.tokenizer.decode(&tokens, false).unwrap()
    );
}

fn compile(f: &Fixture, spec: Value) -> Matcher {
    let spec = StructuredOutputs::from_json(&spec).unwrap();
    f.compiler.compile(&spec).unwrap()
}

fn compile_err(f: &Fixture, spec: Value) -> String {
    let spec = StructuredOutputs::from_json(&spec).unwrap();
    match f.compiler.compile(&spec) {
        Err(Error::InvalidRequest(m)) => m,
        Err(e) => panic!("expected InvalidRequest, got {e}"),
        Ok(_) => panic!("{spec:?} compiled"),
    }
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "ok"],
        "additionalProperties": false
    })
}

/// The schema above, checked by hand.
fn check_person(text: &str) {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    for k in o.keys() {
        assert!(
            ["name", "age", "tags", "ok"].contains(&k.as_str()),
            "{text}"
        );
    }
    let name = o["name"].as_str().unwrap_or_else(|| panic!("name: {text}"));
    assert!(name.chars().count() <= 10, "{text}");
    let age = o["age"].as_i64().unwrap_or_else(|| panic!("age: {text}"));
    assert!((0..=120).contains(&age), "{text}");
    assert!(o["ok"].is_boolean(), "{text}");
    if let Some(tags) = o.get("tags") {
        let tags = tags.as_array().unwrap();
        assert!(tags.len() <= 3, "{text}");
        for t in tags {
            assert!(
                ["red", "green", "blue"].contains(&t.as_str().unwrap()),
                "{text}"
            );
        }
    }
}

#[test]
fn json_schema_walks_produce_valid_json() {
    let f = smollm2();
    for seed in 0..6 {
        let mut m = compile(f, json!({"json": person_schema()}));
        let w = walk(f, &mut m, seed, 5, 40, "\"}]");
        eprintln!("json seed {seed}: {}", w.text);
        check_person(&w.text);
    }
    // As a string, without whitespace: the text has none outside strings.
    let spec = json!({"json": person_schema().to_string(), "disable_any_whitespace": true});
    let mut m = compile(f, spec);
    let w = walk(f, &mut m, 7, 5, 40, "\"}]");
    check_person(&w.text);
    let v: Value = serde_json::from_str(&w.text).unwrap();
    let name = v["name"].as_str().unwrap();
    let outside = w.text.replace(&serde_json::to_string(name).unwrap(), "");
    assert!(!outside.contains([' ', '\n', '\t']), "{}", w.text);
}

#[test]
fn json_object_walks_produce_objects() {
    let f = smollm2();
    for seed in 0..6 {
        let mut m = compile(f, json!({"json_object": true}));
        let w = walk(f, &mut m, 100 + seed, 3, 25, "\"}]");
        eprintln!("json_object seed {seed}: {}", w.text);
        let v: Value = serde_json::from_str(&w.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", w.text));
        assert!(v.is_object(), "{}", w.text);
    }
}

#[test]
fn regex_walks_match() {
    let f = smollm2();
    let rx = r"(\+1-)?[0-9]{3}-[0-9]{4} (ok|fail|[A-Z][a-z]{1,6})";
    let re = regex::Regex::new(&format!("^(?:{rx})$")).unwrap();
    for seed in 0..8 {
        let mut m = compile(f, json!({ "regex": rx }));
        let w = walk(f, &mut m, 200 + seed, 3, 1000, "");
        eprintln!("regex seed {seed}: {:?}", w.text);
        assert!(re.is_match(&w.text), "{:?} does not match {rx}", w.text);
    }
}

#[test]
fn choice_walks_pick_an_option_and_the_first_mask_is_exact() {
    let f = smollm2();
    let options = ["yes", "no", "maybe so", "\"quoted\" \\ too"];
    for seed in 0..8 {
        let mut m = compile(f, json!({ "choice": options }));
        let w = walk(f, &mut m, 300 + seed, 0, 1000, "");
        assert!(options.contains(&w.text.as_str()), "{:?}", w.text);
    }

    // First step of ["yes", "no"]: exactly the tokens whose text is a non-empty prefix of
    // an option, and no EOS.
    let mut m = compile(f, json!({"choice": ["yes", "no"]}));
    let allowed = m.allowed_tokens().unwrap();
    let expected: Vec<u32> = (0..f.tokenizer.vocab_size() as u32)
        .filter(|&t| {
            let s = f.tokenizer.decode(&[t], false).unwrap();
            !s.is_empty()
                && !s.contains('\u{fffd}')
                && ("yes".starts_with(&s) || "no".starts_with(&s))
                && f.tokenizer.inner().id_to_token(t).is_some()
                && !f
                    .tokenizer
                    .inner()
                    .get_added_tokens_decoder()
                    .contains_key(&t)
        })
        .collect();
    let texts: Vec<String> = allowed
        .iter()
        .map(|&t| f.tokenizer.decode(&[t], false).unwrap())
        .collect();
    eprintln!("choice [yes, no], first step allows {texts:?}");
    assert_eq!(allowed, expected, "allowed {texts:?}");
    for t in ["yes", "no", "y", "n"] {
        let id = f.tokenizer.token_to_id(t).unwrap();
        assert!(allowed.contains(&id), "{t}");
    }
    for t in ["Ġyes", "Yes", "No", "nope"] {
        if let Some(id) = f.tokenizer.token_to_id(t) {
            assert!(!allowed.contains(&id), "{t}");
        }
    }
    assert!(!allowed.iter().any(|t| f.eos.contains(t)));
    // The bitmask form says the same.
    let mut bits = vec![0u32; f.compiler.vocab_size().div_ceil(32)];
    m.fill_bitmask(&mut bits).unwrap();
    let from_bits: Vec<u32> = (0..f.compiler.vocab_size() as u32)
        .filter(|&t| bits[t as usize / 32] & (1 << (t % 32)) != 0)
        .collect();
    assert_eq!(from_bits, allowed);
    let mut row = vec![1f32; f.compiler.vocab_size()];
    apply_bitmask(&bits, &mut row);
    assert_eq!(row.iter().filter(|x| x.is_finite()).count(), allowed.len());
}

#[test]
fn lark_grammar_walks_match() {
    let f = smollm2();
    let lark = r#"
start: "Answer: " item ("," item){0,2} "."
item: NUMBER | WORD
NUMBER: /[0-9]{1,3}/
WORD: /[a-z]{2,5}/
"#;
    let re =
        regex::Regex::new(r"^Answer: ([0-9]{1,3}|[a-z]{2,5})(,([0-9]{1,3}|[a-z]{2,5})){0,2}\.$")
            .unwrap();
    for seed in 0..8 {
        let mut m = compile(f, json!({ "grammar": lark }));
        let w = walk(f, &mut m, 400 + seed, 0, 1000, "");
        eprintln!("lark seed {seed}: {:?}", w.text);
        assert!(re.is_match(&w.text), "{:?}", w.text);
    }
}

#[test]
fn gbnf_grammar_walks_match() {
    let f = smollm2();
    let gbnf = r#"
# arithmetic in parentheses, llama.cpp style
root ::= "(" expr ")" ws
expr ::= term (
    [+*] term
  ){0,3}
term ::= [0-9]{1,2} | "x" | "\u00e9"
ws   ::= [ \t\n]?
"#;
    let re =
        regex::Regex::new(r"^\(([0-9]{1,2}|x|é)([+*]([0-9]{1,2}|x|é)){0,3}\)[ \t\n]?$").unwrap();
    for seed in 0..8 {
        let mut m = compile(f, json!({ "grammar": gbnf }));
        let w = walk(f, &mut m, 500 + seed, 0, 1000, "");
        eprintln!("gbnf seed {seed}: {:?}", w.text);
        assert!(re.is_match(&w.text), "{:?}", w.text);
    }
}

#[test]
fn eos_is_allowed_exactly_when_the_grammar_accepts() {
    let f = smollm2();
    let eos = f.eos[0];
    let a = f.tokenizer.token_to_id("a").unwrap();
    let b = f.tokenizer.token_to_id("b").unwrap();
    let c = f.tokenizer.token_to_id("c").unwrap();
    let mut m = compile(f, json!({"regex": "ab?"}));
    assert!(!m.allowed_tokens().unwrap().contains(&eos));
    assert!(!m.is_accepting());
    // EOS before the match is complete, and a token off the grammar, are refused and
    // change nothing.
    assert!(m.accept_token(eos).is_err());
    let e = m.accept_token(c).unwrap_err().to_string();
    assert!(e.contains("not allowed"), "{e}");
    m.accept_token(a).unwrap();
    let allowed = m.allowed_tokens().unwrap();
    assert!(
        allowed.contains(&eos) && allowed.contains(&b),
        "{allowed:?}"
    );
    assert!(m.is_accepting() && !m.is_terminated());
    m.accept_token(b).unwrap();
    assert!(m.is_terminated());
    assert_eq!(m.allowed_tokens().unwrap(), vec![eos]);
    // Rolling back "b" reopens the choice; rolling forward again ends it.
    m.rollback(1).unwrap();
    assert!(!m.is_terminated());
    assert!(m.allowed_tokens().unwrap().contains(&b));
    assert_eq!(m.validate_tokens(&[b, b]).unwrap(), 1);
    m.accept_token(b).unwrap();
    m.accept_token(eos).unwrap();
    assert!(m.is_terminated());
    assert!(m.accept_token(a).is_err());
    // A forked matcher is independent.
    let mut m1 = compile(f, json!({"regex": "ab?"}));
    m1.accept_token(a).unwrap();
    let mut m2 = m1.clone();
    m2.accept_token(b).unwrap();
    assert!(!m1.is_terminated() && m2.is_terminated());
}

#[test]
fn longer_logits_rows_mask_the_padding() {
    let f = smollm2();
    let n_tok = f.tokenizer.vocab_size();
    // The model's vocab_size may exceed the tokenizer's: padding ids are never allowed.
    let compiler = GrammarCompiler::new(&f.tokenizer, &f.eos, n_tok + 64).unwrap();
    assert_eq!(compiler.vocab_size(), n_tok + 64);
    let spec = StructuredOutputs::json_object();
    let mut m = compiler.compile(&spec).unwrap();
    let mut row = vec![0f32; n_tok + 64 + 7]; // and a row longer than that
    m.apply_to_logits(&mut row).unwrap();
    assert!(row[n_tok..].iter().all(|x| *x == f32::NEG_INFINITY));
    assert!(row[..n_tok].iter().any(|x| x.is_finite()));
    let mut m = compiler
        .compile(&StructuredOutputs::regex("(.|\n)*"))
        .unwrap();
    row.fill(0.0);
    m.apply_to_logits(&mut row).unwrap();
    assert!(row[n_tok..].iter().all(|x| *x == f32::NEG_INFINITY));
    assert!(m.accept_token(n_tok as u32 + 3).is_err());
}

#[test]
fn invalid_constraints_are_rejected_with_the_reason() {
    let f = smollm2();
    let e = compile_err(f, json!({"json": {"type": "strin"}}));
    assert!(
        e.contains("structured_outputs.json") && e.contains("strin"),
        "{e}"
    );
    let e = compile_err(f, json!({"json": {"type": "integer", "minimum": "x"}}));
    assert!(
        e.contains("structured_outputs.json") && e.contains("minimum"),
        "{e}"
    );
    let e = compile_err(f, json!({"regex": "a(b"}));
    assert!(
        e.contains("structured_outputs.regex") && e.contains("unclosed group"),
        "{e}"
    );
    let e = compile_err(f, json!({"regex": "(?=x)y"}));
    assert!(e.contains("look-around"), "{e}");
    let e = compile_err(f, json!({"grammar": "start: foo"}));
    assert!(
        e.contains("structured_outputs.grammar") && e.contains("unknown name"),
        "{e}"
    );
    let e = compile_err(f, json!({"grammar": "root ::= item\n"}));
    assert!(
        e.contains("structured_outputs.grammar") && e.contains("undefined rule `item`"),
        "{e}"
    );
    let e = compile_err(f, json!({"grammar": "root ::= \"a\" [b-"}));
    assert!(
        e.contains("GBNF line 1") && e.contains("character class"),
        "{e}"
    );
    let e = StructuredOutputs::from_json(&json!({"regex": "a", "bogus": true}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `bogus`"), "{e}");
    let e = StructuredOutputs::from_json(&json!({"regex": "a", "json_object": true}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`regex`") && e.contains("`json_object`"), "{e}");
}

#[test]
fn compilation_is_bounded() {
    let f = smollm2();
    let tok = f.tokenizer.clone();
    let limits = llmrt::structured::StructuredLimits {
        max_grammar_size: 200,
        ..Default::default()
    };
    let small = GrammarCompiler::with_limits(&tok, &f.eos, tok.vocab_size(), limits).unwrap();
    let choices: Vec<String> = (0..500).map(|i| format!("option number {i}")).collect();
    let e = match small.compile(&StructuredOutputs::choice(choices.clone())) {
        Err(Error::InvalidRequest(m)) => m,
        other => panic!("expected a size error, got {:?}", other.map(|_| ())),
    };
    assert!(e.contains("structured_outputs.choice"), "{e}");
    // The default limits take it.
    f.compiler
        .compile(&StructuredOutputs::choice(choices))
        .unwrap();
    // Compile-time lexer work is bounded: a large schema runs out of fuel.
    let limits = llmrt::structured::StructuredLimits {
        initial_lexer_fuel: 1_000,
        ..Default::default()
    };
    let small = GrammarCompiler::with_limits(&tok, &f.eos, tok.vocab_size(), limits).unwrap();
    let props: serde_json::Map<String, Value> = (0..300)
        .map(|i| {
            (
                format!("field_{i}"),
                json!({"type": "string", "pattern": "^[a-z]{3,9}@[a-z]+\\.com$"}),
            )
        })
        .collect();
    let big = StructuredOutputs::json(json!({"type": "object", "properties": props}));
    let e = small
        .compile(&big)
        .expect_err("compiled under a tiny fuel limit")
        .to_string();
    assert!(
        e.contains("structured_outputs.json") && e.contains("too big"),
        "{e}"
    );
    f.compiler.compile(&big).unwrap();
    // Per-mask lexer work is bounded too: the mask fails instead of running on.
    let limits = llmrt::structured::StructuredLimits {
        step_lexer_fuel: 100,
        ..Default::default()
    };
    let small = GrammarCompiler::with_limits(&tok, &f.eos, tok.vocab_size(), limits).unwrap();
    let mut m = small
        .compile(&StructuredOutputs::regex(".*abc.*def.*ghi"))
        .unwrap();
    let t = Instant::now();
    let e = m.allowed_tokens().unwrap_err().to_string();
    assert!(e.contains("too many expressions"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(m.error().is_some());
}

#[test]
fn tiny_fixture_tokenizers_work_too() {
    for model in ["llama", "qwen2"] {
        let dir = fixtures().join("models").join(model);
        let tokenizer = Tokenizer::from_file(
            &dir.join("tokenizer.json"),
            None,
            Some("<|im_end|>".to_string()),
        )
        .unwrap();
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let vocab = config["vocab_size"].as_u64().unwrap() as usize;
        let eos = vec![tokenizer.eos_token_id().unwrap()];
        let compiler = GrammarCompiler::new(&tokenizer, &eos, vocab).unwrap();
        let f = Fixture {
            tokenizer,
            eos,
            compiler,
        };
        for seed in 0..3 {
            let mut m = compile(&f, json!({"json": person_schema()}));
            let w = walk(&f, &mut m, 600 + seed, 5, 40, "\"}]");
            check_person(&w.text);
            let mut m = compile(&f, json!({"choice": ["alpha", "beta"]}));
            let w = walk(&f, &mut m, 700 + seed, 0, 1000, "");
            assert!(
                ["alpha", "beta"].contains(&w.text.as_str()),
                "{model}: {:?}",
                w.text
            );
        }
    }
}

#[test]
fn matchers_cross_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Matcher>();
    send_sync::<GrammarCompiler>();
    // Compiled on one thread, used on another.
    let f = smollm2();
    let m = std::thread::scope(|s| {
        s.spawn(|| compile(f, json!({"choice": ["yes", "no"]})))
            .join()
            .unwrap()
    });
    let mut m = m;
    let w = walk(f, &mut m, 1, 0, 1000, "");
    assert!(w.text == "yes" || w.text == "no");
}

#[test]
fn mask_time_per_step() {
    let f = smollm2();
    let t = Instant::now();
    let mut m = compile(f, json!({"json": person_schema()}));
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut all = Vec::new();
    let mut firsts = Vec::new();
    for seed in 0..5 {
        let mut mm = if seed == 0 {
            m.clone()
        } else {
            compile(f, json!({"json": person_schema()}))
        };
        let w = walk(f, &mut mm, 900 + seed, 5, 40, "\"}]");
        firsts.push(w.mask_times[0]);
        all.extend(&w.mask_times[1..]);
    }
    m.allowed_tokens().unwrap();
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = all.iter().map(|d| ms(*d)).sum::<f64>() / all.len() as f64;
    let first = firsts.iter().map(|d| ms(*d)).sum::<f64>() / firsts.len() as f64;
    eprintln!(
        "SmolLM2 ({} tokens), JSON schema: compile {compile_ms:.2} ms, first mask {first:.3} ms; \
         then mask+apply per step over {} steps: mean {mean:.3} ms, median {:.3} ms, \
         p90 {:.3} ms, max {:.3} ms",
        f.compiler.vocab_size(),
        all.len(),
        ms(all[all.len() / 2]),
        ms(all[all.len() * 9 / 10]),
        ms(*all.last().unwrap()),
    );
    let t = Instant::now();
    let mut m = compile(f, json!({"grammar": "start: /[a-z ]+/"}));
    let mut row = vec![0f32; f.compiler.vocab_size()];
    let a = f.tokenizer.token_to_id("a").unwrap();
    for _ in 0..50 {
        m.apply_to_logits(&mut row).unwrap();
        m.accept_token(a).unwrap();
    }
    eprintln!(
        "SmolLM2, free-text-like lexeme /[a-z ]+/: {:.3} ms per step (50 steps)",
        t.elapsed().as_secs_f64() * 1e3 / 50.0
    );
}
