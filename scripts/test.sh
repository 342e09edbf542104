#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (fidelity against
# transformers' reference outputs, loaders, tokenizer, bounded fuzzing, the C header
# checks), then the C API's tests in C against the shared library (also under valgrind)
# and the install artefacts (pkg-config, CMake). Fetches the default model into the local
# cache first if it is not there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-default-model.sh >/dev/null
cargo test --locked --all-targets

# The C API from C: `cargo build` only refreshes target/debug/libllmrt.so from what
# `cargo test` compiled.
cargo build --locked --lib
make -s -C bindings/c test
make -s -C bindings/c valgrind
make -s -C bindings/c install-test
