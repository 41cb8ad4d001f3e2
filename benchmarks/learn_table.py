"""Learned (Cayley) vs random Hadamard rotations, W4A4KV4 with RTN and GPTQ, in one run.

    python benchmarks/learn_table.py --model smollm2-135m --json out.json [--iterations 100]

Learns two rotation files on the calibration split (WikiText-2 validation), as SpinQuant does:
  * ``rtn``:  learned with W4A4KV4 in the loop (RTN weights), applied with RTN;
  * ``w16``:  learned with W16A4KV4 (weights unquantized), applied with GPTQ (the SpinQuant
    authors' advice: GPTQ changes the weights afterwards, so the rotation should not fit RTN's).
then evaluates on the full WikiText-2 test: random Hadamard (seed 0) vs learned, RTN and GPTQ.
Also reports seconds per iteration and peak GPU memory of each learning run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rotaquant.jobs.demo import format_table  # noqa: E402
from rotaquant.jobs.learn import optimize  # noqa: E402
from rotaquant.jobs.ptq import run_ptq  # noqa: E402
from rotaquant.models.loading import load_model  # noqa: E402

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}
LEARN = {"rtn": dict(W4A4KV4), "w16": {**W4A4KV4, "w_bits": 16}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--learn", nargs="+", default=list(LEARN), choices=list(LEARN))
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--nsamples", type=int, default=800)
    ap.add_argument("--learn-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1.5)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--optimizer", default="sgd")
    ap.add_argument("--gptq-nsamples", type=int, default=128)
    ap.add_argument("--eval-dtype", default="fp16")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--skip-random", action="store_true", help="only the learned rows")
    ap.add_argument("--out-dir", default=".")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    print(f"model {args.model}, {machine}, torch {torch.__version__}", flush=True)
    out: dict = {"meta": {"command": " ".join(sys.argv), "machine": machine, "torch": torch.__version__},
                 "learn": {}, "ptq": []}
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))

    rows: list[dict] = []
    # every run loads its own copy (the GGUF conversion is cached): casting one loaded model with
    # .to(fp16) would also cast RoPE's float32 inv_freq buffer and change the results

    def evaluate(method: str, rot: str, path: str | None) -> None:
        t = time.perf_counter()
        model, tok = load_model(args.model, dtype=args.eval_dtype, device=device)
        res = run_ptq(None, progress=False, preloaded=(model, tok), model=args.model, **W4A4KV4,
                      w_method=method, rotation_path=path, seqlen=args.seqlen, cal_seqlen=args.seqlen,
                      nsamples=args.gptq_nsamples, batch_size=8, max_windows=args.max_windows)
        row = {"setting": f"W4A4KV4 {method.upper()}", "rotation": rot, "ppl": res["ppl"],
               "seconds": time.perf_counter() - t, "windows": res["eval"]["windows"], "rotation_path": path}
        rows.append(row)
        print(f"  {row['setting']} {rot}: ppl {row['ppl']:.3f} ({row['seconds']:.1f} s)", flush=True)
        out["ptq"] = rows
        save()

    # each learned file is evaluated right after it is learned, so a cut-off run keeps pairs
    for key in args.learn:
        method = "rtn" if key == "rtn" else "gptq"
        if not args.skip_random:
            evaluate(method, "random Hadamard", None)
        path = Path(args.out_dir) / f"learned_{key}.safetensors"
        t = time.perf_counter()
        model, tok = load_model(args.model, dtype="float32", device=device)
        res = optimize(None, output=path, overwrite=True, progress=False, preloaded=(model, tok),
                       iterations=args.iterations, nsamples=args.nsamples, batch_size=args.learn_batch,
                       lr=args.lr, momentum=args.momentum, optimizer=args.optimizer, seqlen=args.seqlen,
                       checkpoint_every=10_000, **LEARN[key])
        res.pop("matrices")
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        res["wall_seconds"] = time.perf_counter() - t
        out["learn"][key] = res
        tail = res["losses"][-10:]
        print(f"learned {key} ({res['bits']}): loss {res['first_loss']:.4f} -> {res['last_loss']:.4f} "
              f"(mean of last 10: {sum(tail) / len(tail):.4f}), {res['seconds_per_step']:.3f} s/step, "
              f"peak {res['peak_memory_gib'] or 0:.2f} GiB, {res['wall_seconds']:.0f} s", flush=True)
        save()
        evaluate(method, f"learned ({res['bits']})", str(path))

    print(format_table(rows, [("setting", "setting", ""), ("rotation", "rotation", ""), ("ppl", "PPL", ".3f"),
                              ("seconds", "wall s", ".1f")]))
    learn_rows = [{"run": k, "bits": v["bits"], "first": v["first_loss"], "last": v["last_loss"],
                   "s_step": v["seconds_per_step"], "peak": v["peak_memory_gib"] or 0.0} for k, v in out["learn"].items()]
    if learn_rows:
        print(format_table(learn_rows, [("run", "learned", ""), ("bits", "in the loop", ""), ("first", "loss first", ".4f"),
                                        ("last", "loss last", ".4f"), ("s_step", "s/iter", ".3f"),
                                        ("peak", "peak GiB", ".2f")]))
    save()


if __name__ == "__main__":
    main()
