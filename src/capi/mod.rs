//! The C API: every `extern "C"` function of the library, and nothing else. Each function
//! checks its arguments, converts between C and Rust values and runs its body inside
//! `catch_unwind`; the logic lives in the Rust modules (`Engine`, `RequestParser`, ...).
//!
//! `include/llmrt.h` is generated from this module by cbindgen (see build.rs), so the doc
//! comments here are the C manual: each states ownership, thread-safety and the error codes
//! a function can return.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

pub mod engine;
pub mod events;

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// The ABI version of this header. A host checks at run time that
/// `llmrt_abi_version() == LLMRT_ABI_VERSION`. Within one ABI version functions are only
/// added, never changed or removed; the shared library's SONAME carries it
/// (`libllmrt.so.0`).
pub const LLMRT_ABI_VERSION: u32 = 0;

/// Status codes. The values are fixed: new codes may be added, none is ever renumbered.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum llmrt_status {
    /// Success (never carried by an `llmrt_error`).
    LLMRT_OK = 0,
    /// A bad argument: a NULL pointer where one is required, a string that is not UTF-8,
    /// an unknown flag, an index out of range.
    LLMRT_ERROR_INVALID_ARGUMENT = 1,
    /// A JSON argument that does not parse.
    LLMRT_ERROR_INVALID_JSON = 2,
    /// A request that cannot be served as given: unknown field, wrong type, value out of
    /// range (e.g. a negative `max_tokens`), empty or too long prompt, token id out of range.
    LLMRT_ERROR_INVALID_REQUEST = 3,
    /// An engine configuration that cannot be used: unknown option, wrong type, bad value.
    LLMRT_ERROR_INVALID_CONFIG = 4,
    /// A model file or folder that cannot be used: missing, truncated, inconsistent.
    LLMRT_ERROR_INVALID_MODEL = 5,
    /// A well-formed model or feature this build does not support.
    LLMRT_ERROR_UNSUPPORTED = 6,
    /// An operating-system I/O error (reading model files, creating the eventfd).
    LLMRT_ERROR_IO = 7,
    /// The tokenizer failed on the given input.
    LLMRT_ERROR_TOKENIZER = 8,
    /// The chat template failed to render (it may raise errors of its own, e.g. when roles
    /// do not alternate).
    LLMRT_ERROR_TEMPLATE = 9,
    /// The engine is stopped (`llmrt_engine_stop`): it takes no more requests, and `poll`
    /// returns this once every event has been delivered.
    LLMRT_ERROR_ENGINE_STOPPED = 10,
    /// A bug in llmrt (a panic was caught). The engine it happened in refuses further work
    /// with this code; free it. The process is unaffected.
    LLMRT_ERROR_INTERNAL = 11,
    /// The load-progress callback returned false.
    LLMRT_ERROR_CANCELLED = 12,
}

use llmrt_status::*;

/// An error: a code and a message. Returned by every fallible function (NULL means
/// success); the caller owns it and frees it with `llmrt_error_free`.
pub struct llmrt_error {
    code: llmrt_status,
    message: CString,
}

/// An error while it is still Rust's; becomes an `llmrt_error` at the boundary.
#[derive(Debug)]
pub(crate) struct Failure {
    pub code: llmrt_status,
    pub message: String,
}

pub(crate) type CResult<T> = Result<T, Failure>;

