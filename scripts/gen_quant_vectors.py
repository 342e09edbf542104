#!/usr/bin/env python3
"""Writes tests/fixtures/quant/vectors.json: random GGML blocks and their f32 values as
dequantized by the reference implementation, gguf-py's `gguf.quants.dequantize`.

Regenerate (from the repository root):

    python3 -m venv .venv
    .venv/bin/pip install gguf==0.19.0 numpy
    .venv/bin/python scripts/gen_quant_vectors.py

The payload bytes of every block are random (fixed seeds, numpy PCG64); the f16 scale
fields are overwritten with random finite halves of moderate size (some negative, one
zero) so that every value is finite. Output: for each type, the raw blocks as hex and the
expected values as hex of little-endian f32 (bit-exact; tests/quant.rs compares bits).
"""

import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quant" / "vectors.json"

# name -> (ggml type, bytes per block, values per block, blocks, byte offsets of f16 scales)
TYPES = {
    "Q4_0": (T.Q4_0, 18, 32, 12, [0]),
    "Q4_1": (T.Q4_1, 20, 32, 12, [0, 2]),
    "Q8_0": (T.Q8_0, 34, 32, 12, [0]),
    "Q4_K": (T.Q4_K, 144, 256, 4, [0, 2]),
    "Q5_K": (T.Q5_K, 176, 256, 4, [0, 2]),
    "Q6_K": (T.Q6_K, 210, 256, 4, [208]),
    "F16": (T.F16, 2, 1, 96, []),
    "BF16": (T.BF16, 2, 1, 96, []),
}


def random_halves(rng, n):
    mag = rng.uniform(-12.0, 1.0, size=n)  # 2^-12 .. 2^1
    sign = rng.choice([-1.0, 1.0], size=n)
    return (sign * np.exp2(mag)).astype(np.float16)


def main():
    out = {
        "generator": "scripts/gen_quant_vectors.py",
        "reference": "gguf.quants.dequantize (gguf-py)",
        "format": "blocks_hex: raw blocks; expected_f32_hex: little-endian f32 per value",
        "cases": [],
    }
    for seed, (name, (qtype, nbytes, nvals, nblocks, scale_offs)) in enumerate(TYPES.items()):
        rng = np.random.Generator(np.random.PCG64(1234 + seed))
        blocks = rng.integers(0, 256, size=(nblocks, nbytes), dtype=np.uint8)
        for off in scale_offs:
            h = random_halves(rng, nblocks)
            if off == scale_offs[0]:
                h[-1] = np.float16(0.0)  # a zero scale in the last block
            blocks[:, off:off + 2] = h.view(np.uint8).reshape(nblocks, 2)
        if name == "F16":
            blocks = random_halves(rng, nblocks).view(np.uint8).reshape(nblocks, 2)
        if name == "BF16":
            f = (rng.standard_normal(nblocks) * 3.0).astype(np.float32)
            blocks = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(nblocks, 2)
        raw = blocks.reshape(-1)
        values = dequantize(raw, qtype).astype(np.float32).reshape(-1)
        assert values.size == nblocks * nvals and np.all(np.isfinite(values)), name
        out["cases"].append({
            "type": name,
            "n_values": int(values.size),
            "blocks_hex": raw.tobytes().hex(),
            "expected_f32_hex": values.astype("<f4").tobytes().hex(),
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
