"""Why 4-bit weights behave as they do on a model: two CPU-sized experiments, one table each.

    python benchmarks/weight_error.py --section fold gptq --json out.json

  fold  W4 RTN perplexity with no processing / norms folded only / folded + R1-R4 / folded +
        R1-R2, each with plain, asymmetric and clip-searched RTN (short windows: a diagnosis,
        not the reference figure)
  gptq  per-linear calibration objective tr((W-Q) H (W-Q)^T) of GPTQ (with and without
        act-order) relative to RTN, on a few decoder layers of the unrotated model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rotaquant.data import calibration_windows  # noqa: E402
from rotaquant.eval.perplexity import perplexity  # noqa: E402
from rotaquant.jobs.demo import format_table  # noqa: E402
from rotaquant.models.loading import load_model  # noqa: E402
from rotaquant.quant.gptq import (  # noqa: E402
    GPTQConfig,
    HessianAccumulator,
    gptq_quantize_weight,
    quantization_objective,
)
from rotaquant.quant.pipeline import quantize  # noqa: E402
from rotaquant.quant.quantizer import QuantSpec  # noqa: E402
from rotaquant.quant.rtn import rtn_quantize_weight  # noqa: E402
from rotaquant.rotation.fuse import fuse_norms, untie_embeddings  # noqa: E402
from rotaquant.rotation.rotate import resolve_spec, rotate  # noqa: E402

PROCESSING = ["none", "fold", "fold+R1-R4", "fold+R1R2"]
WEIGHTS = {"rtn": {}, "rtn asym": {"w_asym": True}, "rtn clip": {"w_clip": True}}


def _process(model, how: str) -> None:
    if how == "fold":
        spec = resolve_spec(model, "auto")
        untie_embeddings(model)
        fuse_norms(model, spec.norm_fuse_config, spec.layers_pattern, spec.strict_patterns, True)
    elif how != "none":
        rotate(model, progress=False, online=how == "fold+R1-R4")


def section_fold(args) -> list[dict]:
    rows = []
    for how in PROCESSING:
        row = {"processing": how}
        for label, extra in WEIGHTS.items():
            model, tok = load_model(args.model, dtype="float32", device=args.device)
            _process(model, how)
            quantize(model, None, progress=False, w_bits=4, **extra)
            row[label] = perplexity(model, tok, seqlen=args.seqlen, max_windows=args.max_windows, progress=False).ppl
        rows.append(row)
        print(f"  {how}: " + ", ".join(f"{k} {row[k]:.3f}" for k in WEIGHTS), flush=True)
    print(format_table(rows, [("processing", "W4 weights after", "")] + [(k, k, ".3f") for k in WEIGHTS]))
    return rows


def section_gptq(args) -> list[dict]:
    model, tok = load_model(args.model, dtype="float32", device=args.device)
    windows = calibration_windows(tok, args.nsamples, args.seqlen)
    accs, hooks = {}, []
    for i in args.layers:
        for name, lin in model.model.layers[i].named_modules():
            if isinstance(lin, torch.nn.Linear):
                acc = HessianAccumulator(lin.in_features, device=lin.weight.device, name=f"{i}.{name}")
                accs[f"{i}.{name}"] = (acc, lin)
                hooks.append(lin.register_forward_hook(lambda mod, a, o, acc=acc: acc.add(a[0])))
    with torch.no_grad():
        for w in windows:
            model(w[None].to(model.device))
    for h in hooks:
        h.remove()
    spec, rows = QuantSpec(4), []
    for key, (acc, lin) in accs.items():
        hess = acc.hessian
        rtn = quantization_objective(lin.weight, rtn_quantize_weight(lin.weight, spec), hess)
        gptq = quantization_objective(lin.weight, gptq_quantize_weight(lin.weight, hess, spec, GPTQConfig()), hess)
        act = quantization_objective(lin.weight, gptq_quantize_weight(lin.weight, hess, spec, GPTQConfig(act_order=True)), hess)
        rows.append({"linear": key, "rtn": rtn, "gptq_vs_rtn": gptq / rtn, "act_order_vs_rtn": act / rtn})
    print(format_table(rows, [("linear", "layer.linear", ""), ("rtn", "RTN objective", ".4g"),
                              ("gptq_vs_rtn", "GPTQ / RTN", ".3f"), ("act_order_vs_rtn", "act-order / RTN", ".3f")]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--section", nargs="+", default=["fold", "gptq"], choices=["fold", "gptq"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=4, help="fold: evaluation windows")
    ap.add_argument("--nsamples", type=int, default=8, help="gptq: calibration windows")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 1, 15, 29], help="gptq: decoder layers")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {"meta": {"command": " ".join(sys.argv), "torch": torch.__version__, "device": args.device}}
    for section in args.section:
        print(f"\n== {section} ==", flush=True)
        out[section] = globals()[f"section_{section}"](args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