impl Failure {
    pub fn new(code: llmrt_status, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn arg(message: impl Into<String>) -> Self {
        Self::new(LLMRT_ERROR_INVALID_ARGUMENT, message)
    }

    fn into_raw(self) -> *mut llmrt_error {
        let message = CString::new(self.message.replace('\0', "\\0"))
            .unwrap_or_else(|_| CString::from(c"(unprintable message)"));
        Box::into_raw(Box::new(llmrt_error {
            code: self.code,
            message,
        }))
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Self {
        use crate::Error as E;
        let code = match &e {
            E::InvalidModel { .. } => LLMRT_ERROR_INVALID_MODEL,
            E::Unsupported(_) => LLMRT_ERROR_UNSUPPORTED,
            E::InvalidRequest(_) => LLMRT_ERROR_INVALID_REQUEST,
            // The engine marks the failure of a panicked thread as an internal error.
            E::EngineFailed(m) if m.starts_with("internal error") => LLMRT_ERROR_INTERNAL,
            E::EngineFailed(_) => LLMRT_ERROR_ENGINE_STOPPED,
            E::Tokenizer(_) => LLMRT_ERROR_TOKENIZER,
            E::Template(_) => LLMRT_ERROR_TEMPLATE,
            E::Io { .. } => LLMRT_ERROR_IO,
        };
        Failure::new(code, e.to_string())
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.as_str()
    } else {
        "unknown panic"
    };
    format!("internal error (a bug in llmrt): {what}")
}

/// Runs the body of a fallible function: its failure or a caught panic becomes an error.
pub(crate) fn guard(f: impl FnOnce() -> CResult<()>) -> *mut llmrt_error {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => e.into_raw(),
        Err(p) => Failure::new(LLMRT_ERROR_INTERNAL, panic_message(&*p)).into_raw(),
    }
}

/// Runs the body of an infallible function: a caught panic gives `default`.
pub(crate) fn value_guard<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

/// A NUL-terminated UTF-8 argument.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> CResult<&'a str> {
    if p.is_null() {
        return Err(Failure::arg(format!("`{name}` is NULL")));
    }
    CStr::from_ptr(p).to_str().map_err(|e| {
        Failure::arg(format!(
            "`{name}` is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// A (pointer, length) UTF-8 argument; NULL is allowed for length 0.
pub(crate) unsafe fn bytes_str_arg<'a>(
    p: *const c_char,
    len: usize,
    name: &str,
) -> CResult<&'a str> {
    if len == 0 {
        return Ok("");
    }
    if p.is_null() {
        return Err(Failure::arg(format!(
            "`{name}` is NULL but its length is {len}"
        )));
    }
    let bytes = std::slice::from_raw_parts(p.cast::<u8>(), len);
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::arg(format!(
            "`{name}` is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// A NUL-terminated JSON argument.
pub(crate) unsafe fn json_arg(p: *const c_char, name: &str) -> CResult<serde_json::Value> {
    let s = str_arg(p, name)?;
    serde_json::from_str(s).map_err(|e| {
        Failure::new(
            LLMRT_ERROR_INVALID_JSON,
            format!("`{name}` is not valid JSON: {e}"),
        )
    })
}

/// A slice argument; NULL is allowed for length 0.
pub(crate) unsafe fn slice_arg<'a, T>(p: *const T, len: usize, name: &str) -> CResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::arg(format!(
            "`{name}` is NULL but its length is {len}"
        )));
    }
    Ok(std::slice::from_raw_parts(p, len))
}

/// Checks that an out-pointer is not NULL.
pub(crate) fn out_arg<T>(p: *mut T, name: &str) -> CResult<()> {
    if p.is_null() {
        Err(Failure::arg(format!("`{name}` is NULL")))
    } else {
        Ok(())
    }
}

fn out_of_memory() -> Failure {
    Failure::new(LLMRT_ERROR_INTERNAL, "out of memory")
}

/// A library-owned copy of `s` (NUL-terminated), freed with `llmrt_string_free`.
pub(crate) fn malloc_string(s: &[u8]) -> CResult<*mut c_char> {
    // SAFETY: malloc of len + 1 bytes, filled below before it is handed out.
    unsafe {
        let p = libc::malloc(s.len() + 1).cast::<u8>();
        if p.is_null() {
            return Err(out_of_memory());
        }
        std::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        *p.add(s.len()) = 0;
        Ok(p.cast())
    }
}

/// A library-owned copy of `ids`, freed with `llmrt_tokens_free` (never NULL, even when
/// empty).
pub(crate) fn malloc_tokens(ids: &[u32]) -> CResult<*mut u32> {
    // SAFETY: malloc of at least one element, filled below before it is handed out.
    unsafe {
        let p = libc::malloc(std::mem::size_of_val(ids).max(4)).cast::<u32>();
        if p.is_null() {
            return Err(out_of_memory());
        }
        std::ptr::copy_nonoverlapping(ids.as_ptr(), p, ids.len());
        Ok(p)
    }
}

/// The ABI version of the loaded library; compare it with `LLMRT_ABI_VERSION`.
///
/// Thread-safety: any thread. Never fails.
#[no_mangle]
pub extern "C" fn llmrt_abi_version() -> u32 {
    LLMRT_ABI_VERSION
}

/// The library's version, e.g. "0.1.0": a static NUL-terminated string (do not free).
///
/// Thread-safety: any thread. Never fails.
#[no_mangle]
pub extern "C" fn llmrt_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(s) => s,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

fn capabilities_json() -> String {
    let mut cpu: Vec<&str> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) { cpu.push($f); })*
            };
        }
        detect!("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni");
    }
    let mut features = vec![
        "continuous_batching",
        "chunked_prefill",
        "prefix_caching",
        "priority_scheduling",
        "preemption",
        "multi_step",
        "chat_templates",
        "stop_token_ids",
        "seeded_sampling",
        "stop_strings",
        "penalties",
        "logit_bias",
        "allowed_token_ids",
        "bad_words",
        "min_p",
    ];
    if cfg!(target_os = "linux") {
        features.push("event_fd");
    }
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "abi_version": LLMRT_ABI_VERSION,
        "architectures": crate::config::SUPPORTED_ARCHITECTURES,
        "weight_formats": ["safetensors", "gguf"],
        "weight_types": ["f32", "f16", "bf16", "q4_0", "q4_1", "q8_0", "q4_k", "q5_k", "q6_k"],
        "backends": ["cpu"],
        "cpu_features": cpu,
        "features": features,
    })
    .to_string()
}

