#!/usr/bin/env python3
"""Reference vectors for core/runtime/random.ts (TorchCompatibleGenerator).

Regenerate with Debian's PyTorch (torch is never a dependency of Lethe; it is
only the oracle for these numbers):

    apt-get install -y python3-torch
    /usr/bin/python3 tests/data/gen_torch_random.py > tests/data/torch_random.json

Every case seeds a fresh `torch.Generator('cpu')` with `manual_seed(seed)` and
then makes one or more successive draws from it (`torch.rand` / `torch.randn`,
dtype float32). Small tensors are stored in full; large ones as their first and
last 8 values, a float64 sum, and the SHA-256 of their little-endian float32
bytes (so an exact match over the whole tensor can still be checked).

torch.randn on the CPU takes a different code path per CPU capability: on
x86-64 with AVX2 or AVX-512 (the common case, and what `TorchCompatibleGenerator`
reproduces) the Box-Muller transform uses avx_mathfun.h's float32 polynomial
log/sincos; without AVX2 (ATEN_CPU_CAPABILITY=default, or ARM) it uses libm.
The capability used is recorded in the output. Set ATEN_CPU_CAPABILITY=default
to see the other path.
"""
import hashlib
import json
import os
import sys

import torch

FULL_LIMIT = 40  # tensors up to this many elements are stored in full

# 2**32 + 5 seeds like 5 (only the low 32 bits reach mt19937); -1 is read as
# 2**64 - 1 (two's complement).
SEEDS = [0, 42, 2**32 + 5, 0xDEADBEEFCAFEF00D, -1]

# Each plan is a list of draws (kind, shape) made in order from one generator.
PLANS = [
    [("rand", [1])],
    [("rand", [17])],
    [("rand", [1000])],
    [("randn", [1])],
    [("randn", [3])],
    [("randn", [15])],
    [("randn", [16])],
    [("randn", [17])],
    [("randn", [33])],
    [("randn", [1000])],
    [("randn", [1, 4, 64, 64])],
    # successive draws from one generator
    [("randn", [3]), ("randn", [3])],  # carries the cached Box-Muller value
    [("randn", [1]), ("randn", [16]), ("randn", [1])],  # cache survives the vector path
    [("randn", [16]), ("randn", [5])],
    [("rand", [5]), ("randn", [20]), ("rand", [3])],
    [("randn", [1, 4, 64, 64]), ("randn", [1, 4, 64, 64])],
]

# Extra seeds for the bulk exactness check of the vector path.
BULK_SEEDS = list(range(100, 108))


def describe(t: torch.Tensor) -> dict:
    flat = t.reshape(-1)
    vals = flat.tolist()
    out = {
        "shape": list(t.shape),
        "numel": flat.numel(),
        "sum": float(flat.double().sum().item()),
        "sha256": hashlib.sha256(flat.contiguous().numpy().astype("<f4").tobytes()).hexdigest(),
    }
    if len(vals) <= FULL_LIMIT:
        out["values"] = vals
    else:
        out["first"] = vals[:8]
        out["last"] = vals[-8:]
    return out


def run_plan(seed: int, plan) -> dict:
    g = torch.Generator("cpu")
    g.manual_seed(seed)
    draws = []
    for kind, shape in plan:
        fn = torch.rand if kind == "rand" else torch.randn
        t = fn(shape, generator=g, dtype=torch.float32)
        draws.append({"kind": kind, **describe(t)})
    return {"seed": str(seed), "draws": draws}


def main() -> None:
    torch.set_num_threads(1)
    capability = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()  # torch >= 2.0
    except AttributeError:
        for line in torch.__config__.show().splitlines():
            if "CPU capability usage" in line:
                capability = line.split(":", 1)[1].strip()
    cases = [run_plan(seed, plan) for seed in SEEDS for plan in PLANS]
    cases += [run_plan(seed, [("randn", [4096])]) for seed in BULK_SEEDS]
    doc = {
        "generator": "tests/data/gen_torch_random.py",
        "torch": torch.__version__,
        "cpu_capability": capability,
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "note": "seeds are decimal strings (they exceed 2^53); values are float32 stored as JSON doubles",
        "cases": cases,
    }
    json.dump(doc, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
