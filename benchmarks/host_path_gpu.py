"""Where the host time of one online-Hadamard call goes, on a GPU machine (issue 11).

    python benchmarks/host_path_gpu.py [--json out.json] [--profile out.txt]

``hadamard_bench.py``'s ``host_triton`` column is the host's wall-clock time per call; at 1-16
rows it is what a call costs (the GPU part is a few microseconds, see its ``graph`` column). This
script splits it: wall-clock microseconds per call (median of ``--runs`` runs of ``--calls``
calls, the GPU synchronised before each run only) of every layer of the call path, from the
public :func:`~rotaquant.rotation.transform.hadamard_transform` down to the compiled kernel's
``run`` with its arguments already packed (Triton's C launcher and the driver: the floor), next to
``x.clone()`` and ``torch.empty``. ``--profile`` writes cProfile's table of the public call.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit, host_seconds  # noqa: E402

from rotaquant.io import atomic_write_json  # noqa: E402

CASES = [(16, 4096), (16, 1536), (1, 576)]


def layers(x: torch.Tensor) -> dict:
    """name -> zero-argument callable, from the public call down to the raw launch."""
    import rotaquant.kernels.hadamard_triton as ht
    from rotaquant.rotation.transform import hadamard_transform

    rows, n = x.shape
    out = torch.empty_like(x)
    hadamard_transform(x)  # compile
    st = ht._setup(n, x.dtype, True, 0, None)
    core = x if st.core_dtype is None else ht._core_operand(n, False, st.core_dtype, x.device)
    syl = ht._sylvester_table(x.dtype, x.device)
    args = (x, out, core, x, x, x, x, syl, rows, n, st.groups, n, n, st.norm, st.clip, st.rcp, st.div, *st.consts)
    key = (id(st), False, False, n % 16 == 0)
    aligned = tuple(p.data_ptr() % 16 == 0 for p in (x, out, core, x, x, x, x, syl))
    kernel = ht._COMPILED.get((ht._hadamard_kernel, key, aligned, x.device.index))
    grid = (ht.ceil_div(rows, st.plan.R), st.plan.blocks)
    stream = ht._raw_stream(x.device.index)
    out_fns = {
        "x.clone()": lambda: x.clone(),
        "torch.empty_like": lambda: torch.empty_like(x),
        "hadamard_transform (public)": lambda: hadamard_transform(x),
        "hadamard_triton.transform": lambda: ht.transform(x, True),
        "hadamard_triton.launch(out=)": lambda: ht.launch(x, True, out=out),
        "launch_cached (packed args)": lambda: ht.launch_cached(ht._hadamard_kernel, grid, args, st.plan.num_warps,
                                                                (x, out, core, x, x, x, x, syl), key),
        "torch.cuda.current_device": torch.cuda.current_device,
        "_raw_stream": lambda: ht._raw_stream(x.device.index),
    }
    if kernel is not None:  # the compiled kernel this call launches (absent: the direct path was not taken)
        run, function, meta = kernel.run, kernel.function, kernel.packed_metadata
        out_fns["kernel.run (C launcher floor)"] = lambda: run(grid[0], grid[1], 1, stream, function, meta, None,
                                                               None, None, *args)
    return out_fns


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--profile", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_path_gpu needs a CUDA device", file=sys.stderr)
        return 2
    rows_out = []
    for rows, n in CASES:
        x = torch.randn(rows, n, device="cuda", dtype=torch.float16)
        for name, fn in layers(x).items():
            us = 1e6 * host_seconds(fn, args.calls, args.runs, warmup=50)
            rows_out.append({"rows": rows, "n": n, "what": name, "us": us})
            print(f"{rows:5d} x {n:5d}  {name:32s} {us:7.2f} us", flush=True)
    if args.profile:
        from rotaquant.rotation.transform import hadamard_transform

        x = torch.randn(16, 4096, device="cuda", dtype=torch.float16)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5000):
            hadamard_transform(x)
        prof.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        args.profile.write_text(buf.getvalue())
        print(buf.getvalue()[:4000])
    if args.json:
        atomic_write_json(args.json, {"command": " ".join(sys.argv), "commit": git_commit(),
                                      "gpu": torch.cuda.get_device_name(), "host": platform.processor(),
                                      "python": platform.python_version(), "torch": torch.__version__,
                                      "rows": rows_out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
