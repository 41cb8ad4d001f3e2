"""What the benchmark scripts share: the commit they measure and a median timer.

Scripts import it as ``bench_common`` (``python benchmarks/x.py`` puts this folder on the path;
a script loaded otherwise adds it, as the scripts do).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def git_commit() -> str | None:
    """The ``RQ_COMMIT`` environment variable when set (a ``git archive`` snapshot run on the GPU
    machine, whose copy of the repository may hold an older ``.git``), else the checkout's commit
    (``+dirty`` when tracked files differ from it), else None."""
    if os.environ.get("RQ_COMMIT"):
        return os.environ["RQ_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE,
                             timeout=10).stdout.strip()
        dirty = sha and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                       text=True, cwd=HERE, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{sha}{'+dirty' if dirty else ''}" if sha else None


def host_seconds(fn, reps: int, runs: int, warmup: int = 0) -> float:
    """Median over ``runs`` of the host's wall-clock seconds per call of ``reps`` back-to-back
    calls of ``fn`` on a CUDA device, after ``warmup`` calls; the GPU is synchronised before each
    run, not between calls, so while its queue is not full this is what a call costs the host."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t) / reps)
    torch.cuda.synchronize()
    return statistics.median(times)


def median_seconds(fn, device: torch.device, reps: int, runs: int, warmup: int = 0) -> float:
    """Median over ``runs`` of the mean seconds per call of ``reps`` back-to-back calls of
    ``fn`` (CUDA events on a CUDA ``device``, the wall clock elsewhere), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / reps)
        else:
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append((time.perf_counter() - t) / reps)
    return statistics.median(times)


def cuda_ms(fn, reps: int, runs: int, warmup: int = 3) -> float:
    """Milliseconds per call on the current CUDA device: :func:`median_seconds` with CUDA events."""
    return 1e3 * median_seconds(fn, torch.device("cuda"), reps, runs, warmup=warmup)

