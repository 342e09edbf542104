//! The C API from the outside: the committed header is the generated one, compiles as C99
//! and C++17 with warnings as errors, documents every function, and matches what the
//! shared library exports (only `llmrt_*` symbols, SONAME `libllmrt.so.<ABI>`); and the
//! ABI works when called from Rust (the C tests in bindings/c cover it from C).
//!
//! No bindgen round-trip: it needs libclang, which the project's machines lack.

mod common;
use common::*;
use llmrt::capi::engine::*;
use llmrt::capi::events::*;
use llmrt::capi::llmrt_status::*;
use llmrt::capi::*;
use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn committed_header() -> String {
    std::fs::read_to_string(root().join("include").join("llmrt.h")).unwrap()
}

/// The header build.rs generated from the current src/capi.
fn generated_header() -> String {
    let path = Path::new(env!("OUT_DIR")).join("llmrt.h");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (did cbindgen fail in build.rs?)", path.display()))
}

/// The shared library cargo built with this test: target/<profile>/deps/libllmrt.so (the
/// copy in target/<profile> is refreshed only by `cargo build`).
fn shared_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [
        deps.join("libllmrt.so"),
        deps.parent().unwrap().join("libllmrt.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("no libllmrt.so in {}", deps.display()))
}

/// The function names declared in the header, with the doc comment right above each.
fn header_functions(header: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut doc = String::new();
    let mut comment: Option<String> = None;
    for line in header.lines() {
        let t = line.trim();
        if let Some(c) = comment.as_mut() {
            c.push_str(t);
            c.push('\n');
            if t.ends_with("*/") {
                let c = comment.take().unwrap();
                if c.starts_with("/**") {
                    doc = c;
                }
            }
            continue;
        }
        if t.starts_with("/*") {
            comment = Some(String::new());
            let c = comment.as_mut().unwrap();
            c.push_str(t);
            c.push('\n');
            if t.ends_with("*/") && t.len() > 3 {
                let c = comment.take().unwrap();
                if c.starts_with("/**") {
                    doc = c;
                }
            }
            continue;
        }
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        let declared = t.find('(').and_then(|open| {
            let before = &t[..open];
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            let name = &before[start..];
            (name.starts_with("llmrt_") && !t.starts_with("typedef") && !t.starts_with('#'))
                .then(|| name.to_string())
        });
        match declared {
            Some(name) => out.push((name, std::mem::take(&mut doc))),
            // Continuation lines of a declaration keep nothing; anything else ends a doc.
            None => doc.clear(),
        }
    }
    out
}

#[test]
fn committed_header_is_the_generated_one() {
    let committed = committed_header();
    let generated = generated_header();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/llmrt.h is stale (first difference at line {}): regenerate it with \
             `LLMRT_REGEN_HEADER=1 cargo build` and commit it",
            first + 1
        );
    }
}

#[test]
fn header_declares_the_api_with_its_contracts() {
    let header = committed_header();
    let functions = header_functions(&header);
    let names: BTreeSet<&str> = functions.iter().map(|(n, _)| n.as_str()).collect();
    for required in [
        "llmrt_abi_version",
        "llmrt_version",
        "llmrt_capabilities",
        "llmrt_error_code",
        "llmrt_error_message",
        "llmrt_error_free",
        "llmrt_error_code_name",
        "llmrt_engine_new",
        "llmrt_engine_free",
        "llmrt_engine_submit",
        "llmrt_engine_submit_tokens",
        "llmrt_engine_abort",
        "llmrt_engine_poll",
        "llmrt_engine_event_fd",
        "llmrt_events_count",
        "llmrt_event_request_id",
        "llmrt_event_user_tag",
        "llmrt_event_kind",
        "llmrt_event_token_ids",
        "llmrt_event_text",
        "llmrt_event_finish_reason",
        "llmrt_event_usage",
        "llmrt_event_error_message",
        "llmrt_event_logprobs_count",
        "llmrt_events_free",
        "llmrt_tokenize",
        "llmrt_detokenize",
        "llmrt_apply_chat_template",
        "llmrt_engine_metrics_json",
        "llmrt_engine_metrics_prometheus",
        "llmrt_string_free",
        "llmrt_tokens_free",
    ] {
        assert!(names.contains(required), "{required} is not declared");
    }
    for (name, comment) in &functions {
        assert!(
            comment.contains("Thread-safety"),
            "{name}: its comment does not state its thread-safety:\n{comment}"
        );
        let line = header
            .lines()
            .find(|l| l.contains(&format!(" {name}(")) || l.contains(&format!("*{name}(")))
            .unwrap();
        if line.starts_with("llmrt_error *") {
            assert!(
                comment.contains("LLMRT_ERROR_INVALID_ARGUMENT")
                    && comment.contains("LLMRT_ERROR_INTERNAL"),
                "{name}: a fallible function must list its error codes:\n{comment}"
            );
        }
    }
    // Names: every type and function starts with llmrt_, every macro with LLMRT_.
    for line in header.lines() {
        if let Some(m) = line.strip_prefix("#define ") {
            assert!(m.starts_with("LLMRT_"), "macro {m}");
        }
        if let Some(t) = line.strip_prefix("typedef ") {
            let name = t
                .trim_end_matches(';')
                .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .find(|s| !s.is_empty())
                .unwrap();
            let fn_ptr = t.contains("(*");
            assert!(
                name.starts_with("llmrt_") || fn_ptr,
                "typedef name {name} in {line}"
            );
            if fn_ptr {
                assert!(t.contains("(*llmrt_"), "{line}");
            }
        }
    }
    assert!(header.contains("#define LLMRT_ABI_VERSION 0\n"));
    assert_eq!(llmrt_abi_version(), LLMRT_ABI_VERSION);
}

