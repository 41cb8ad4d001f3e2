"""Seeds 0/1/2 of the W4A4KV4 default preset (random Hadamard vs learned) and the llm-compressor
parity rows on matched settings; mean and spread per row.

    python benchmarks/seed_sweep.py --json benchmarks/results/seed_sweep_h100.json \\
        [--rows ROW ...] [--seeds 0 1 2] [--append]

Rows (``--rows``, default all):

* ``default-random``: W4A4KV4, the default preset (``auto``: spinquant flags + GPTQv2), random
  Hadamard R1-R4 from the seed.
* ``default-learned``: R1/R2 learned first with W16A4KV4 and the deployed recipe (asymmetric
  activations and KV, o_proj input per head; ``--steps`` Cayley SGD steps, init and data from
  the seed), then the same PTQ with them.
  Since e578aed the default preset clips activations at 0.9 and K/V at 0.95 (QuaRot's), and
  learning uses the same clipping.
* ``noclip-random`` / ``noclip-learned``: the same without clipping (learning too): the
  default before e578aed.
* ``kl-learned``: as ``default-learned``, learning with the KL-top loss to the FP model's
  predictions (``loss: kl_top``, learn/distill.py) instead of the next token's cross-entropy.
* ``llmc-w4a16`` / ``llmc-w4a16-restricted``: W4A16 GPTQ, no rotation, act order, per channel,
  on the full (compressed-tensors') / restricted grid: llm-compressor's GPTQModifier defaults
  (see results/llmcompressor_parity.md). The seed only draws the calibration windows.
* ``llmc-rtn-restricted`` / ``llmc-rtn-full``: W4A4KV4 RTN, random Hadamard R1-R4, everything
  symmetric, on each grid.

Each (row, seed) loads its own fp16 copy (learning: float32) and evaluates the full WikiText-2
test at seqlen 2048 (GPTQ: 128 x 2048 validation windows). The JSON is rewritten after every
run; with ``--append`` the runs of an earlier call in the same file are kept (a rerun of a
(row, seed) replaces it), so the sweep can be split over several calls. Timings on one H100:
GPTQ PTQ ~55 s a run, RTN ~15 s, learning 100 steps ~95 s (estimates from earlier runs). A
split into calls of at most ~6 minutes (18 runs in all):

    --rows default-random llmc-rtn-restricted llmc-rtn-full            # ~4.5 min
    --rows llmc-w4a16 llmc-w4a16-restricted --append                   # ~5.5 min
    --rows default-learned --seeds 0 1 --append                        # ~5.5 min
    --rows default-learned --seeds 2 --append                          # ~3 min

CPU smoke test: ``--model smollm2-135m --max-windows 2 --seqlen 128 --nsamples 4 --steps 2
--learn-nsamples 4``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit  # noqa: E402

from rotaquant.io import atomic_write_json  # noqa: E402
from rotaquant.jobs.demo import format_table  # noqa: E402
from rotaquant.jobs.learn import optimize  # noqa: E402
from rotaquant.jobs.ptq import run_ptq  # noqa: E402
from rotaquant.learn.config import LEARN_AUTO  # noqa: E402
from rotaquant.models.loading import load_model  # noqa: E402
from rotaquant.quant.recipe import CLIP  # noqa: E402

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}
# what the default preset deploys, as learning settings (W16: weights stay FP while learning): the
# quantizer keys of optimize's preset auto, which also sets the learning rate (AUTO_LR, since stop
# 20; --learn-lr overrides it), so the learned rows follow optimize's defaults
DEPLOYED_LEARNING = {"w_bits": 16, "a_bits": 4, "k_bits": 4, "v_bits": 4, **LEARN_AUTO}
LLMC_W4A16 = {"w_bits": 4, "preset": "none", "w_method": "gptq", "gptq_act_order": True, "rotate": False}
LLMC_RTN = {**W4A4KV4, "preset": "none", "w_method": "rtn", "rotation_mode": "hadamard"}
NOCLIP = dict.fromkeys(CLIP, 1.0)  # the default before e578aed
ROWS = {
    "default-random": {**W4A4KV4, "preset": "auto"},
    "default-learned": {**W4A4KV4, "preset": "auto"},
    "noclip-random": {**W4A4KV4, "preset": "auto", **NOCLIP},
    "noclip-learned": {**W4A4KV4, "preset": "auto", **NOCLIP},
    "kl-learned": {**W4A4KV4, "preset": "auto"},
    "llmc-w4a16": {**LLMC_W4A16, "sym_grid": "full"},
    "llmc-w4a16-restricted": {**LLMC_W4A16, "sym_grid": "restricted"},
    "llmc-rtn-restricted": {**LLMC_RTN, "sym_grid": "restricted"},
    "llmc-rtn-full": {**LLMC_RTN, "sym_grid": "full"},
}
# learned rows -> (learning settings, rotation file tag)
LEARNED = {"default-learned": (DEPLOYED_LEARNING, "_clip"),
           "noclip-learned": ({**DEPLOYED_LEARNING, **NOCLIP}, ""),
           "kl-learned": ({**DEPLOYED_LEARNING, "loss": "kl_top"}, "_kl")}


def environment() -> dict:
    import transformers

    cuda = torch.cuda.is_available()
    return {"machine": torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine()),
            "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "transformers": transformers.__version__,
            "commit": git_commit()}


def summarize(runs: list[dict]) -> list[dict]:
    """Mean, sample standard deviation, min and max of the perplexity per row over its seeds."""
    out = []
    for key in ROWS:
        ppl = [r["ppl"] for r in runs if r["row"] == key]
        if not ppl:
            continue
        out.append({"row": key, "seeds": ",".join(str(r["seed"]) for r in runs if r["row"] == key),
                    "mean": statistics.fmean(ppl), "std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
                    "min": min(ppl), "max": max(ppl)})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="learning steps (default: optimize's, 200 since stop 21)")
    ap.add_argument("--learn-nsamples", type=int, default=800, help="learning windows (default: 800)")
    ap.add_argument("--learn-lr", type=float, default=None, help="learning rate of the Cayley SGD (default: optimize's)")
    ap.add_argument("--nsamples", type=int, default=128, help="GPTQ calibration windows (default: 128)")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None, help="evaluate on the first N test windows only")
    ap.add_argument("--out-dir", default=".", help="where learned rotation files go")
    ap.add_argument("--json", default=None)
    ap.add_argument("--append", action="store_true", help="keep the runs already in --json")
    ap.add_argument("--reuse-learned", action="store_true",
                    help="learned rows: use the seed's rotation file in --out-dir when it exists instead of learning")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    call = {"command": shlex.join([sys.executable, *sys.argv] if argv is None else ["seed_sweep.py", *argv]),
            **environment(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out: dict = {"calls": [], "runs": [], "summary": []}
    if args.append and args.json and Path(args.json).is_file():
        out = json.loads(Path(args.json).read_text())
    out["calls"].append(call)
    print(f"model {args.model}, {call['machine']}, torch {call['torch']}, commit {call['commit']}", flush=True)

    def record(run: dict) -> None:
        out["runs"] = [r for r in out["runs"] if (r["row"], r["seed"]) != (run["row"], run["seed"])] + [run]
        out["summary"] = summarize(out["runs"])
        if args.json:
            atomic_write_json(args.json, out)

    common = dict(model=args.model, dtype="fp16", device=device, nsamples=args.nsamples, batch_size=8,
                  max_windows=args.max_windows, seqlen=args.seqlen, cal_seqlen=args.seqlen)
    for key in args.rows:
        for seed in args.seeds:
            t0 = time.perf_counter()
            overrides, learned = dict(ROWS[key]), None
            settings, tag = LEARNED.get(key, (None, ""))
            path = Path(args.out_dir) / f"learned_w16a4kv4_deployed{tag}_seed{seed}.safetensors"
            if settings is not None and args.reuse_learned and path.is_file():
                learned = {"path": str(path), "reused": True}
                overrides["rotation_path"] = str(path)
                print(f"  {key} seed {seed}: reusing {path}", flush=True)
            elif settings is not None:
                model, tok = load_model(args.model, dtype="float32", device=device)
                res = optimize(None, output=str(path), overwrite=True, progress=False, preloaded=(model, tok),
                               model=args.model, nsamples=args.learn_nsamples,
                               **({"iterations": args.steps} if args.steps is not None else {}),
                               seqlen=args.seqlen, seed=seed, checkpoint_every=10_000, **settings,
                               **({"lr": args.learn_lr} if args.learn_lr is not None else {}))
                del model
                if device == "cuda":
                    torch.cuda.empty_cache()
                learned = {"path": str(path), "steps": res["steps_run"], "first_loss": res["first_loss"],
                           "last_loss": res["last_loss"],
                           "seconds_per_step": res["seconds_per_step"], "seconds": time.perf_counter() - t0}
                print(f"  {key} seed {seed}: learned, loss {res['first_loss']:.4f} -> {res['last_loss']:.4f} "
                      f"({learned['seconds']:.0f} s)", flush=True)
                overrides["rotation_path"] = str(path)
            model, tok = load_model(args.model, dtype="fp16", device=device)
            res = run_ptq(None, progress=False, preloaded=(model, tok), seed=seed, **common, **overrides)
            del model
            run = {"row": key, "seed": seed, "label": res["label"], "ppl": res["ppl"],
                   "quantize_s": res["seconds"]["quantize"], "eval_s": res["seconds"]["eval"],
                   "wall_s": time.perf_counter() - t0, "windows": res["eval"]["windows"], "learned": learned,
                   "recipe": res["recipe"]}
            record(run)
            print(f"  {key} seed {seed}: ppl {run['ppl']:.3f} (quantize {run['quantize_s']:.1f} s, "
                  f"wall {run['wall_s']:.0f} s)", flush=True)
    print(format_table(out["runs"], [("row", "row", ""), ("seed", "seed", "d"), ("ppl", "PPL", ".3f"),
                                     ("quantize_s", "quant s", ".1f"), ("wall_s", "wall s", ".0f")]))
    print(format_table(out["summary"], [("row", "row", ""), ("seeds", "seeds", ""), ("mean", "mean PPL", ".3f"),
                                        ("std", "std", ".3f"), ("min", "min", ".3f"), ("max", "max", ".3f")]))
    return out


if __name__ == "__main__":
    main()
