"""Instruction mix of the W4A16 decode kernel's PTX for sm90, compiled ahead of time (no GPU needed).

    PYTHONPATH=/path/to/triton:src python benchmarks/w4_ptx_count.py --mode fast --block-n 64 --split-k 8

Compiles :func:`rotaquant.kernels.w4a16_gemv._w4_mm_kernel` for one tile with Triton's own
``triton.compile`` (target CUDA sm90, ptxas not needed for PTX) and prints how many PTX
instructions the kernel has and of which kinds, with the weights one thread handles per block
step, so modes and tiles can be compared by instructions per weight before a GPU run. PTX is not
SASS (ptxas schedules and may fuse), so this is a guide, not a measurement of time.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SIGNATURE = {"x_ptr": "*fp16", "w_ptr": "*u8", "s_ptr": "*fp32", "z_ptr": "*fp32", "y_ptr": "*fp16",
             "part_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "stride_xm": "i32", "stride_ym": "i32",
             "M_BUCKET": "i32", "K": "constexpr", "H": "constexpr", "PER_CHANNEL": "constexpr", "MODE": "constexpr",
             "BM": "constexpr", "BLOCK_N": "constexpr", "SPLIT_K": "constexpr", "UNROLL": "constexpr",
             "ZP8": "constexpr"}
ALIGNED = ("x_ptr", "w_ptr", "s_ptr", "z_ptr", "y_ptr", "part_ptr", "cnt_ptr", "N", "stride_xm", "stride_ym")


def instructions(ptx: str) -> list[str]:
    """The instruction lines of a PTX listing (no directives, labels, braces or comments)."""
    out = []
    for line in ptx.splitlines():
        text = line.strip()
        if text and not text.startswith(("//", ".", "$", "{", "}", ")")) and not text.endswith(":"):
            out.append(text)
    return out


def loop_body(ptx: str) -> list[str]:
    """The instructions of the innermost loop (from LLVM's "Inner Loop Header" label to the branch
    back to it); empty when there is none."""
    lines = ptx.splitlines()
    head = next((i for i, line in enumerate(lines) if "Inner Loop Header" in line), None)
    if head is None:
        return []
    label = lines[head].split(":")[0].strip()
    end = next((i for i in range(head + 1, len(lines)) if "bra" in lines[i] and lines[i].rstrip().endswith(f"{label};")),
               len(lines) - 1)
    return instructions("\n".join(lines[head + 1:end + 1]))


def main(argv: list[str] | None = None) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rotaquant.kernels import w4a16_gemv

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", default="fast", choices=list(w4a16_gemv._MODES))
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--half", type=int, default=64, help="H, half a group (64 for groups of 128)")
    p.add_argument("--block-n", type=int, default=64)
    p.add_argument("--split-k", type=int, default=8)
    p.add_argument("--unroll", type=int, default=1)
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--sym", action="store_true", help="symmetric codes (every zero point 8: the tc mode's short path)")
    p.add_argument("--ptx", type=Path, default=None, help="also write the PTX here")
    args = p.parse_args(argv)
    mode = w4a16_gemv._MODES[args.mode]
    bm = 1 if mode in w4a16_gemv._ONE_ROW else w4a16_gemv.BLOCK_M
    consts = {"K": args.k, "H": args.half, "PER_CHANNEL": False, "MODE": mode, "BM": bm, "BLOCK_N": args.block_n,
              "SPLIT_K": args.split_k, "UNROLL": args.unroll, "ZP8": args.sym}
    names = list(SIGNATURE)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ALIGNED}
    src = ASTSource(fn=w4a16_gemv._w4_mm_kernel, signature=SIGNATURE, constexprs=consts, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": args.warps, "num_stages": 3})
    ptx = kernel.asm["ptx"]
    if args.ptx:
        args.ptx.write_text(ptx)
    found, loop = instructions(ptx), loop_body(ptx)
    per_thread = args.block_n * 2 * args.half * args.unroll // (32 * args.warps)
    print(f"mode {args.mode}, tile BLOCK_N {args.block_n} x H {args.half} bytes, unroll {args.unroll}, "
          f"{args.warps} warps: {len(found)} PTX instructions in the kernel, {len(loop)} in its loop, which "
          f"handles {per_thread} weights per thread: {len(loop) / per_thread:.2f} instructions per weight")
    for op, count in Counter(line.split()[0] for line in loop).most_common(20):
        print(f"  {op:24s} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
