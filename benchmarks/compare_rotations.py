"""Two rotation files side by side: the largest difference per matrix, and the runs' timings.

    python benchmarks/compare_rotations.py one.safetensors two.safetensors [--json one.json two.json]

Made for the 1-GPU vs 2-GPU (FSDP) learning comparison of ``gpu_session.sh fsdp``: the same seed
and data should give the same matrices up to reduction order (GPU backward kernels are not
deterministic, so not bit for bit), and ``--json`` adds each run's median step time, peak memory
and last loss from ``rotaquant optimize --json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def compare(a: dict, b: dict) -> list[dict]:
    """One row per matrix name of ``a``: max |a - b| (None when ``b`` lacks it or the shapes differ)."""
    rows = []
    for key in sorted(a):
        other = b.get(key)
        same_shape = other is not None and other.shape == a[key].shape
        diff = (a[key].double() - other.double()).abs().max().item() if same_shape else None
        rows.append({"matrix": key, "max_abs_diff": diff})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    p.add_argument("--json", nargs=2, type=Path, default=None, metavar=("FIRST_JSON", "SECOND_JSON"),
                   help="the two runs' `rotaquant optimize --json` files")
    args = p.parse_args(argv)
    rows = compare(load_file(str(args.first)), load_file(str(args.second)))
    missing = [r["matrix"] for r in rows if r["max_abs_diff"] is None]
    diffs = [r["max_abs_diff"] for r in rows if r["max_abs_diff"] is not None]
    print(f"{len(rows)} matrices; largest |difference| {max(diffs, default=float('nan')):.3e}"
          + (f"; missing or reshaped in {args.second}: {', '.join(missing)}" if missing else ""))
    if args.json:
        for path in args.json:
            run = json.loads(path.read_text())
            print(f"{path.name}: world {run.get('world_size')}, median step {run.get('median_step_seconds')} s, "
                  f"peak {run.get('peak_memory_gib')} GiB, loss {run.get('first_loss')} -> {run.get('last_loss')}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
