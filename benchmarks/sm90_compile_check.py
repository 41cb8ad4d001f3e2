"""Compile every variant of rotaquant's Triton kernels for sm_90 ahead of time, no GPU needed.

    PYTHONPATH=/path/to/triton:src python benchmarks/sm90_compile_check.py [--kernels hadamard fakequant w4]

Triton's interpreter runs the kernels' logic on a CPU but not their GPU lowering (inline PTX,
layouts, register allocation); this script runs that lowering, through ptxas, for the variants
the library launches: the Hadamard kernel for every order of the tests' grid and each input dtype
(plus the fused quantizer modes), the fake-quant kernel for row widths of one to four parts, each
dtype and grid, and the W4A16 decode kernel's ``tc`` mode for every autotuned tile. It reports
failures (a variant that would not compile on the GPU) and, with ``--registers``, the registers
of the Hadamard variants. ``ROTAQUANT_QUANT_DIV=fma`` compiles the FMA-division variants.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
ORDERS = [64, 128, 576, 1536, 4096, 5120, 11008, 14336, 12, 20, 28, 40, 44, 52, 60, 68, 76, 80, 84, 96, 108, 140,
          148, 164, 180, 344, 896, 4864, 29568, 1, 2, 4, 8, 16, 32, 256, 1024, 8192, 16384]
PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def _compile(fn, sig: dict, consts: dict, aligned, **options):
    names = list(sig)
    sig = {**sig, **{k: "constexpr" for k in consts}}
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs), target=TARGET, options=options)


def _registers(kernel) -> int | None:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith("REG:"):
            return int(word[4:])
    return None


def hadamard_variants():
    from rotaquant.kernels import hadamard_triton as ht
    from rotaquant.quant.quantizer import QuantSpec

    names = ["x_ptr", "out_ptr", "core_ptr", "codes_ptr", "scale_ptr", "zero_ptr", "signs_ptr", "syl_ptr", "rows", "n",
             "G", "stride_x", "stride_o", "norm", "clip", "rcp", "div"]
    cnames = ["M", "MP", "MK", "IB", "KB", "H", "F1", "F2", "R", "NS_IN", "NS", "MODE", "SYM", "QMIN", "QMAX", "GP",
              "SPLIT_DT", "ON_GPU", "SIGNS"]
    cases = [(n, dt, 0, None, False) for n in ORDERS for dt in PTR]
    cases += [(n, torch.float16, mode, spec, signs) for n in (64, 576, 1536, 4096) for mode in (1, 2)
              for spec in (QuantSpec(4), QuantSpec(4, symmetric=False, group_size=32)) for signs in (False, True)]
    for n, dt, mode, spec, signs in cases:
        if mode and not ht.fused_supported(n, spec):
            continue
        st = ht._setup(n, dt, True, mode, spec, signs)
        core = (PTR[ht.SPLIT_DTYPE] if dt == torch.float32 else PTR[dt]) if st.core_dtype is not None else PTR[dt]
        types = [PTR[dt], PTR[dt], core, "*i8" if (not mode or st.sym) else "*u8", "*fp32", "*fp32", PTR[dt], "*i16",
                 "i32", "i32", "i32", "i32", "i32", "fp32", "fp32", "fp32", "fp32"]
        label = f"hadamard n={n} {dt} mode={mode} {spec or ''} signs={signs}"
        yield label, lambda types=types, st=st, n=n: _compile(
            ht._hadamard_kernel, dict(zip(names, types, strict=True)), dict(zip(cnames, st.consts, strict=True)),
            # the launch specialises n and the output's row stride (n) on their divisibility by 16
            ("x_ptr", "out_ptr", "core_ptr", "syl_ptr") + (("n", "stride_o") if n % 16 == 0 else ()),
            num_warps=st.plan.num_warps)


def fakequant_variants():
    from rotaquant.kernels import pow2_at_least
    from rotaquant.kernels import quant_triton as qt

    for g in (16, 48, 64, 96, 100, 576, 1536, 3000, 4096, 5120, 11008, 14336, 16384):
        for ptr in PTR.values():
            for sym, qmin, qmax in ((True, -7, 7), (False, 0, 15), (True, -8, 7)):
                parts = qt.row_parts(g)
                w = sum(parts)
                r = 1 << (max(1, qt.TILE // w).bit_length() - 1)
                sig = {"x_ptr": ptr, "out_ptr": ptr, "rows": "i32", "g": "i32", "clip": "fp32", "rcp": "fp32",
                       "div": "fp32"}
                consts = dict(R=r, W1=parts[0], W2=parts[1], W3=parts[2], W4=parts[3], SYM=sym, QMIN=qmin, QMAX=qmax,
                              ON_GPU=True)
                yield f"fakequant g={g} {ptr} sym={sym}", lambda sig=sig, consts=consts, w=w: _compile(
                    qt._fake_quant_kernel, sig, consts, ("x_ptr", "out_ptr"), num_warps=qt._warps(pow2_at_least(w)))


def w4_variants():
    from w4_ptx_count import ALIGNED, SIGNATURE

    from rotaquant.kernels import w4a16_gemv

    for cfg in w4a16_gemv._CONFIGS:
        for ptr in ("*fp16", "*bf16"):
            for k, h, per_channel in ((4096, 64, False), (576, 32, True), (11008, 64, False), (1024, 16, False)):
                for zp8 in (False, True):
                    sig = {**SIGNATURE, "x_ptr": ptr, "y_ptr": ptr}
                    sig = {name: t for name, t in sig.items() if t != "constexpr"}
                    consts = {"K": k, "H": h, "PER_CHANNEL": per_channel, "MODE": 3, "BM": w4a16_gemv.BLOCK_M,
                              "ZP8": zp8, **cfg.kwargs}
                    yield f"w4 tc {cfg.kwargs} {ptr} K={k} zp8={zp8}", lambda sig=sig, consts=consts, cfg=cfg: _compile(
                        w4a16_gemv._w4_mm_kernel, sig, consts, ALIGNED, num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages)


KERNELS = {"hadamard": hadamard_variants, "fakequant": fakequant_variants, "w4": w4_variants}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--registers", action="store_true", help="print the registers per thread of each variant")
    args = p.parse_args()
    failures = 0
    for name in args.kernels:
        t0, count = time.perf_counter(), 0
        for label, build in KERNELS[name]():
            try:
                kernel = build()
                count += 1
                if args.registers:
                    print(f"{label}: {_registers(kernel)} registers", flush=True)
            except Exception as exc:  # report every failing variant, not just the first
                failures += 1
                print(f"FAILED {label}: {str(exc).splitlines()[0][:200]}", flush=True)
        print(f"{name}: {count} variants compiled for sm_90 in {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
