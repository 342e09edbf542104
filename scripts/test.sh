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

# The C++ binding (bindings/cpp/llmrt.hpp): its GoogleTest suite, built with CMake against
# the same target/debug/libllmrt.so, reference values generated from the fixture.
cmake -S bindings/cpp -B target/cpp-tests -DCMAKE_BUILD_TYPE=Debug --log-level=WARNING
cmake --build target/cpp-tests --parallel 2
ctest --test-dir target/cpp-tests --output-on-failure --parallel 2

# The Go binding (bindings/go) over cgo, with the race detector, against the same
# target/debug/libllmrt.so: linked through a folder holding its SONAME link, found at run
# time through an rpath. -count=1: the test cache does not see the shared library change.
go_root="$PWD"
go_lib="$go_root/target/go/lib"
mkdir -p "$go_lib"
ln -sfn "$go_root/target/debug/libllmrt.so" "$go_lib/libllmrt.so.0"
ln -sfn libllmrt.so.0 "$go_lib/libllmrt.so"
(cd bindings/go && CGO_CFLAGS="-O2 -g -I$go_root/include" \
    CGO_LDFLAGS="-L$go_lib -Wl,-rpath,$go_lib" go test -count=1 -race ./...)

# The OpenAI-compatible server (bindings/go/cmd/llmrt-server) through the official
# `openai` Python client on the default model: builds target/llmrt-server against the same
# target/debug/libllmrt.so, installs pinned `openai` and `jsonschema` into
# target/openai-venv on the first run, and checks that SIGTERM drains and exits 0.
bash bindings/go/cmd/llmrt-server/run_openai_tests.sh

# The Java binding (bindings/java, JNI): builds libllmrt_jni.so into target/java/debug
# beside a libllmrt.so.0 link to the same target/debug/libllmrt.so, then runs its JUnit 5
# tests with `mvn -q -B test` (java.library.path = that folder) and prints the Surefire
# summary; a failing test fails this script. Plugin versions are pinned: Maven downloads
# them on the first run only.
make -s -C bindings/java test
