"""Presets side by side: QuaRot and SpinQuant recipes, random Hadamard vs learned, RTN vs GPTQ.

    python benchmarks/preset_table.py --model smollm2-135m --json out.json [--rows ...] [--learn]

Every row loads its own fp16 copy of the model and runs ``run_ptq`` on the full WikiText-2 test
(seqlen 2048, GPTQ on 128 x 2048 calibration windows of the validation split). ``--learn``
first learns R1/R2 with W16A4KV4 (asymmetric activations and KV, as the spinquant preset
deploys them; float32, 100 Cayley SGD steps) into ``--out-dir`` and adds the learned rows.
Rows are printed and the JSON rewritten after each, so a cut-off run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit  # noqa: E402

from rotaquant.jobs.demo import format_table  # noqa: E402
from rotaquant.jobs.ptq import run_ptq  # noqa: E402
from rotaquant.models.loading import load_model  # noqa: E402

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}
ROWS = {
    "fp16": {"rotate": False, "preset": "none"},
    "old-default-gptq": {**W4A4KV4, "preset": "none", "w_method": "gptq"},  # the 70.70 row
    "quarot-rtn": {**W4A4KV4, "preset": "quarot", "w_method": "rtn"},
    "quarot-gptq": {**W4A4KV4, "preset": "quarot"},
    "spinquant-rtn": {**W4A4KV4, "preset": "spinquant", "w_method": "rtn"},
    "spinquant-gptq": {**W4A4KV4, "preset": "spinquant"},
    "spinquant-gptq-norot": {**W4A4KV4, "preset": "spinquant", "rotate": False},
    "spinquant-gptqv2": {**W4A4KV4, "preset": "spinquant", "gptq_v2": True},
}
LEARNED = {
    "quarot-gptq-learned": {**W4A4KV4, "preset": "quarot"},
    "spinquant-rtn-learned": {**W4A4KV4, "preset": "spinquant", "w_method": "rtn"},
    "spinquant-gptq-learned": {**W4A4KV4, "preset": "spinquant"},
    "spinquant-gptqv2-learned": {**W4A4KV4, "preset": "spinquant", "gptq_v2": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS) + list(LEARNED))
    ap.add_argument("--learn", action="store_true", help="learn a rotation first and add the learned rows")
    ap.add_argument("--rotation-path", default=None, help="use this learned file for the learned rows")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    out: dict = {"meta": {"command": " ".join(sys.argv), "machine": machine, "torch": torch.__version__,
                          "commit": git_commit()}, "rows": []}
    print(f"model {args.model}, {machine}, torch {torch.__version__}", flush=True)

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))

    path = args.rotation_path
    if args.learn:
        from rotaquant.jobs.learn import optimize

        path = str(Path(args.out_dir) / "learned_w16a4kv4_asym.safetensors")
        t = time.perf_counter()
        model, tok = load_model(args.model, dtype="float32", device=device)
        res = optimize(None, output=path, overwrite=True, progress=False, preloaded=(model, tok),
                       iterations=args.iterations, checkpoint_every=10_000, w_bits=16, a_bits=4, k_bits=4,
                       v_bits=4, a_asym=True, k_asym=True, v_asym=True)
        res.pop("matrices", None)
        res["wall_seconds"] = time.perf_counter() - t
        out["learn"] = res
        print(f"learned W16A4KV4 asym: loss {res['first_loss']:.4f} -> {res['last_loss']:.4f}, "
              f"{res['seconds_per_step']:.3f} s/step, {res['wall_seconds']:.0f} s", flush=True)
        del model
        save()
    keys = list(args.rows) + ([k for k in LEARNED if k not in args.rows] if path and args.learn else [])
    for key in keys:
        overrides = {**ROWS.get(key, {}), **LEARNED.get(key, {})}
        if key in LEARNED:
            if not path:
                continue
            overrides["rotation_path"] = path
        for seed in args.seeds if overrides.get("rotate", True) and key not in LEARNED else [0]:
            t = time.perf_counter()
            model, tok = load_model(args.model, dtype="fp16", device=device)
            res = run_ptq(None, progress=False, preloaded=(model, tok), model=args.model, dtype="fp16",
                          device=device, nsamples=args.nsamples, batch_size=8, max_windows=args.max_windows,
                          seed=seed, **overrides)
            row = {"key": key, "seed": seed, "label": res["label"], "ppl": res["ppl"],
                   "quantize_s": res["seconds"]["quantize"], "eval_s": res["seconds"]["eval"],
                   "wall_s": time.perf_counter() - t, "windows": res["eval"]["windows"], "recipe": res["recipe"]}
            out["rows"].append(row)
            print(f"  {key} seed {seed}: ppl {row['ppl']:.3f} (quantize {row['quantize_s']:.1f} s, "
                  f"eval {row['eval_s']:.1f} s)", flush=True)
            del model
            save()
    print(format_table(out["rows"], [("key", "row", ""), ("seed", "seed", "d"), ("ppl", "PPL", ".3f"),
                                     ("quantize_s", "quant s", ".1f"), ("eval_s", "eval s", ".1f")]))
    save()


if __name__ == "__main__":
    main()
