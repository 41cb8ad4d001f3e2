"""Tuning sweep of the fused Hadamard + quantization kernel and the fake-quant kernel (issue 11).

The kernels read their tile and warp overrides from the environment at import
(``ROTAQUANT_HADAMARD_TILE`` / ``_WARPS``, ``ROTAQUANT_FAKEQUANT_TILE`` / ``_WARPS``; 0 or unset:
the default rule), so a sweep is one process per setting; each appends one JSON line per shape
to ``--out`` and prints a table row. The shapes are the evaluation's (smollm2, batch 8 x 2048
tokens): R4 + per-token activation quantization before down_proj (16384 x 1536), the per-token
quantizer of a 576-wide input, R3 on queries and R3 + per-head key quantization (head_dim 64),
plus 4096 and 5120. Columns, ms per call (CUDA events, median of 5 x 50 calls): ``copy``,
``triton`` (the transform alone), ``fused`` (transform + int4 fake quantization, one launch),
``fakequant`` (the fake-quant kernel alone on the same input), ``unfused`` (transform, then the
fake-quant kernel: what the fused launch replaces).

    for t in 2048 4096; do ROTAQUANT_HADAMARD_TILE=$t python benchmarks/fused_quant_sweep.py --out s.jsonl; done
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from bench_common import cuda_ms, git_commit

from rotaquant.kernels import hadamard_fake_quantize
from rotaquant.kernels.fake_quant import kernel_fake_quantize
from rotaquant.quant.quantizer import QuantSpec
from rotaquant.rotation.transform import hadamard_transform

SHAPES = ("16384x1536", "16384x576", "147456x64", "49152x64", "16384x4096", "16384x5120")


def sweep_one(rows: int, n: int, spec: QuantSpec) -> dict:
    x = torch.randn(rows, n, device="cuda", dtype=torch.float16)
    y = hadamard_transform(x, backend="triton")
    rec = {"rows": rows, "n": n, "group_size": spec.group_size}
    cols = {
        "copy": lambda: x.clone(),
        "triton": lambda: hadamard_transform(x, backend="triton"),
        "fused": lambda: hadamard_fake_quantize(x, spec, backend="triton"),
        "fakequant": lambda: kernel_fake_quantize(y, spec, backend="triton"),
        "unfused": lambda: kernel_fake_quantize(hadamard_transform(x, backend="triton"), spec, backend="triton"),
    }
    for name, fn in cols.items():
        try:
            rec[name] = cuda_ms(fn, 50, 5)
        except Exception as exc:  # a setting a kernel cannot compile (too many registers) loses its column only
            rec[name] = None
            rec.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
    fused, ref = hadamard_fake_quantize(x, spec, backend="triton"), kernel_fake_quantize(y, spec, backend="triton")
    rec["fused_equals_unfused"] = bool(torch.equal(fused, ref))
    return rec


def pick(path: str, fused_shape: str, fakequant_shape: str) -> str:
    """Shell assignments of the sweep's fastest settings in ``path``: the Hadamard kernel's for the
    fused column at ``fused_shape``, the fake-quant kernel's for its column at ``fakequant_shape``."""
    recs = [json.loads(line) for line in open(path) if line.strip()]

    def best(shape: str, column: str, prefix: str) -> dict:
        rows, n = map(int, shape.split("x"))
        cands = [r for r in recs if r["rows"] == rows and r["n"] == n and r.get(column)]
        top = min(cands, key=lambda r: r[column])
        return {k: v for k, v in top["tuning"].items() if k.startswith(prefix) and v != "0"}

    chosen = {**best(fused_shape, "fused", "ROTAQUANT_HADAMARD_"),
              **best(fakequant_shape, "fakequant", "ROTAQUANT_FAKEQUANT_")}
    return " ".join(f"{k}={v}" for k, v in sorted(chosen.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="ROWSxN list; n = 64 uses per-head groups of 64")
    p.add_argument("--out", required=True, help="JSON-lines file to append to (with --pick: to read)")
    p.add_argument("--pick", nargs=2, metavar=("FUSED_SHAPE", "FAKEQUANT_SHAPE"), default=None,
                   help="print the fastest settings found in --out (shell assignments) and exit")
    args = p.parse_args()
    if args.pick:
        print(pick(args.out, *args.pick))
        return
    tuning = {k: v for k, v in os.environ.items()
              if k.startswith(("ROTAQUANT_HADAMARD_", "ROTAQUANT_FAKEQUANT_", "ROTAQUANT_QUANT_DIV"))}
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": git_commit(), "tuning": tuning}
    for shape in args.shapes.split(","):
        rows, n = map(int, shape.split("x"))
        rec = {**meta, **sweep_one(rows, n, QuantSpec(bits=4, group_size=64 if n == 64 else None))}
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        cells = " ".join(f"{k}={rec[k]:.4f}" if isinstance(rec.get(k), float) else f"{k}=-"
                         for k in ("copy", "triton", "fused", "fakequant", "unfused"))
        print(f"{tuning} {shape}: {cells} equal={rec['fused_equals_unfused']}", flush=True)


if __name__ == "__main__":
    main()
