//! Build script: generates the C header `include/llmrt.h` from `src/capi/` with cbindgen
//! and gives the shared library its SONAME.
//!
//! The header is always generated into `$OUT_DIR/llmrt.h` (tests/capi.rs compares it with
//! the committed copy, so a stale header fails the tests); it is written to
//! `include/llmrt.h` only when `LLMRT_REGEN_HEADER=1` or when that file is missing:
//! `LLMRT_REGEN_HEADER=1 cargo build` refreshes it after a change to the C API.

use std::path::{Path, PathBuf};

/// The ABI major version: the SONAME is `libllmrt.so.<this>`. Must equal
/// `LLMRT_ABI_VERSION` in src/capi/mod.rs (a test checks the built library).
const ABI_VERSION: u32 = 0;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/capi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=LLMRT_REGEN_HEADER");

    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libllmrt.so.{ABI_VERSION}");
        // Export the C API only: rustc also exports upstream crates' `#[no_mangle]`
        // functions (llguidance's llg_* FFI), which live in archives (rlibs).
        println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs,ALL");
    }

    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let committed = root.join("include").join("llmrt.h");
    let regen = std::env::var_os("LLMRT_REGEN_HEADER").is_some_and(|v| v == "1");
    let needed = regen || !committed.exists();
    match generate(&root, &out.join("llmrt.h")) {
        Ok(()) => {
            if needed {
                std::fs::create_dir_all(root.join("include")).expect("create include/");
                std::fs::copy(out.join("llmrt.h"), &committed).expect("write include/llmrt.h");
            }
        }
        // A C API that does not parse also fails to compile, with rustc's better message;
        // only a missing header makes this fatal.
        Err(e) if needed => panic!("cbindgen failed: {e}"),
        Err(e) => println!("cargo:warning=cbindgen failed, include/llmrt.h not checked: {e}"),
    }
}

fn generate(root: &Path, dest: &Path) -> Result<(), String> {
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml"))?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src").join("capi").join("mod.rs"))
        .generate()
        .map_err(|e| e.to_string())?;
    bindings.write_to_file(dest);
    Ok(())
}
