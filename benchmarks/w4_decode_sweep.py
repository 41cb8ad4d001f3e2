"""W4A16 decode kernel (issue 12): one-row time of each tile configuration, per LLaMA-7B linear shape.

Each measurement runs ``--copies`` different weights of one shape back to back inside one CUDA
graph (more bytes than the L2 cache holds, as in a real model), so the time is what one linear
costs in a decoder, launch gaps included. Rows: FP16 cuBLAS, then every tile of the split-K
kernel (:mod:`rotaquant.kernels.w4a16_gemv`, modes ``fast``, ``tc`` and ``dot``) and the autotuned
choice. Prints a table, writes JSON::

    python benchmarks/w4_decode_sweep.py --json benchmarks/results/w4_decode_sweep_h200.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit, median_seconds  # noqa: E402

from rotaquant.io import atomic_write_json  # noqa: E402
from rotaquant.kernels import w4a16_gemv  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in)
TILES = [(16, 4, 1, 4), (32, 4, 1, 4), (32, 8, 1, 4), (64, 8, 1, 4), (64, 16, 1, 4), (128, 4, 1, 4),
         (128, 8, 1, 4), (128, 16, 1, 8), (256, 8, 1, 8), (64, 8, 2, 4), (128, 8, 2, 4),
         (32, 16, 1, 4), (64, 32, 1, 4), (128, 32, 1, 8)]  # BLOCK_N, SPLIT_K, UNROLL, warps


def graph_us(step, copies: int) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return median_seconds(graph.replay, torch.device("cuda"), 20, 7) / copies * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, default=12)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--modes", default="fast,tc,dot")
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="out x in, comma-separated")
    p.add_argument("--no-autotuned", action="store_true", help="skip the autotuned rows (their tuning is slow)")
    p.add_argument("--tiles", default=None, help="only these tiles, BLOCK_N:SPLIT_K:UNROLL:warps, comma-separated "
                   "(e.g. one tile under ncu)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    tiles = TILES if args.tiles is None else [tuple(map(int, t.split(":"))) for t in args.tiles.split(",")]
    if any(len(t) != 4 for t in tiles):
        p.error("--tiles takes BLOCK_N:SPLIT_K:UNROLL:warps items")
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for n, k in (tuple(map(int, shape.split("x"))) for shape in args.shapes.split(",")):
        x = torch.randn(1, k, generator=gen).to("cuda", torch.float16)
        ws = [torch.randn(n, k, generator=gen).mul_(0.02).to("cuda", torch.float16) for _ in range(args.copies)]
        us = graph_us(lambda x=x, ws=ws: [torch.nn.functional.linear(x, w) for w in ws], args.copies)
        fp16_bytes = n * k * 2
        rows.append({"shape": f"{n}x{k}", "variant": "fp16 cuBLAS", "us": us, "gb_s": fp16_bytes / us / 1e3})
        print(rows[-1], flush=True)
        g = k // args.group
        ops = []
        for w in ws:
            codes = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda")
            scale = w.float().reshape(n, g, -1).abs().amax(-1) / 7
            ops.append(w4a16_gemv.pack_w4(codes, scale, torch.zeros_like(scale), args.group))
        del ws
        w4_bytes = n * k // 2 + 2 * 4 * n * g
        for mode in args.modes.split(","):
            for tile in ([] if args.no_autotuned else [None]) + tiles:
                cfg = None if tile is None else dict(zip(("BLOCK_N", "SPLIT_K", "UNROLL", "num_warps"), tile,
                                                         strict=True))
                try:
                    us = graph_us(lambda x=x, ops=ops, cfg=cfg, mode=mode: [w4a16_gemv.w4a16_matmul(x, o, mode=mode, config=cfg)
                                                              for o in ops], args.copies)
                    row = {"shape": f"{n}x{k}", "variant": f"w4 {mode}", "tile": tile or "autotuned", "us": us,
                           "gb_s": w4_bytes / us / 1e3}
                except Exception as exc:  # one failing tile must not lose the others
                    row = {"shape": f"{n}x{k}", "variant": f"w4 {mode}", "tile": tile, "error": str(exc)[:200]}
                fp = next(r["us"] for r in rows if r["shape"] == f"{n}x{k}" and r["variant"] == "fp16 cuBLAS")
                if "us" in row:
                    row["vs_fp16"] = fp / row["us"]
                rows.append(row)
                print({k_: (round(v, 2) if isinstance(v, float) else v) for k_, v in row.items()}, flush=True)
        del ops
    result = {"machine": torch.cuda.get_device_name(), "torch": torch.__version__, "commit": git_commit(),
              "command": " ".join(sys.argv), "copies": args.copies, "rows": rows}
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
