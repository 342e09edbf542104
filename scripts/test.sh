#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (fidelity against
# transformers' reference outputs, loaders, tokenizer, bounded fuzzing). Fetches the
# default model into the local cache first if it is not there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-default-model.sh >/dev/null
cargo test --locked --all-targets
