"""Quantized checkpoints on the GPU: kernel throughput, size on disk, load time, agreement,
perplexity, prefill/decode tokens/s, peak memory. Prints tables and writes one JSON.

Three parts (``--parts``, all by default), every ratio against FP16 measured in the same run,
every time a median over repeats:

* ``linears``: the seven linears of one LLaMA-7B layer (q/k/v/o 4096x4096, gate/up 11008x4096,
  down 4096x11008) as QuantLinears from random weights, captured in one CUDA graph (so launch
  overhead is out) and replayed at 1, 16 and 2048 rows: what the kernels deliver. The targets
  read here: W4A16 decode at batch 1 >= 2.5x FP16, W8A8 int8 prefill at 2048 >= 1.4x FP16.
* ``model7b``: a random model of LLaMA-7B's shape with ``--layers`` layers (HF eager, sdpa): each
  setting RTN-quantized, exported (``rotaquant.export``), reloaded (``rotaquant.load_model``,
  ``auto`` kernels), compared with the fake-quantized logits, timed (prefill of ``--prefill``
  tokens at batch 1, decode at batch 1 and 16 with a KV cache), sized on disk, peak memory; the
  GPU-busy fraction of one decode step (profiler) says whether Python/launches limit it.
* ``smollm2``: the real SmolLM2-135M (``--model``) with the same measurements plus WikiText-2
  perplexity of the fake-quantized model and of its reloaded export (must agree). Without a
  model file: a random model of its shape, no perplexity.

Settings: FP16; W4A16 g128 (SmolLM2: g64, 576 = 4.5 x 128) on torch's int4 kernel and on the
Triton kernel (``w4triton``); W8A8 int8 (``torch._int_mm``); FP8 W8A8 (``torch._scaled_mm``);
W4A4KV4 with R1-R4 (int4 codes through the int8 kernel: H100 has no int4 tensor cores).

The full table, on the GPU machine (estimated 4-5 minutes on an H100, not yet run; the model
and data as in DEVICE.md, run from a committed snapshot because the working tree is shared):
here ``mkdir -p .carry/snapD && git archive HEAD | tar -x -C .carry/snapD`` (plus DEVICE.md's
``device-prep`` for ``.carry/a``/``.carry/b``); call 1 carries ``.carry/a`` and runs
``mkdir -p /root/rq/data && cp .carry/a/model.part0 /root/rq/ && cp -r .carry/a/data/. /root/rq/data/``;
call 2, right after, carries ``.carry/b``, ``.carry/export/whl`` and ``.carry/snapD``::

    cat /root/rq/model.part0 .carry/b/model.part1 > /root/rq/smollm2.gguf && cp -r .carry/b/data/. /root/rq/data/ \
    && python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/b/whl/*.whl \
       .carry/export/whl/compressed_tensors*.whl .carry/export/whl/loguru*.whl .carry/export/whl/psutil*.whl \
    && cd .carry/snapD && export PYTHONPATH=/tmp/site:$PWD/src ROTAQUANT_DATA_DIR=/root/rq/data \
       ROTAQUANT_CACHE_DIR=/root/rq/cache RQ_COMMIT=<the snapshot's commit> \
    && python3 -m pytest tests/quant/test_qlinear.py -m gpu -q -p no:cacheprovider; \
    python3 benchmarks/export_bench.py --model /root/rq/smollm2.gguf --json $OUT/export_bench.json

Kernels only (no model transfer: one call carrying ``.carry/export/whl`` and ``.carry/snapD``,
about 2 minutes)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/export/whl/*.whl \
    && cd .carry/snapD && PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/export_bench.py \
       --parts linears,model7b --json $OUT/export_bench_7b.json

Quick CPU check of the plumbing (tiny sizes, no CUDA graphs)::

    python benchmarks/export_bench.py --device cpu --tiny --json /tmp/eb.json

ExecuTorch (stretch): ``benchmarks/results/executorch.md``: the executorch 1.5.1 wheel declares no
torch pin and runs with torch 2.13 (a rotated model through XNNPACK: ``executorch_check.py``);
rotaquant's own codes are not handed to it yet.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_common import git_commit, median_seconds
from torch import nn

import rotaquant
from rotaquant.quant.qlinear import QuantLinear
from rotaquant.quant.quantizer import QuantSpec, quant_params, quantize_to_int, to_groups

FP8 = {"w_bits": 8, "a_bits": 8, "w_type": "float", "a_type": "float"}
SETTINGS = {  # name -> (PTQ recipe keys, kernel); RTN, preset none
    "w4a16_g128": ({"w_bits": 4, "w_groupsize": 128, "rotate": False}, "int4mm"),
    "w4a16_g128_triton": ({"w_bits": 4, "w_groupsize": 128, "rotate": False}, "w4triton"),
    "w4a16_g64": ({"w_bits": 4, "w_groupsize": 64, "rotate": False}, "int4mm"),
    "w4a16_g64_triton": ({"w_bits": 4, "w_groupsize": 64, "rotate": False}, "w4triton"),
    "w8a8_int8": ({"w_bits": 8, "a_bits": 8, "rotate": False}, "int8mm"),
    "w8a8_fp8": ({**FP8, "rotate": False}, "fp8mm"),
    "w4a4kv4_r1r4": ({"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4, "rotate": True}, "auto"),
}
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                    head_dim=64, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4,
                 vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False),
}
# one layer's linears: (out, in) x count
LAYER_7B = [((4096, 4096), 4), ((11008, 4096), 2), ((4096, 11008), 1)]
LAYER_TINY = [((256, 256), 4), ((512, 256), 2), ((256, 512), 1)]
LINEAR_SETTINGS = {  # name -> (weight spec, activation spec, kernel)
    "w4a16_g128_int4mm": (QuantSpec(bits=4, group_size=128), None, "int4mm"),
    "w4a16_g128_triton": (QuantSpec(bits=4, group_size=128), None, "w4triton"),
    # the same with the other modes of the decode kernel (w4a16_gemv.DECODE_MODE "dot", "fma", "fast"; the
    # default is "tc")
    "w4a16_g128_triton_dot": (QuantSpec(bits=4, group_size=128), None, "w4triton"),
    "w4a16_g128_triton_fma": (QuantSpec(bits=4, group_size=128), None, "w4triton"),
    "w4a16_g128_triton_fast": (QuantSpec(bits=4, group_size=128), None, "w4triton"),
    "w8a8_int8mm": (QuantSpec(bits=8), QuantSpec(bits=8), "int8mm"),
    # the same layers with torch._int_mm + the epilogue kernel instead of the default fused Triton
    # GEMM + epilogue (int8_linear.INT8_GEMM)
    "w8a8_int8_cublas": (QuantSpec(bits=8), QuantSpec(bits=8), "int8mm"),
    "w8a8_fp8mm": (QuantSpec(bits=8, type="float"), QuantSpec(bits=8, type="float"), "fp8mm"),
    "w4a4_int8mm": (QuantSpec(bits=4), QuantSpec(bits=4), "int8mm"),
}
GEMM_ONLY = {"gemm_int8_only": "int8", "gemm_fp8_only": "fp8"}  # the bare GEMMs, see GemmOnly


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def fmt_row(row: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


# -- part 1: one 7B layer's linears in a CUDA graph --------------------------------------------
def quant_linear(w: torch.Tensor, spec: QuantSpec, act: QuantSpec | None) -> QuantLinear:
    scale, zero = quant_params(w, spec)
    codes = quantize_to_int(to_groups(w, spec), scale, zero, spec).reshape(w.shape)
    return QuantLinear(codes, scale[..., 0], zero[..., 0], spec, act_spec=act)


def _kernel_setting(module: str, attr: str, choice: str | None) -> str | None:
    """Set the switch ``attr`` of ``rotaquant.kernels.<module>`` (e.g. ``int8_linear.INT8_GEMM``,
    ``w4a16_gemv.DECODE_MODE``; None: leave it); returns the previous value (None where the module
    cannot be imported: no Triton)."""
    try:
        mod = importlib.import_module(f"rotaquant.kernels.{module}")
    except ImportError:
        return None
    previous = getattr(mod, attr)
    if choice is not None:
        setattr(mod, attr, choice)
    return previous


class GemmOnly(nn.Module):
    """The bare low-precision GEMM of a quantized linear, without its activation quantizer or
    epilogue (``torch._int_mm`` on int8 codes, or ``torch._scaled_mm`` on FP8 ones, with inputs
    quantized once beforehand): the floor that the int8mm/fp8mm settings' overhead is read from."""

    def __init__(self, w: torch.Tensor, kind: str):
        super().__init__()
        self.spec = QuantSpec(bits=8, type="int" if kind == "int8" else "float")
        self.w, sw = self._quantize(w)
        self.sw = sw.reshape(1, -1)
        self.inputs: dict[tuple, tuple] = {}

    def _quantize(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row codes (int8, or float8_e4m3fn) and float32 scales ``[rows, 1]`` by the project's quantizer."""
        scale, zero = quant_params(t, self.spec)
        codes = quantize_to_int(to_groups(t, self.spec), scale, zero, self.spec).reshape(t.shape)
        return (codes.to(torch.int8) if self.spec.type == "int" else codes), scale.reshape(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self.inputs:  # quantized once, outside the timed graph's warm-up
            xq, sx = self._quantize(x)
            if self.spec.type == "int":  # torch._int_mm on CUDA needs more than 16 rows
                xq = torch.nn.functional.pad(xq, (0, 0, 0, max(0, 32 - xq.shape[0])))
            self.inputs[key] = (xq, sx)
        xq, sx = self.inputs[key]
        if self.spec.type == "int":
            return torch._int_mm(xq, self.w.t())
        return torch._scaled_mm(xq, self.w.t(), scale_a=sx, scale_b=self.sw, out_dtype=torch.bfloat16)


@torch.inference_mode()
def run_linears(args, device, dtype) -> list[dict]:
    layout = LAYER_TINY if args.tiny else LAYER_7B
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = [torch.randn(o, i, generator=gen).mul_(0.02).to(device) for (o, i), n in layout for _ in range(n)]
    rows_list = (1, 16, 2048)
    results, base = [], {}
    for name in ("fp16", *args.linear_settings.split(",")):
        row = {"setting": name}
        gemm = _kernel_setting("int8_linear", "INT8_GEMM", "cublas" if name.endswith("_int8_cublas") else None)
        w4mode = _kernel_setting("w4a16_gemv", "DECODE_MODE",
                                 name.rsplit("_", 1)[1] if name.endswith(("_dot", "_fma", "_fast")) else None)
        try:
            if name == "fp16":
                mods = [nn.Linear(w.shape[1], w.shape[0], bias=False, device=device, dtype=dtype) for w in weights]
                for m, w in zip(mods, weights, strict=True):
                    m.weight.copy_(w)
                row["kernel"] = "cuBLAS" if device.type == "cuda" else "dense"
                nbytes = sum(w.numel() * 2 for w in weights)
            elif name in GEMM_ONLY:
                if name == "gemm_fp8_only" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
                    raise RuntimeError("torch._scaled_mm with row-wise scales needs CUDA sm89+")
                mods = [GemmOnly(w, GEMM_ONLY[name]) for w in weights]
                row["kernel"] = "torch._int_mm alone" if GEMM_ONLY[name] == "int8" else "torch._scaled_mm alone"
                nbytes = sum(w.numel() for w in weights)
            else:
                spec, act, kernel = LINEAR_SETTINGS[name]
                mods = [quant_linear(w.float(), spec, act).to(device) for w in weights]
                row["kernel"] = mods[0].set_kernel(kernel)
                for m in mods[1:]:
                    m.set_kernel(kernel)
                nbytes = sum(b.numel() * b.element_size() for m in mods for b in m.buffers())
            row["weight_mb"] = nbytes / 2**20
            for rows in rows_list:
                xs = [torch.randn(rows, w.shape[1], device=device, dtype=dtype) for w in weights]

                def step(mods=mods, xs=xs):
                    for m, x in zip(mods, xs, strict=True):
                        m(x)

                if name not in ("fp16", *GEMM_ONLY):  # agreement with the reference path (dequantize, then matmul)
                    got = [m(x) for m, x in zip(mods, xs, strict=True)]
                    kernel = mods[0].kernel
                    for m in mods:
                        m.set_kernel("reference")
                    ref = [m(x) for m, x in zip(mods, xs, strict=True)]
                    for m in mods:
                        m.set_kernel(kernel)
                    rel = max(((g.float() - r.float()).abs().max() / r.float().abs().max()).item()
                              for g, r in zip(got, ref, strict=True))
                    row[f"max_rel_vs_ref_m{rows}"] = rel
                    del got, ref
                fn = step
                if device.type == "cuda":
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        for _ in range(3):  # warm-up: Triton autotuning, cuBLAS workspaces
                            step()
                    torch.cuda.current_stream().wait_stream(side)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        step()
                    fn = graph.replay
                else:
                    step()
                iters = 50 if rows <= 16 else 5
                t = median_seconds(fn, device, 1 if args.tiny else iters, 3 if args.tiny else 7)
                row[f"us_m{rows}"] = t * 1e6
                row[f"tok_s_m{rows}"] = rows / t
                if rows == 1:
                    row["gb_s_m1"] = nbytes / t / 1e9
                if name == "fp16":
                    base[rows] = t
                else:
                    row[f"speedup_m{rows}_vs_fp16"] = base[rows] / t
                del xs, fn
        except Exception as exc:  # one failing setting must not lose the others' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        _kernel_setting("int8_linear", "INT8_GEMM", gemm)
        _kernel_setting("w4a16_gemv", "DECODE_MODE", w4mode)
        results.append(row)
        print("linears", fmt_row(row), flush=True)
    return results


# -- parts 2 and 3: whole models ---------------------------------------------------------------
def random_model(shape: str, layers: int, dtype, device, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=layers, rms_norm_eps=1e-5, **SHAPES[shape])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def _decode(model, nxt, past, steps):
    for _ in range(steps):
        res = model(nxt, past_key_values=past, use_cache=True)
        past, nxt = res.past_key_values, res.logits[:, -1:].argmax(-1)
    return nxt, past


@torch.inference_mode()
def throughput(model, vocab: int, device, prefill: int, decode_steps: int, reps: int) -> dict:
    out = {}
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (1, prefill), generator=gen).to(device)
    model(ids, use_cache=False)  # warm-up (kernels, autotuning, allocator)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        model(ids, use_cache=False)
        sync(device)
        times.append(time.perf_counter() - t)
    out["prefill_tok_s"] = prefill / statistics.median(times)
    for batch in (1, 16):
        ctx = torch.randint(0, vocab, (batch, 128), generator=gen).to(device)
        res = model(ctx, use_cache=True)
        nxt, past = _decode(model, res.logits[:, -1:].argmax(-1), res.past_key_values, 2)  # warm-up
        times = []
        for _ in range(reps):
            sync(device)
            t = time.perf_counter()
            nxt, past = _decode(model, nxt, past, decode_steps)
            sync(device)
            times.append((time.perf_counter() - t) / decode_steps)
        out[f"decode_b{batch}_tok_s"] = batch / statistics.median(times)
        if batch == 1 and device.type == "cuda":
            out["decode_b1_gpu_busy"] = gpu_busy_fraction(model, nxt, past)
    return out


def gpu_busy_fraction(model, nxt, past, steps: int = 4) -> float | None:
    """Kernel time / wall time of a few decode steps (profiler): near 1 means the GPU limits the
    step, well below 1 that Python and kernel launches do."""
    from torch.profiler import ProfilerActivity, profile

    try:
        sync(nxt.device)
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _decode(model, nxt, past, steps)
            sync(nxt.device)
        wall = time.perf_counter() - t
        busy = sum(e.device_time_total for e in prof.key_averages()) / 1e6  # microseconds -> s
        return min(busy / wall, 1.0)
    except Exception:  # the profiler is diagnostics; its absence must not fail a row
        return None


def _agreement(row, got, ref):
    row["max_rel_diff"] = ((got - ref).abs().max() / ref.abs().max()).item()
    row["argmax_agree"] = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()


def _ppl(model, tok, args):
    from rotaquant.eval.perplexity import perplexity

    return perplexity(model, tok, "wikitext2", "test", seqlen=args.seqlen, batch_size=args.ppl_batch,
                      max_windows=args.max_windows, progress=False).ppl


def run_models(args, device, dtype, part: str) -> list[dict]:
    """One model (``part`` 7b or smollm2): FP16 and each setting, as the module docstring says."""
    from transformers import AutoModelForCausalLM

    real = part == "smollm2" and args.model
    if real:
        base, tok = rotaquant.load_model(args.model, dtype=dtype, device=device)
    else:
        shape = "tiny" if args.tiny else part
        base, tok = random_model(shape, args.layers if part == "7b" else 30, dtype, device), None
    base.eval()
    vocab = base.config.vocab_size
    probe = torch.randint(0, vocab, (1, 256), generator=torch.Generator().manual_seed(1)).to(device)
    work = Path(args.workdir) / part
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reps = 2 if args.tiny else args.reps
    prefill = 64 if args.tiny else args.prefill
    steps = 4 if args.tiny else args.decode_steps
    rows = []
    t = time.perf_counter()
    base.save_pretrained(work / "fp")
    fp_export_s, fp_disk_mb = time.perf_counter() - t, folder_bytes(work / "fp") / 2**20
    # The FP16 baseline is loaded the way rotaquant.load_model loads a folder (sdpa, then .to(device)),
    # like the quantized models below. The H200 run of 7aba7f1 loaded it with from_pretrained(...,
    # device_map=device) instead and decoded 10x slower than the quantized models at 1 % GPU busy;
    # the second row keeps that loader in view (CUDA only). The H200 run of c8a9977 reversed it:
    # the first row (now rotaquant's loader) decoded at 19.2 tok/s, the second at 228.8 (7B-shaped,
    # batch 1; smollm2 13.1 vs 40.6), so it is the first measurement of the process that is slow,
    # whatever the loader: a throwaway measurement of the in-memory model comes first now.
    throughput(base, vocab, device, prefill, steps, 1)
    loaders = [("fp16", dict(attn_implementation="sdpa"))]
    if device.type == "cuda":
        loaders.append(("fp16 from_pretrained(device_map)", dict(device_map=device)))
    for label, kwargs in loaders:
        row = {"model": part, "setting": f"{label} ({args.dtype})", "kernels": "dense",
               "export_s": fp_export_s, "disk_mb": fp_disk_mb}
        peak_reset(device)
        t = time.perf_counter()
        fp = AutoModelForCausalLM.from_pretrained(work / "fp", dtype=dtype, **kwargs).to(device).eval()
        sync(device)
        row["load_s"] = time.perf_counter() - t
        if real and not rows:
            row["ppl"] = _ppl(fp, tok, args)
        row.update(throughput(fp, vocab, device, prefill, steps, reps), peak_gib=peak(device))
        rows.append(row)
        print(part, fmt_row(row), flush=True)
        del fp
    shutil.rmtree(work / "fp")
    names = args.settings.split(",") if part == "7b" else args.smollm2_settings.split(",")
    for name in names:
        recipe, kernel = SETTINGS[name]
        kernel = kernel if device.type == "cuda" else "auto"  # w4triton, fp8mm: CUDA only
        row = {"model": part, "setting": name}
        try:
            model = copy.deepcopy(base)
            rotaquant.quantize(model, {"preset": "none", **recipe}, device=device, progress=False)
            with torch.inference_mode():
                ref = model(probe).logits.float()
                # how far the fake-quantized model itself moves under input noise of one unit in
                # the last place of its dtype (smaller noise rounds away in fp16: the H200 run
                # read 0), as activation codes on rounding ties flip: the floor for any kernel's
                # agreement
                emb = model.get_input_embeddings()(probe)
                eps = torch.finfo(emb.dtype).eps
                noisy = model(inputs_embeds=emb * (1 + eps * torch.randn_like(emb))).logits.float()
                row["fq_noise_floor_rel"] = ((noisy - ref).abs().max() / ref.abs().max()).item()
                del noisy, emb
            if real:
                row["ppl_fake_quant"] = _ppl(model, tok, args)
            t = time.perf_counter()
            rotaquant.export(model, tok, work / name, dtype=dtype)
            row.update(export_s=time.perf_counter() - t, disk_mb=folder_bytes(work / name) / 2**20)
            del model
            peak_reset(device)
            t = time.perf_counter()
            q, qtok = rotaquant.load_model(work / name, dtype=dtype, device=device, kernel=kernel)
            sync(device)
            row["load_s"] = time.perf_counter() - t
            kinds = {}
            for m in q.modules():
                if isinstance(m, QuantLinear):
                    kinds[m.kernel] = kinds.get(m.kernel, 0) + 1
            row["kernels"] = ",".join(f"{k}x{v}" for k, v in sorted(kinds.items()))
            with torch.inference_mode():
                _agreement(row, q(probe).logits.float(), ref)
            if real:
                row["ppl_reloaded"] = _ppl(q, qtok, args)
            row.update(throughput(q, vocab, device, prefill, steps, reps), peak_gib=peak(device))
            del q, ref
        except Exception as exc:  # one failing setting must not lose the others' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        shutil.rmtree(work / name, ignore_errors=True)
        rows.append(row)
        print(part, fmt_row(row), flush=True)
    fp_row = rows[0]
    for row in rows[len(loaders):]:
        for key in ("disk_mb", "prefill_tok_s", "decode_b1_tok_s", "decode_b16_tok_s", "peak_gib"):
            if row.get(key) and fp_row.get(key):
                row[f"{key}_vs_fp16"] = row[key] / fp_row[key]
    return rows


# -- driver ------------------------------------------------------------------------------------
def environment(args) -> dict:
    import transformers

    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return None

    dev = torch.device(args.device)
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": git_commit(),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "capability": list(torch.cuda.get_device_capability(dev)) if dev.type == "cuda" else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": version("triton"),
            "transformers": transformers.__version__, "compressed_tensors": version("compressed_tensors"),
            "python": platform.python_version(), "host": platform.node()}


