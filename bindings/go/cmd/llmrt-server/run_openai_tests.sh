#!/usr/bin/env bash
# Tests llmrt-server with the official OpenAI Python client: builds the server against
# target/debug/libllmrt.so (run `cargo build --lib` first), creates target/openai-venv
# with `openai` and `jsonschema` from PyPI if it is missing, starts the server on a free
# loopback port with the default model (or $LLMRT_TEST_OPENAI_MODEL), an API key and the
# output parsers (--reasoning-parser qwen3 --tool-call-parser hermes
# --enable-auto-tool-choice), runs testdata/test_openai.py, then stops the server with
# SIGTERM and checks that it exits 0.
# The server is stopped whatever happens (trap). Its log: target/llmrt-server-test.log.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
cd "$root"

model="${LLMRT_TEST_OPENAI_MODEL:-${LLMRT_CACHE_DIR:-$HOME/.cache/llmrt}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -f "$model" ]; then
    bash scripts/fetch-default-model.sh >/dev/null
fi

# The server, linked as scripts/test.sh links the Go binding's tests.
go_lib="$root/target/go/lib"
mkdir -p "$go_lib"
ln -sfn "$root/target/debug/libllmrt.so" "$go_lib/libllmrt.so.0"
ln -sfn libllmrt.so.0 "$go_lib/libllmrt.so"
(cd bindings/go && CGO_CFLAGS="-O2 -g -I$root/include" \
    CGO_LDFLAGS="-L$go_lib -Wl,-rpath,$go_lib" go build -o "$root/target/llmrt-server" ./cmd/llmrt-server)

venv="$root/target/openai-venv"
if ! "$venv/bin/python" -c 'import openai, jsonschema' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q openai==3.57.0 jsonschema==4.26.0
fi

log="$root/target/llmrt-server-test.log"
key="sk-llmrt-test-$RANDOM$RANDOM"
# --port 0: the kernel picks a free port; the server logs its URL.
LLMRT_API_KEY="$key" "$root/target/llmrt-server" --model "$model" --host 127.0.0.1 --port 0 \
    --threads 2 --max-num-seqs 32 --shutdown-grace-period 10s \
    --reasoning-parser qwen3 --tool-call-parser hermes --enable-auto-tool-choice >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT

url=""
for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "llmrt-server exited early" >&2; exit 1; }
    url="$(sed -n 's/.*msg=serving url=\(http:[^ ]*\).*/\1/p' "$log" | head -n 1)"
    [ -n "$url" ] && break
    sleep 0.2
done
[ -n "$url" ] || { cat "$log" >&2; echo "llmrt-server did not start" >&2; exit 1; }
"$venv/bin/python" - "$url" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        if urllib.request.urlopen(sys.argv[1] + "/health", timeout=5).status == 200:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit("llmrt-server is not healthy")
PY

LLMRT_SERVER_URL="$url" LLMRT_SERVER_MODEL="$(basename "$model")" LLMRT_SERVER_KEY="$key" \
    "$venv/bin/python" bindings/go/cmd/llmrt-server/testdata/test_openai.py -v

# SIGTERM drains and exits 0.
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
trap - EXIT
if [ "$status" -ne 0 ]; then
    cat "$log" >&2
    echo "llmrt-server exited with $status after SIGTERM, want 0" >&2
    exit 1
fi
echo "llmrt-server: OpenAI client tests passed; SIGTERM exit status 0"
