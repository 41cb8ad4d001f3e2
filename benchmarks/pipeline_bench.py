"""Pipeline speed (issue 11): GPTQ stage of ``ptq``, a 7B-shaped layer, fake-quant eval, learning.

On the GPU machine (see ../shared/DEVICE.md for bringing the model and data over)::

    PYTHONPATH=/tmp/site:$PWD/src ROTAQUANT_DATA_DIR=/root/rq/data ROTAQUANT_CACHE_DIR=/root/rq/cache \\
      python3 benchmarks/pipeline_bench.py --model /root/rq/smollm2.gguf --device cuda \\
      --json benchmarks/results/pipeline_h100.json

Small CPU check of the script itself (seconds, meaningless numbers)::

    .venv/bin/python benchmarks/pipeline_bench.py --model smollm2-135m --device cpu --dtype float32 \\
      --max-layers 2 --nsamples 2 --seqlen 64 --layer-hidden 256 --layer-mlp 512 --layer-heads 4 --eval-windows 2 \\
      --eval-seqlen 64 --eval-batch 1 --learn-steps 2 --learn-batch 1 --repeats 1 --zs-limit 4 \\
      --sections gptq layer kernel eval learn zeroshot

Sections (``--sections``):
  gptq    GPTQ stage of ``rotaquant.quantize`` (W4A4KV4, SpinQuant recipe: clip search, per-channel)
          on the model, GPTQ and GPTQv2: ``weight_stats["seconds"]`` (calibration forward passes,
          Hessians, GPTQ), model reloaded per run
  layer   the same stage on one random 7B-shaped Llama decoder layer (hidden 4096, MLP 11008,
          32 heads), ``--nsamples`` windows of ``--seqlen`` random tokens; GPTQ also with the
          Triton clip search on CUDA
  kernel  GPTQ of one stacked q/k/v weight [3*hidden, hidden] (7B shapes): torch column loop vs
          Triton block kernel, and whether they agree bit for bit; the weight clipping search
          alone, torch vs the Triton kernel (``ROTAQUANT_CLIP_KERNEL=1``) and how often they agree
  eval    perplexity wall time of the model in FP16 and with W4A4KV4 fake quantization (RTN
          weights: the overhead is in the activation/KV quantizer stages), and the ratio; the
          W4A4KV4 model once more with the torch quantizers (``ROTAQUANT_QUANT_BACKEND=reference``:
          no Triton fake-quant, no fused Hadamard+quant) and whether its perplexity is identical;
          each as perplexity() runs it (eagerly) and with its full batches replayed as a CUDA graph
          (``cuda_graph=True``), and the time of the text loading + tokenization (done by each
          model's warm-up run; the timed runs reuse the ids, as any later evaluation in a process does)
  learn   rotation learning (W16A4KV4, ``learn_rotations``): seconds per step (the loop's own
          mean over the steps after the first) and peak GPU memory, with the Triton quantizers
          and with the torch ones
  zeroshot  HellaSwag on its first ``--zs-limit`` items, FP16 and W4A4KV4: fixed batches of
          ``--zs-batch`` rows vs batches filled to ``--zs-batch-tokens`` tokens (and W4A4KV4 with
          the torch quantizers); seconds, acc_norm, and the largest |log-likelihood| difference
          from the first run of the same model
Times are medians over ``--repeats`` runs (after a warm-up where a section has one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit  # noqa: E402

from rotaquant import learn_rotations, load_model, quantize  # noqa: E402
from rotaquant.data import load_text  # noqa: E402
from rotaquant.eval.perplexity import perplexity  # noqa: E402
from rotaquant.kernels.fake_quant import BACKEND_ENV  # noqa: E402
from rotaquant.models.architecture import ArchitectureSpec  # noqa: E402
from rotaquant.quant.gptq import GPTQConfig, HessianAccumulator, gptq_quantize_weight  # noqa: E402
from rotaquant.quant.layerwise import quantize_weights_layerwise  # noqa: E402
from rotaquant.quant.quantizer import QuantSpec  # noqa: E402
from rotaquant.quant.rtn import CLIP_KERNEL_ENV, weight_quant_params  # noqa: E402

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _timed(args, fn, runs: int):
    """``(result of the last call, seconds of each of ``runs`` calls of fn())``, the device
    synchronized around each call."""
    times, result = [], None
    for _ in range(runs):
        _sync(args.device)
        t = time.perf_counter()
        result = fn()
        _sync(args.device)
        times.append(time.perf_counter() - t)
    return result, times


def _load(args, dtype: str):
    """The model and tokenizer; with ``--max-layers`` only its first decoder layers (quick checks)."""
    model, tok = load_model(args.model, dtype=dtype, device=args.device)
    if args.max_layers:
        model.model.layers = model.model.layers[:args.max_layers]
        model.config.num_hidden_layers = args.max_layers
    return model, tok


def section_gptq(args) -> list[dict]:
    rows = []
    for v2 in (False, True):
        times = []
        for _ in range(args.repeats):
            model, tok = _load(args, args.dtype)
            state = quantize(model, {**W4A4KV4, "preset": "spinquant", "w_method": "gptq", "gptq_v2": v2,
                                     "nsamples": args.nsamples, "cal_seqlen": args.seqlen},
                             tokenizer=tok, device=args.device, progress=False)
            times.append(state.weight_stats["seconds"])
            del model, state
        rows.append({"section": "gptq", "what": f"ptq GPTQ{'v2' if v2 else ''} stage, {args.nsamples}x{args.seqlen}",
                     "median_s": _median(times), "runs_s": times})
    return rows


def _layer_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1024, hidden_size=args.layer_hidden, intermediate_size=args.layer_mlp,
                      num_attention_heads=args.layer_heads, num_key_value_heads=args.layer_heads,
                      num_hidden_layers=1, max_position_embeddings=max(args.seqlen, 128))
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def section_layer(args) -> list[dict]:
    rows = []
    windows = torch.randint(0, 1024, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))

    def run(v2: bool) -> float:
        model = _layer_model(args)
        stats = quantize_weights_layerwise(model, QuantSpec(4), windows, ArchitectureSpec(), "gptq",
                                           GPTQConfig(v2=v2), clip_search=True, device=args.device, progress=False)
        return stats["seconds"]

    # GPTQ, GPTQ with the Triton clip search (ROTAQUANT_CLIP_KERNEL=1, CUDA only), GPTQv2
    cases = [(False, False), *([(False, True)] if torch.device(args.device).type == "cuda" else []), (True, False)]
    for v2, clip_kernel in cases:
        with _env(CLIP_KERNEL_ENV, "1" if clip_kernel else "0"):
            if args.profile is not None and not v2 and not clip_kernel:  # one profiled run apart from the timed ones
                with _Profile(args, "layer_gptq"):
                    run(False)
            times = [run(v2) for _ in range(args.repeats)]
        rows.append({"section": "layer", "what": f"GPTQ{'v2' if v2 else ''} of one {args.layer_hidden}/"
                     f"{args.layer_mlp} layer, {args.nsamples}x{args.seqlen}"
                     f"{', Triton clip search' if clip_kernel else ''}", "median_s": _median(times), "runs_s": times})
    return rows


def section_kernel(args) -> list[dict]:
    n = args.layer_hidden
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * n, n, generator=g) * torch.linspace(0.2, 3, n)
    acc = HessianAccumulator(n, device=args.device)
    acc.add(x.to(args.device))
    w = torch.randn(3 * n, n, generator=g).to(args.device)
    spec, out, rows = QuantSpec(4), {}, []
    for backend in ("torch", "triton"):
        if backend == "triton" and torch.device(args.device).type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            continue
        out[backend], times = _timed(args, lambda backend=backend: gptq_quantize_weight(
            w, acc.hessian, spec, GPTQConfig(), clip_search=True, backend=backend), args.repeats + 1)  # 1st compiles
        rows.append({"section": "kernel", "what": f"gptq_quantize_weight [{3 * n}, {n}] backend={backend}",
                     "median_s": _median(times[1:]), "runs_s": times[1:]})
    if len(out) == 2:
        rows[-1]["bit_identical"] = bool(torch.equal(out["torch"], out["triton"]))
    # the weight clipping search alone (100 candidate ranges per row): torch vs the Triton kernel
    params = {}
    for kernel in (False, True) if torch.device(args.device).type == "cuda" else (False,):
        with _env(CLIP_KERNEL_ENV, "1" if kernel else "0"):
            params[kernel], times = _timed(args, lambda: weight_quant_params(w, spec, clip_search=True),
                                           args.repeats + 1)
        rows.append({"section": "kernel", "what": f"clip search of [{3 * n}, {n}], {'Triton' if kernel else 'torch'}",
                     "median_s": _median(times[1:]), "runs_s": times[1:]})
    if len(params) == 2:
        rows[-1]["same_choice_fraction"] = float(((params[True][0] == params[False][0])
                                                  & (params[True][1] == params[False][1])).float().mean())
    return rows


def _env(name: str, value: str | None):
    """``name`` set to ``value`` in the environment for a block (None: left as it is)."""
    return mock.patch.dict(os.environ, {} if value is None else {name: value})


def _w4a4kv4(args, dtype: str):
    model, tok = _load(args, dtype)
    quantize(model, {**W4A4KV4, "preset": "spinquant", "w_method": "rtn"}, tokenizer=tok, device=args.device,
             progress=False)
    return model, tok


def section_eval(args) -> list[dict]:
    rows, medians, ppls = [], {}, {}
    # (label, quantized, quantizer backend, CUDA graph), explicit: perplexity()'s default graphs models
    # with rotaquant stages and runs plain ones eagerly (since stop 21)
    runs = (("fp", False, None, False), ("w4a4kv4", True, None, False), ("fp graphed", False, None, True),
            ("w4a4kv4 graphed", True, None, True), ("w4a4kv4 torch quantizers", True, "reference", False))
    for label, quantized, backend, graph in runs:
        model, tok = _w4a4kv4(args, args.eval_dtype) if quantized else _load(args, args.eval_dtype)
        def evaluate(model=model, tok=tok, graph=graph):
            return perplexity(model, tok, seqlen=args.eval_seqlen, batch_size=args.eval_batch,
                              max_windows=args.eval_windows, progress=False, cuda_graph=graph)

        with _env(BACKEND_ENV, backend):
            if args.profile is not None:  # one profiled run, apart from the timed ones
                try:  # graphed: the capture and the replayed kernels (a profiler may refuse a capture)
                    with _Profile(args, f"eval_{label.replace(' ', '_')}"):
                        evaluate()
                except RuntimeError as exc:
                    rows.append({"section": "eval", "what": f"profile of {label} failed",
                                 "error": f"{type(exc).__name__}: {exc}"[:300]})
            res, times = _timed(args, evaluate, args.repeats + 1)  # the first run warms up (kernels, allocator)
        ppl, state = res.ppl, res.extra.get("cuda_graph")
        medians[label], ppls[label] = _median(times[1:]), ppl
        rows.append({"section": "eval", "what": f"perplexity {label} ({args.eval_dtype}), {args.eval_windows or 'all'}"
                     f" windows x {args.eval_seqlen}, batch {args.eval_batch}", "median_s": medians[label],
                     "runs_s": times[1:], "ppl": ppl, "cuda_graph": state})
        if label == "fp":  # what the first evaluation of a text spends besides the model (cached after it)
            tt = []
            for _ in range(3):
                t = time.perf_counter()
                tok(load_text("wikitext2", "test").text, return_tensors="pt")
                tt.append(time.perf_counter() - t)
            rows.append({"section": "eval", "what": "load + tokenize WikiText-2 test (the warm-up run's; timed runs "
                         "reuse the ids)", "median_s": _median(tt), "runs_s": tt})
        del model
    for label in ("w4a4kv4", "w4a4kv4 graphed", "w4a4kv4 torch quantizers"):
        base = "fp graphed" if label.endswith("graphed") else "fp"
        rows.append({"section": "eval", "what": f"{label} / {base} ({args.eval_dtype}) evaluation time",
                     "ratio": medians[label] / medians[base]})
    rows.append({"section": "eval", "what": f"w4a4kv4 graphed / fp ({args.eval_dtype}): each in perplexity()'s "
                 "default mode", "ratio": medians["w4a4kv4 graphed"] / medians["fp"]})
    rows.append({"section": "eval", "what": "PPL identical: eager, graphed, torch quantizers",
                 "identical": ppls["w4a4kv4"] == ppls["w4a4kv4 graphed"] == ppls["w4a4kv4 torch quantizers"],
                 "fp_identical": ppls["fp"] == ppls["fp graphed"]})
    return rows


class _Profile:
    """With ``--profile DIR``: torch.profiler over the block, its op tables (by device time, then by
    host time) written to ``DIR/<name>.txt``; otherwise nothing."""

    def __init__(self, args, name: str):
        self.dir, self.name, self.prof = args.profile, name, None

    def __enter__(self):
        if self.dir is not None:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.prof = profile(activities=acts)
            self.prof.__enter__()

    def __exit__(self, *exc):
        if self.prof is not None:
            self.prof.__exit__(*exc)
            key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            self.dir.mkdir(parents=True, exist_ok=True)
            averages = self.prof.key_averages()
            table = averages.table(sort_by=key, row_limit=40)
            # host time too: a GPU left idle by Python, hooks and launches shows only here
            host = averages.table(sort_by="self_cpu_time_total", row_limit=30)
            (self.dir / f"{self.name}.txt").write_text(f"{table}\n\nby host time:\n{host}")


def section_learn(args) -> list[dict]:
    rows = []
    for label, backend in (("", None), (", torch quantizers", "reference")):
        model, tok = _load(args, "float32")
        with _env(BACKEND_ENV, backend), _Profile(args, f"learn{'_torchq' if backend else ''}"):
            result = learn_rotations(model, tok, a_bits=4, k_bits=4, v_bits=4, iterations=args.learn_steps,
                                     batch_size=args.learn_batch, nsamples=args.learn_batch * args.learn_steps,
                                     seqlen=args.seqlen, device=args.device, progress=False)
        rows.append({"section": "learn", "what": f"W16A4KV4 learning step, {args.learn_batch}x{args.seqlen}{label}",
                     "median_s": result.median_step_seconds, "mean_s_with_first": result.seconds_per_step,
                     "step_s": result.step_seconds, "peak_memory_gib": result.peak_memory_gib,
                     "steps": args.learn_steps, "final_loss": result.losses[-1] if result.losses else None})
        del model
    return rows


def section_zeroshot(args) -> list[dict]:
    from rotaquant.eval.zeroshot import evaluate_tasks

    rows = []
    runs = (("fp", False, None), ("w4a4kv4", True, None), ("w4a4kv4 torch quantizers", True, "reference"))
    for label, quantized, backend in runs:
        model, tok = _w4a4kv4(args, args.eval_dtype) if quantized else _load(args, args.eval_dtype)
        first = None
        for batching in ({"batch_size": args.zs_batch}, {"batch_tokens": args.zs_batch_tokens}):
            with _env(BACKEND_ENV, backend):  # the first run warms up
                res, times = _timed(args, lambda model=model, tok=tok, batching=batching: evaluate_tasks(
                    model, tok, ["hellaswag"], limit=args.zs_limit, keep_samples=True, progress=False, **batching),
                    args.repeats + 1)
            task = res.tasks["hellaswag"]
            lls = [ll for s in task.samples for ll in s["logliks"]]
            first = first or lls
            what = ", ".join(f"{k} {v}" for k, v in batching.items())
            rows.append({"section": "zeroshot", "what": f"hellaswag {args.zs_limit} items {label} ({args.eval_dtype}),"
                         f" {what}", "median_s": _median(times[1:]), "runs_s": times[1:],
                         "acc_norm": task.metrics.get("acc_norm"),
                         "max_abs_loglik_diff_vs_first": max(abs(a - b) for a, b in zip(first, lls, strict=True))})
        del model
    return rows


SECTIONS = {"gptq": section_gptq, "layer": section_layer, "kernel": section_kernel, "eval": section_eval,
            "learn": section_learn, "zeroshot": section_zeroshot}


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["commit"] = git_commit()
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model name or path (e.g. /root/rq/smollm2.gguf)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16", help="model dtype for the GPTQ sections")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-layers", type=int, default=None, help="keep only the first N decoder layers (CPU checks)")
    p.add_argument("--layer-hidden", type=int, default=4096)
    p.add_argument("--layer-mlp", type=int, default=11008)
    p.add_argument("--layer-heads", type=int, default=32)
    p.add_argument("--eval-dtype", default="float16")
    p.add_argument("--eval-windows", type=int, default=None, help="default: the whole WikiText-2 test set")
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--learn-steps", type=int, default=6)
    p.add_argument("--learn-batch", type=int, default=8)
    p.add_argument("--zs-limit", type=int, default=300, help="HellaSwag items of the zeroshot section")
    p.add_argument("--zs-batch", type=int, default=64, help="rows per forward (fixed batches)")
    p.add_argument("--zs-batch-tokens", type=int, default=32768, help="tokens per forward (budgeted batches)")
    p.add_argument("--profile", type=Path, default=None,
                   help="folder for torch.profiler op tables of the eval and learn sections")
    p.add_argument("--no-cudnn-sdpa", action="store_true",
                   help="disable SDPA's cuDNN backend (flash / memory-efficient instead): the profiles show ~0.3-1.6 "
                   "ms of host time per cuDNN attention call, which a host-bound loop pays")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.no_cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)

    results = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": []}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=args.json.parent, delete=False, suffix=".tmp") as f:
                json.dump(results, f, indent=2)
            os.replace(f.name, args.json)

    for name in args.sections:
        for row in SECTIONS[name](args):
            results["rows"].append(row)
            value = row.get("median_s", row.get("ratio"))
            extra = {k: v for k, v in row.items() if k not in ("section", "what", "median_s", "runs_s", "ratio")}
            shown = f"{value:10.4f}" if isinstance(value, int | float) else " " * 10
            print(f"{row['section']:7s} {row['what']:70s} {shown} {extra or ''}", flush=True)
            save()
    save()


if __name__ == "__main__":
    main()
