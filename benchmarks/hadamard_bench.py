"""Benchmark the online Hadamard transform (issue 11): rows x n grid, one table, one JSON.

Columns (ms per call, median of ``--runs`` runs of ``--reps`` back-to-back calls, CUDA events):
``copy`` (``x.clone()``), ``dense`` (``x @ H.T`` with a precomputed normalised matrix),
``reference`` (rotaquant's torch path), ``triton`` (rotaquant's kernel, asked for by name:
the full dispatch every call), ``auto`` (``hadamard_transform(x)``, the default call a model
makes: after the first call of a kind, the fast path of
:func:`rotaquant.kernels.hadamard_triton.fast_transform`), ``fht``
(fast-hadamard-transform, when importable and it has a kernel for ``n``: powers of two and
12/20/28/40 times a power of two; its 12/20/28/40 cores are its own matrices, so only its speed
is comparable), ``int4`` (fused Hadamard + per-token symmetric int4 codes and scales),
``int4_fake`` (fused Hadamard + int4 quantize-dequantize), ``unfused`` (kernel transform, then
the torch quantizer), and ``graph`` (the kernel replayed from a CUDA graph, rows <= 16: the
launch-overhead-free time).  ``host_copy`` / ``host_triton`` / ``host_auto``: the host's wall-clock ms per call
while the GPU queue is not full (no synchronisation between the calls): where a column's CUDA-event
time equals its host time, that call is bound by the Python/launch path, not by the GPU.
Orders with no Hadamard construction are skipped and listed.

    python benchmarks/hadamard_bench.py --out benchmarks/results/hadamard_h100.json

Needs a CUDA device; fast-hadamard-transform is optional (see ../shared/bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile

import torch
from bench_common import cuda_ms, git_commit, host_seconds

from rotaquant.kernels import hadamard_quantize, triton_available
from rotaquant.quant.quantizer import QuantSpec, quant_params, quantize_to_int, to_groups
from rotaquant.rotation.hadamard import hadamard_factorization, hadamard_matrix, is_constructible
from rotaquant.rotation.transform import hadamard_transform

logger = logging.getLogger(__name__)

ROWS = (1, 16, 2048, 16384)
SIZES = (64, 128, 576, 1536, 4096, 5120, 11008, 14336)
INT4 = QuantSpec(bits=4)


def cuda_time(fn, reps: int, runs: int) -> float:
    """Median over ``runs`` of the mean ms per call of ``reps`` back-to-back calls (3 warm-up calls)."""
    return cuda_ms(fn, reps, runs)


def host_time(fn, reps: int, runs: int) -> float:
    """Like :func:`cuda_time`, the host's wall-clock ms per call (:func:`bench_common.host_seconds`)."""
    return 1e3 * host_seconds(fn, reps, runs, warmup=3)


def graph_time(fn, reps: int, runs: int) -> float:
    """Like :func:`cuda_time`, the ``reps`` calls captured once in a CUDA graph and replayed."""
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return cuda_time(graph.replay, 1, runs) / reps


def fht_function(n: int):
    """fast-hadamard-transform's function for order ``n`` (scale-taking), or None."""
    try:
        import fast_hadamard_transform as fht
        from fast_hadamard_transform import fast_hadamard_transform_interface as iface
    except ImportError:
        return None
    if n & (n - 1) == 0:
        return fht.hadamard_transform
    for c in (12, 20, 28, 40):
        q = n // c
        if n % c == 0 and q & (q - 1) == 0:
            return getattr(iface, f"hadamard_transform_{c}N", None)
    return None


def unfused_int4(x: torch.Tensor):
    y = hadamard_transform(x)
    scale, zero = quant_params(y, INT4)
    return quantize_to_int(to_groups(y, INT4), scale, zero, INT4).to(torch.int8), scale


