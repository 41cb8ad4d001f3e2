"""Zero-shot table: the 8 lm-eval tasks + WikiText-2 perplexity for several PTQ settings of a model.

    python benchmarks/zeroshot_table.py --model /root/rq/smollm2.gguf --device cuda --json $OUT/zs.json
    python benchmarks/zeroshot_table.py --device cpu --settings fp --limit 20 --max-windows 2 --json zs.json

Each setting is a dict of PTQ-recipe overrides (see ``rotaquant.quant.recipe``; quantized settings
get the recipe's default preset), applied by ``run_ptq`` to a fresh copy of the model, which is then
scored on the tasks with ``rotaquant.eval.zeroshot.evaluate_tasks`` (lm-eval definitions, 0-shot).
``--rotation-path R`` adds the learned-rotation setting; ``--extra NAME='{json}'`` adds any other.
The JSON (rewritten atomically after every setting) holds the machine, the library versions, the
recipe, every metric and the seconds of each stage and of each task.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rotaquant.eval.tasks import TASKS, parse_tasks  # noqa: E402
from rotaquant.eval.zeroshot import evaluate_tasks  # noqa: E402
from rotaquant.io import atomic_write_json  # noqa: E402
from rotaquant.jobs.ptq import run_ptq  # noqa: E402
from rotaquant.models.loading import load_model, resolve_device  # noqa: E402
from rotaquant.quant.recipe import PTQRecipe  # noqa: E402

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}
SETTINGS = {
    "fp": {"rotate": False},
    "w4a4kv4-norot": {**W4A4KV4, "rotate": False},
    "w4a4kv4-hadamard": {**W4A4KV4, "rotate": True, "rotation_mode": "hadamard"},
    "w4a4kv4-learned": {**W4A4KV4, "rotate": True},  # + rotation_path from --rotation-path
    "w4a4kv4-smoothquant": {**W4A4KV4, "rotate": False, "smoothquant_alpha": 0.5},
}
SHORT = {"piqa": "PQ", "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "hellaswag": "HS", "winogrande": "WG",
         "boolq": "BoolQ", "lambada_openai": "LA", "openbookqa": "OBQA"}


def settings_to_run(args) -> dict[str, dict]:
    """The chosen settings; those the installed recipe or the flags cannot express are skipped."""
    chosen = {}
    for key in args.settings:
        over = dict(SETTINGS[key])
        if key == "w4a4kv4-learned":
            if not args.rotation_path:
                print(f"skip {key}: no --rotation-path given", flush=True)
                continue
            over["rotation_path"] = args.rotation_path
        unknown = set(over) - set(PTQRecipe.model_fields)
        if unknown:
            print(f"skip {key}: this rotaquant's PTQ recipe has no {sorted(unknown)} yet", flush=True)
            continue
        chosen[key] = over
    for spec in args.extra:
        name, _, blob = spec.partition("=")
        chosen[name] = json.loads(blob)
    return chosen


def run_setting(key: str, overrides: dict, base, tok, args) -> dict:
    """PTQ (rotation, quantization, WikiText-2 PPL) on a copy of ``base``, then the zero-shot tasks."""
    model = copy.deepcopy(base)
    recipe = {"model": args.model, "dtype": args.dtype, "device": str(args.device), "seqlen": args.seqlen,
              "cal_seqlen": args.seqlen, "batch_size": args.batch_size, "max_windows": args.max_windows,
              "nsamples": args.nsamples, "seed": args.seed, "data_dir": args.data_dir, **overrides}
    ptq = run_ptq(None, progress=args.progress, preloaded=(model, tok), **recipe)
    zs = evaluate_tasks(model, tok, args.tasks, limit=args.limit, batch_size=args.task_batch_size,
                        batch_tokens=args.task_batch_tokens,
                        data_dir=args.data_dir, progress=args.progress)
    label = "FP" if key == "fp" else ptq["label"]
    ps = ptq["seconds"]
    seconds = {"rotate": ps.get("rotate", 0.0), "quantize": ps["quantize"], "ppl": ps["eval"],
               "zeroshot": zs.seconds, "tasks": {t: r.seconds for t, r in zs.tasks.items()}}
    seconds["total"] = ps["total"] - ps["load"] + zs.seconds
    row = {"key": key, "setting": label, "ppl": ptq["ppl"], "average": zs.average,
           **{t: r.score for t, r in zs.tasks.items()}, "seconds": seconds,
           "zeroshot": zs.to_dict(), "ppl_eval": ptq["eval"], "recipe": ptq["recipe"]}
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def format_rows(rows: list[dict], tasks: list[str]) -> str:
    """A plain-text table: PPL, each task's papers' metric (%), the average and the seconds."""
    head = ["setting", "PPL", *(SHORT[t] for t in tasks), "avg", "ptq s", "ppl s", "zs s"]
    body = []
    for r in rows:
        s = r["seconds"]
        body.append([r["setting"], f"{r['ppl']:.3f}", *(f"{100 * r[t]:.2f}" for t in tasks),
                     f"{100 * r['average']:.2f}", f"{s['rotate'] + s['quantize']:.1f}",
                     f"{s['ppl']:.1f}", f"{s['zeroshot']:.1f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(head), *map(line, body)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="alias, .gguf file or HF folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="default: fp16 on CUDA, float32 on CPU")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=JSON", help="more settings as recipe overrides")
    ap.add_argument("--rotation-path", default=None, help="learned R1/R2 (rotaquant optimize output)")
    ap.add_argument("--tasks", default="all", help=f"comma-separated subset of {','.join(TASKS)}")
    ap.add_argument("--limit", type=int, default=None, help="first N items per task (default: all)")
    ap.add_argument("--task-batch-size", type=int, default=64)
    ap.add_argument("--task-batch-tokens", type=int, default=None,
                    help="fill each task forward up to N padded tokens instead of --task-batch-size rows")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8, help="perplexity windows per forward")
    ap.add_argument("--max-windows", type=int, default=None, help="perplexity on the first N windows only")
    ap.add_argument("--nsamples", type=int, default=128, help="calibration windows (GPTQ)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--progress", action="store_true", help="tqdm bars")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.device = resolve_device(args.device)
    args.dtype = args.dtype or ("fp16" if args.device.type == "cuda" else "float32")
    args.tasks = parse_tasks(args.tasks)
    import transformers

    machine = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else platform.processor() or "cpu"
    meta = {"command": " ".join(sys.argv), "machine": machine, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": args.model, "dtype": args.dtype, "tasks": args.tasks, "limit": args.limit,
            "definitions": "lm-evaluation-harness 0.4.13 task YAMLs, 0-shot, BOS as the tokenizer adds it",
            "metric": "acc_norm where the task has it, else acc (LAMBADA: greedy acc); PPL: WikiText-2 test"}
    print(f"{args.model} on {machine} ({args.dtype}), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, tasks {','.join(args.tasks)}, limit {args.limit}", flush=True)
    t = time.perf_counter()
    base, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    meta["load_s"] = time.perf_counter() - t
    rows = []
    for key, overrides in settings_to_run(args).items():
        row = run_setting(key, overrides, base, tok, args)
        rows.append(row)
        print(f"  {row['setting']}: ppl {row['ppl']:.3f}, avg {100 * row['average']:.2f} "
              f"({row['seconds']['total']:.1f} s)", flush=True)
        if args.json:
            atomic_write_json(args.json, {"meta": meta, "rows": rows})
    print(format_rows(rows, args.tasks))


if __name__ == "__main__":
    main()