/// What this build can do, as a static NUL-terminated JSON object (do not free):
/// `{"version", "abi_version", "architectures": [HF class names], "weight_formats":
/// ["safetensors", "gguf"], "weight_types": [...], "backends": ["cpu"], "cpu_features":
/// [detected SIMD extensions], "features": [...]}`. New keys may appear in later versions.
///
/// Thread-safety: any thread. Never fails (returns "{}" if it cannot be built).
#[no_mangle]
pub extern "C" fn llmrt_capabilities() -> *const c_char {
    static CAPS: OnceLock<CString> = OnceLock::new();
    value_guard(c"{}".as_ptr(), || {
        CAPS.get_or_init(|| {
            CString::new(capabilities_json()).unwrap_or_else(|_| CString::from(c"{}"))
        })
        .as_ptr()
    })
}

/// The code of an error; `LLMRT_OK` for NULL.
///
/// Thread-safety: any thread, on an error no other thread frees.
#[no_mangle]
pub unsafe extern "C" fn llmrt_error_code(error: *const llmrt_error) -> llmrt_status {
    value_guard(LLMRT_ERROR_INTERNAL, || match error.as_ref() {
        Some(e) => e.code,
        None => LLMRT_OK,
    })
}

/// The message of an error: NUL-terminated UTF-8 owned by the error (valid until
/// `llmrt_error_free`); "" for NULL. Messages name the offending argument or field.
///
/// Thread-safety: any thread, on an error no other thread frees.
#[no_mangle]
pub unsafe extern "C" fn llmrt_error_message(error: *const llmrt_error) -> *const c_char {
    value_guard(c"".as_ptr(), || match error.as_ref() {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// Frees an error. NULL is a no-op.
///
/// Thread-safety: any thread; an error is freed once.
#[no_mangle]
pub unsafe extern "C" fn llmrt_error_free(error: *mut llmrt_error) {
    if !error.is_null() {
        value_guard((), || drop(Box::from_raw(error)))
    }
}

/// A static name for a status code, for logs: "LLMRT_OK", "LLMRT_ERROR_INVALID_JSON", ...;
/// "LLMRT_ERROR_UNKNOWN" for a value that is not a code. Do not free.
///
/// Thread-safety: any thread. Never fails.
#[no_mangle]
pub extern "C" fn llmrt_error_code_name(code: i32) -> *const c_char {
    let name: &CStr = match code {
        0 => c"LLMRT_OK",
        1 => c"LLMRT_ERROR_INVALID_ARGUMENT",
        2 => c"LLMRT_ERROR_INVALID_JSON",
        3 => c"LLMRT_ERROR_INVALID_REQUEST",
        4 => c"LLMRT_ERROR_INVALID_CONFIG",
        5 => c"LLMRT_ERROR_INVALID_MODEL",
        6 => c"LLMRT_ERROR_UNSUPPORTED",
        7 => c"LLMRT_ERROR_IO",
        8 => c"LLMRT_ERROR_TOKENIZER",
        9 => c"LLMRT_ERROR_TEMPLATE",
        10 => c"LLMRT_ERROR_ENGINE_STOPPED",
        11 => c"LLMRT_ERROR_INTERNAL",
        12 => c"LLMRT_ERROR_CANCELLED",
        _ => c"LLMRT_ERROR_UNKNOWN",
    };
    name.as_ptr()
}

/// Frees a string returned by llmrt (`llmrt_detokenize`, `llmrt_apply_chat_template`,
/// `llmrt_engine_metrics_json`, ...). NULL is a no-op. Use this, not `free()`.
///
/// Thread-safety: any thread; a string is freed once.
#[no_mangle]
pub unsafe extern "C" fn llmrt_string_free(s: *mut c_char) {
    libc::free(s.cast());
}

/// Frees a token array returned by llmrt (`llmrt_tokenize`). NULL is a no-op. Use this,
/// not `free()`.
///
/// Thread-safety: any thread; an array is freed once.
#[no_mangle]
pub unsafe extern "C" fn llmrt_tokens_free(token_ids: *mut u32) {
    libc::free(token_ids.cast());
}