fn compile_check(compiler: &str, args: &[&str], source: &Path) {
    let out = Command::new(compiler)
        .args(args)
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(root().join("include"))
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} {args:?} rejects the header:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_as_c99_and_cxx17_with_warnings_as_errors() {
    let header = committed_header();
    // A file that uses every type, constant and function of the header.
    let mut src = String::from(
        "#include \"llmrt.h\"\n#include <stdio.h>\n\
         static bool progress(void *u, float p, const char *s) { (void)u; (void)p; (void)s; return true; }\n\
         int main(void) {\n\
         llmrt_progress_fn cb = progress; (void)cb;\n\
         llmrt_status st = LLMRT_ERROR_INTERNAL; llmrt_kind k = LLMRT_EVENT_FINAL;\n\
         llmrt_reason r = LLMRT_FINISH_ABORT; unsigned flags = LLMRT_SUBMIT_IGNORE_EOS | LLMRT_SUBMIT_NO_TEXT | LLMRT_SUBMIT_KEEP_SPECIAL_TOKENS;\n\
         llmrt_engine *e = NULL; llmrt_events *ev = NULL; llmrt_error *err = NULL;\n\
         (void)st; (void)k; (void)r; (void)flags; (void)e; (void)ev; (void)err;\n\
         if (llmrt_abi_version() != LLMRT_ABI_VERSION) return 1;\n",
    );
    for (name, _) in header_functions(&header) {
        src.push_str(&format!("printf(\"%p\\n\", (void *)(size_t){name});\n"));
    }
    src.push_str("return 0;\n}\n");
    let dir = std::env::temp_dir().join(format!("llmrt-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("uses_header.c");
    std::fs::write(&c, &src).unwrap();
    compile_check("cc", &["-std=c99"], &c);
    compile_check("cc", &["-std=c11"], &c);
    compile_check("c++", &["-std=c++17", "-x", "c++"], &c);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shared_library_exports_exactly_the_header_functions() {
    let lib = shared_library();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success());
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let stray: Vec<&String> = exported
        .iter()
        .filter(|s| !s.starts_with("llmrt_"))
        .collect();
    assert!(stray.is_empty(), "symbols outside llmrt_: {stray:?}");
    let declared: BTreeSet<String> = header_functions(&committed_header())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(exported, declared, "exported vs declared functions");

    let out = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .unwrap();
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let soname = format!("[libllmrt.so.{LLMRT_ABI_VERSION}]");
    assert!(
        dynamic
            .lines()
            .any(|l| l.contains("SONAME") && l.contains(&soname)),
        "no SONAME {soname}:\n{dynamic}"
    );
}

// ---- the ABI called from Rust --------------------------------------------------------

struct Err(*mut llmrt_error);

impl Err {
    fn code(&self) -> llmrt_status {
        unsafe { llmrt_error_code(self.0) }
    }
    fn message(&self) -> String {
        unsafe { CStr::from_ptr(llmrt_error_message(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Err {
    fn drop(&mut self) {
        unsafe { llmrt_error_free(self.0) }
    }
}

fn ok(e: *mut llmrt_error) {
    let e = Err(e);
    assert!(e.0.is_null(), "{:?}: {}", e.code(), e.message());
}

fn new_engine() -> *mut llmrt_engine {
    let dir = fixtures().join("models").join("llama");
    let cfg = CString::new(
        serde_json::json!({"model": dir, "num_threads": 2, "max_model_len": 128}).to_string(),
    )
    .unwrap();
    let mut engine = ptr::null_mut();
    ok(unsafe { llmrt_engine_new(cfg.as_ptr(), None, ptr::null_mut(), &mut engine) });
    engine
}

#[test]
fn greedy_tokens_through_the_c_abi_match_the_reference() {
    let expected = read_json(&fixtures().join("models/llama/expected.json"));
    let prompt = ids(&expected["prompts"][2]["ids"]);
    let greedy = ids(&expected["greedy_ids"][2]);
    let engine = new_engine();
    let mut id = u64::MAX;
    ok(unsafe {
        llmrt_engine_submit_tokens(
            engine,
            prompt.as_ptr(),
            prompt.len(),
            32,
            0.0,
            1.0,
            -1,
            -1,
            LLMRT_SUBMIT_IGNORE_EOS,
            42,
            &mut id,
        )
    });
    let mut got = vec![];
    let mut finals = 0;
    while finals == 0 {
        let mut ev = ptr::null_mut();
        ok(unsafe { llmrt_engine_poll(engine, 8, 1000, &mut ev) });
        for i in 0..unsafe { llmrt_events_count(ev) } {
            unsafe {
                assert_eq!(llmrt_event_request_id(ev, i), id);
                assert_eq!(llmrt_event_user_tag(ev, i), 42);
                let mut n = 0;
                let p = llmrt_event_token_ids(ev, i, &mut n);
                if n > 0 {
                    got.extend_from_slice(std::slice::from_raw_parts(p, n));
                }
                if llmrt_event_kind(ev, i) == llmrt_kind::LLMRT_EVENT_FINAL {
                    finals += 1;
                    assert_eq!(
                        llmrt_event_finish_reason(ev, i),
                        llmrt_reason::LLMRT_FINISH_LENGTH
                    );
                    let (mut p, mut c) = (0, 0);
                    assert!(llmrt_event_usage(ev, i, &mut p, &mut c, ptr::null_mut()));
                    assert_eq!((p as usize, c), (prompt.len(), 32));
                }
            }
        }
        unsafe { llmrt_events_free(ev) };
    }
    assert_eq!(got, greedy);
    unsafe { llmrt_engine_free(engine) };
}

#[test]
fn misuse_through_the_c_abi_gives_error_codes() {
    let engine = new_engine();
    let mut id = 7u64;
    let cases: Vec<(&[u8], llmrt_status, &str)> = vec![
        (
            b"{\"prompt\": \"x\", \"max_tokens\": -3}\0",
            LLMRT_ERROR_INVALID_REQUEST,
            "max_tokens",
        ),
        (
            b"{\"prompt\": \"x\", \"nope\": 1}\0",
            LLMRT_ERROR_INVALID_REQUEST,
            "nope",
        ),
        (
            b"{\"prompt\": [1]}\0",
            LLMRT_ERROR_INVALID_REQUEST,
            "prompt",
        ),
        (b"{\"prompt\": \0", LLMRT_ERROR_INVALID_JSON, "request_json"),
        (
            b"{\"prompt\": \"\xc3\"}\0",
            LLMRT_ERROR_INVALID_ARGUMENT,
            "UTF-8",
        ),
    ];
    for (json, code, needle) in cases {
        let e = Err(unsafe { llmrt_engine_submit(engine, json.as_ptr().cast(), 0, &mut id) });
        assert_eq!(e.code(), code, "{}", String::from_utf8_lossy(json));
        assert!(e.message().contains(needle), "{}", e.message());
    }
    let e = Err(unsafe { llmrt_engine_submit(engine, ptr::null(), 0, &mut id) });
    assert_eq!(e.code(), LLMRT_ERROR_INVALID_ARGUMENT);
    let e = Err(unsafe { llmrt_engine_submit(ptr::null_mut(), c"{}".as_ptr(), 0, &mut id) });
    assert_eq!(e.code(), LLMRT_ERROR_INVALID_ARGUMENT);
    assert_eq!(id, 7);
    let name = unsafe { CStr::from_ptr(llmrt_error_code_name(LLMRT_ERROR_INVALID_JSON as i32)) };
    assert_eq!(name.to_str().unwrap(), "LLMRT_ERROR_INVALID_JSON");
    unsafe {
        llmrt_engine_free(engine);
        llmrt_engine_free(ptr::null_mut());
        llmrt_events_free(ptr::null_mut());
        llmrt_error_free(ptr::null_mut());
    }
}

/// Logprobs, prompt logprobs and n > 1 through request JSON and the event accessors.
#[test]
fn logprobs_and_sequences_through_the_c_abi() {
    let expected = read_json(&fixtures().join("models/llama/expected.json"));
    let prompt = ids(&expected["prompts"][2]["ids"]);
    let greedy = ids(&expected["greedy_ids"][2]);
    let engine = new_engine();
    let req = serde_json::json!({
        "prompt_token_ids": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": true,
        "logprobs": 3, "prompt_logprobs": 2, "n": 2,
    });
    let req = std::ffi::CString::new(req.to_string()).unwrap();
    let mut id = 0;
    ok(unsafe { llmrt_engine_submit(engine, req.as_ptr(), 9, &mut id) });
    let mut tokens: Vec<Vec<u32>> = vec![vec![], vec![]];
    let (mut finals, mut prompt_entries, mut seq_ends) = (0, 0, 0);
    while finals == 0 {
        let mut ev = ptr::null_mut();
        ok(unsafe { llmrt_engine_poll(engine, 8, 1000, &mut ev) });
        for i in 0..unsafe { llmrt_events_count(ev) } {
            unsafe {
                let seq = llmrt_event_index(ev, i) as usize;
                let mut n = 0;
                let p = llmrt_event_token_ids(ev, i, &mut n);
                assert_eq!(llmrt_event_logprobs_count(ev, i), n);
                for pos in 0..n {
                    let tok = *p.add(pos);
                    tokens[seq].push(tok);
                    let (mut t, mut lp, mut rank) = (0u32, 0f32, 0u32);
                    assert!(llmrt_event_logprob(ev, i, pos, &mut t, &mut lp, &mut rank));
                    assert_eq!((t, rank), (tok, 1), "greedy picks the top token");
                    assert_eq!(llmrt_event_top_logprobs_count(ev, i, pos), 3);
                    let mut top = 0u32;
                    assert!(llmrt_event_top_logprob(
                        ev,
                        i,
                        pos,
                        0,
                        &mut top,
                        &mut lp,
                        ptr::null_mut()
                    ));
                    assert_eq!(top, tok);
                    assert!(!llmrt_event_top_logprob(
                        ev, i, pos, 3, &mut top, &mut lp, &mut rank
                    ));
                }
                let np = llmrt_event_prompt_logprobs_count(ev, i);
                for pos in 0..np {
                    let mut t = 0u32;
                    let mut lp = 0f32;
                    assert!(llmrt_event_prompt_logprob(
                        ev,
                        i,
                        pos,
                        &mut t,
                        &mut lp,
                        ptr::null_mut()
                    ));
                    assert_eq!(t, prompt[pos + 1]);
                    assert_eq!(llmrt_event_prompt_top_logprobs_count(ev, i, pos), 2);
                    let mut best = 0u32;
                    assert!(llmrt_event_prompt_top_logprob(
                        ev,
                        i,
                        pos,
                        0,
                        &mut best,
                        &mut lp,
                        ptr::null_mut()
                    ));
                    let ref_lp = floats(&expected["prompt_top5"][2]["logprobs"][pos]);
                    if ref_lp[0] - ref_lp[1] >= 2e-3 {
                        assert_eq!(best, ids(&expected["prompt_top5"][2]["ids"][pos])[0]);
                    }
                }
                prompt_entries += np;
                let mut cum = 0.0;
                assert!(llmrt_event_cumulative_logprob(ev, i, &mut cum));
                assert!(cum <= 0.0);
                if llmrt_event_finish_reason(ev, i) != llmrt_reason::LLMRT_FINISH_NONE {
                    seq_ends += 1;
                }
                if llmrt_event_kind(ev, i) == llmrt_kind::LLMRT_EVENT_FINAL {
                    finals += 1;
                    let mut c = 0;
                    assert!(llmrt_event_usage(
                        ev,
                        i,
                        ptr::null_mut(),
                        &mut c,
                        ptr::null_mut()
                    ));
                    assert_eq!(c, 8, "two sequences of four tokens");
                }
            }
        }
        unsafe { llmrt_events_free(ev) };
    }
    assert_eq!(prompt_entries, prompt.len() - 1, "once, on the first event");
    assert_eq!(seq_ends, 2, "each sequence ends with its own finish reason");
    assert_eq!(tokens[0], greedy[..4]);
    assert_eq!(tokens[1], greedy[..4], "greedy sequences agree");
    unsafe { llmrt_engine_free(engine) };
}