def write(path, result):
    if path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--parts", default="linears,model7b,smollm2")
    p.add_argument("--layers", type=int, default=4, help="layers of the 7B-shaped model")
    p.add_argument("--linear-settings", default=",".join([*LINEAR_SETTINGS, *GEMM_ONLY]))
    p.add_argument("--settings", default="w4a16_g128,w4a16_g128_triton,w8a8_int8,w8a8_fp8,w4a4kv4_r1r4",
                   help="settings of the 7B-shaped model")
    p.add_argument("--smollm2-settings", default="w4a16_g64,w4a16_g64_triton,w8a8_int8,w8a8_fp8,w4a4kv4_r1r4")
    p.add_argument("--model", default=None, help="SmolLM2-135M (a .gguf path or alias); random weights if absent")
    p.add_argument("--prefill", type=int, default=2048)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--ppl-batch", type=int, default=8)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--workdir", default="/tmp/rotaquant-export-bench")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU check of the script)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device, dtype = torch.device(args.device), rotaquant.models.loading.resolve_dtype(args.dtype)
    t0 = time.perf_counter()
    result = {"environment": environment(args), "args": vars(args)}
    parts = args.parts.split(",")
    if "linears" in parts:
        result["linears"] = run_linears(args, device, dtype)
        write(args.json, result)
    if "model7b" in parts:
        result["model7b"] = run_models(args, device, dtype, "7b")
        write(args.json, result)
    if "smollm2" in parts:
        result["smollm2"] = run_models(args, device, dtype, "smollm2")
    result["seconds"] = time.perf_counter() - t0
    write(args.json, result)
    print(f"done in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
