"""Host time of one online-Hadamard / fake-quant call, the GPU launch itself left out (runs on a CPU).

    PYTHONPATH=/path/to/triton python benchmarks/launch_overhead.py [--json out.json]

At decode sizes (1-16 rows) an online Hadamard or activation quantizer is bound by what the host
spends per call, not by the GPU (issue 11: <= 0.02 ms per Hadamard at 1-16 rows). This script
times rotaquant's Python side of a call (plan and grid lookup, output allocation, argument
packing, the compiled-kernel cache of ``launch_cached``) with the compiled kernel's ``run``
replaced by a no-op, on CPU tensors, so the wrapper's cost can be tracked without a GPU (``hadamard,
fast path``: what ``hadamard_transform`` runs for a contiguous CUDA input whose call kind has been
launched before, after its ``is_cuda`` test). What it
leaves out: Triton's C launcher and the CUDA driver (a few microseconds more on the GPU host).
Prints min and median microseconds per call over ``--runs`` runs of ``--calls`` calls.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit  # noqa: E402

from rotaquant.io import atomic_write_json  # noqa: E402

CASES = [(1, 4096), (16, 4096), (16, 1536), (16, 576), (2048, 4096)]


class _NoKernel:
    """A compiled kernel whose launch does nothing."""

    packed_metadata = function = None

    def run(self, *args) -> None:
        pass


class _NoJit:
    """``jit_fn[grid](*args, num_warps=...)`` returning :class:`_NoKernel` (the first call's path)."""

    def __getitem__(self, grid):
        return lambda *args, num_warps: _NoKernel()


def per_call_us(fn, calls: int, runs: int) -> tuple[float, float]:
    for _ in range(200):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return min(times), statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import rotaquant.kernels.hadamard_triton as ht
    import rotaquant.kernels.quant_triton as qt
    from rotaquant.quant.quantizer import QuantSpec
    from rotaquant.rotation import transform as tr

    # compiled-kernel path on CPU tensors: no interpreter, no CUDA stream, kernels that do nothing
    ht._INTERPRET = qt._INTERPRET = False
    ht._raw_stream = lambda index: 0
    ht._hadamard_kernel = qt._fake_quant_kernel = _NoJit()
    spec = QuantSpec(bits=4, symmetric=False, group_size=None, clip_ratio=0.9)
    rows_out = []
    for rows, n in CASES:
        x = torch.randn(rows, n, dtype=torch.float16)
        out = torch.empty_like(x)
        for what, fn in (("hadamard", lambda x=x: ht.transform(x, True)),
                         ("hadamard, fast path", lambda x=x: tr._fast_kernel(x, True)),
                         ("hadamard + int4 fake quant", lambda x=x: ht._rowwise(x, True, False, 2, spec)),
                         ("int4 fake quant", lambda x=x, out=out: qt.launch_fake_quant(x, out, spec))):
            lo, med = per_call_us(fn, args.calls, args.runs)
            rows_out.append({"what": what, "rows": rows, "n": n, "min_us": lo, "median_us": med})
            print(f"{what:28s} {rows:5d} x {n:5d}: min {lo:6.2f} us, median {med:6.2f} us per call", flush=True)
    if args.json:
        atomic_write_json(args.json, {"command": " ".join(sys.argv), "commit": git_commit(),
                                      "machine": platform.machine(), "python": platform.python_version(),
                                      "torch": torch.__version__, "rows": rows_out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