def bench_one(rows: int, n: int, dtype: torch.dtype, reps: int, runs: int) -> dict:
    x = torch.randn(rows, n, device="cuda", dtype=dtype)
    rec: dict = {"rows": rows, "n": n, "m_k": list(hadamard_factorization(n))}
    cols = {
        "copy": lambda: x.clone(),
        "reference": lambda: hadamard_transform(x, backend="reference"),
    }
    if n <= 16384:
        ht = (hadamard_matrix(n) / math.sqrt(n)).T.to(device="cuda", dtype=dtype).contiguous()
        cols["dense"] = lambda: x @ ht
    if triton_available():
        cols["triton"] = lambda: hadamard_transform(x, backend="triton")
        cols["auto"] = lambda: hadamard_transform(x)  # the default call: the fast path after the first
        cols["int4"] = lambda: hadamard_quantize(x, INT4, backend="triton")
        cols["int4_fake"] = lambda: _fake(x)
        cols["unfused"] = lambda: unfused_int4(x)
    fht = fht_function(n)
    if fht is not None:
        scale = 1.0 / math.sqrt(n)
        cols["fht"] = lambda: fht(x, scale)
    for name, fn in cols.items():
        try:
            rec[name] = cuda_time(fn, reps, runs)
        except Exception as exc:  # one failing column must not lose the others
            rec[name] = None
            rec.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("%s rows=%d n=%d: %s", name, rows, n, rec["errors"][name])
    for name in ("copy", "triton", "auto"):
        if rec.get(name) is not None:
            rec[f"host_{name}"] = host_time(cols[name], reps, runs)
    if "triton" in cols and rows <= 16:
        try:
            rec["graph"] = graph_time(cols["triton"], reps, runs)
        except Exception as exc:
            rec.setdefault("errors", {})["graph"] = f"{type(exc).__name__}: {exc}"[:300]
    if rec.get("triton"):
        y, ref = hadamard_transform(x, backend="triton"), hadamard_transform(x, backend="reference")
        rec["max_abs_diff_vs_reference"] = (y.float() - ref.float()).abs().max().item()
        rec["triton/copy"] = rec["triton"] / rec["copy"]
        if rec.get("fht"):
            rec["triton/fht"] = rec["triton"] / rec["fht"]
        if rec.get("int4"):
            rec["int4/triton"] = rec["int4"] / rec["triton"]
        if rec.get("int4_fake"):
            rec["int4_fake/triton"] = rec["int4_fake"] / rec["triton"]
    return rec


def _fake(x):
    from rotaquant.kernels import hadamard_fake_quantize

    return hadamard_fake_quantize(x, INT4, backend="triton")


def environment(commit: str | None) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import fast_hadamard_transform

        fht_version = getattr(fast_hadamard_transform, "__version__", "installed")
    except ImportError:
        fht_version = None
    return {
        "machine": platform.node(),
        # the kernel's tuning overrides in effect (rotaquant.kernels.hadamard_triton._tuning)
        "tuning": {k: v for k, v in os.environ.items() if k.startswith("ROTAQUANT_HADAMARD_")},
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "fast_hadamard_transform": fht_version,
        "commit": commit,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}" if v < 10 else f"{v:.1f}"


def table(records: list[dict]) -> str:
    cols = ["copy", "dense", "reference", "triton", "auto", "fht", "int4", "int4_fake", "unfused", "graph",
            "host_copy", "host_triton", "host_auto", "triton/copy", "triton/fht", "int4/triton"]
    lines = ["| rows x n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in records:
        m, k = r["m_k"]
        name = f"{r['rows']} x {r['n']} ({m}·{1 << k})" if m > 1 else f"{r['rows']} x {r['n']}"
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def write_json(path: str, data: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(map(str, ROWS)))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--commit", default=None, help="git commit of the tree being measured (default: the checkout's)")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        print("hadamard_bench needs a CUDA device", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    sizes = [int(s) for s in args.sizes.split(",")]
    skipped = [n for n in sizes if not is_constructible(n)]
    for n in skipped:
        print(f"skipping n={n}: rotaquant has no Hadamard construction for it")
    records = []
    for rows in (int(r) for r in args.rows.split(",")):
        for n in sizes:
            if n not in skipped:
                records.append(bench_one(rows, n, dtype, args.reps, args.runs))
                logger.info("%s", {k: v for k, v in records[-1].items() if k != "errors"})
    env = environment(args.commit or git_commit())
    print(f"\n{env['gpu']}, torch {env['torch']}, triton {env['triton']}, {args.dtype}, ms per call "
          f"(median of {args.runs} x {args.reps} reps)\n")
    print(table(records))
    if args.out:
        write_json(args.out, {"environment": env, "dtype": args.dtype, "reps": args.reps,
                              "runs": args.runs, "skipped": skipped, "results": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
