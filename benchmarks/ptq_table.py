"""PTQ results table for a model: PPL and wall seconds per setting, side by side in one run.

    python benchmarks/ptq_table.py --model smollm2-135m --section rotation ptq --json out.json

Sections:
  rotation  FP perplexity of the model rotated with each mode (R1-R4), vs unrotated (fp32)
  ptq       (flags as given, --preset none) FP16, W4A16 RTN/GPTQ, W4A4KV4 RTN with/without rotation, W4A4KV4 / W4A8KV8 /
            W4A4KV16 GPTQ rotated (the table of the quantization issue); --rows picks a subset
  memory    peak GPU memory of layer-by-layer GPTQ: the real model, and a 7B-shaped random
            Llama (2 decoder layers, the model kept on CPU, one layer on the GPU at a time)
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

from rotaquant.eval.perplexity import perplexity  # noqa: E402
from rotaquant.jobs.demo import format_table  # noqa: E402
from rotaquant.jobs.ptq import run_ptq  # noqa: E402
from rotaquant.models.loading import load_model  # noqa: E402
from rotaquant.rotation.rotate import rotate  # noqa: E402

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}
PTQ_ROWS = {
    "fp16": {},
    "w4a16-rtn": {"w_bits": 4, "rotate": False},
    "w4a16-gptq": {"w_bits": 4, "w_method": "gptq", "rotate": False},
    "w4a4kv4-rtn-norot": {**W4A4KV4, "rotate": False},
    "w4a4kv4-rtn-rot": {**W4A4KV4, "rotate": True},
    "w4a4kv4-gptq-rot": {**W4A4KV4, "w_method": "gptq", "rotate": True},
    "w4a8kv8-gptq-rot": {"w_bits": 4, "a_bits": 8, "k_bits": 8, "v_bits": 8, "w_method": "gptq", "rotate": True},
    "w4a4kv16-gptq-rot": {"w_bits": 4, "a_bits": 4, "w_method": "gptq", "rotate": True},
    # breakdown of the W4A4KV4 error by component (extra rows)
    "w4a16-rtn-rot": {"w_bits": 4, "rotate": True},
    "w4a16-gptq-rot": {"w_bits": 4, "w_method": "gptq", "rotate": True},
    "w16a4-rot": {"a_bits": 4, "rotate": True},
    "w16a4-norot": {"a_bits": 4, "rotate": False},
    "kv4-rot": {"k_bits": 4, "v_bits": 4, "rotate": True},
    "w4a4kv4-rtn-rot-asym-clip": {**W4A4KV4, "rotate": True, "a_asym": True, "k_asym": True, "v_asym": True,
                                  "a_clip_ratio": 0.9, "k_clip_ratio": 0.95, "v_clip_ratio": 0.95, "w_clip": True},
}


def section_rotation(args) -> list[dict]:
    rows = []
    for mode in [None, "hadamard", "base_hadamard", "orthogonal"]:
        model, tok = load_model(args.model, dtype="float32", device=args.device)
        t = time.perf_counter()
        if mode:
            rotate(model, mode=mode, seed=args.seed, progress=False)
        rot_s = time.perf_counter() - t
        res = perplexity(model, tok, seqlen=args.seqlen, batch_size=args.batch_size,
                         max_windows=args.max_windows, progress=False)
        rows.append({"setting": f"fp32 rotated R1-R4 ({mode})" if mode else "fp32 unrotated",
                     "ppl": res.ppl, "rotate_s": rot_s, "eval_s": res.seconds, "windows": res.windows})
    for row in rows:
        row["rel_diff_pct"] = 100 * (row["ppl"] / rows[0]["ppl"] - 1)
    print(format_table(rows, [("setting", "setting", ""), ("ppl", "PPL", ".4f"), ("rel_diff_pct", "diff %", "+.4f"),
                              ("rotate_s", "rotate s", ".1f"), ("eval_s", "eval s", ".1f")]))
    return rows


def section_ptq(args) -> list[dict]:
    rows = []
    for key in args.rows:
        overrides = {"model": args.model, "dtype": args.dtype, "device": args.device, "seqlen": args.seqlen,
                     "cal_seqlen": args.seqlen, "batch_size": args.batch_size, "max_windows": args.max_windows,
                     "nsamples": args.nsamples, "seed": args.seed, "rotate": False, "preset": "none",
                     **PTQ_ROWS[key]}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        res = run_ptq(None, progress=False, **overrides)
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        label = "FP16" if key == "fp16" else res["label"]
        rows.append({"key": key, "setting": label, "ppl": res["ppl"], "seconds": res["seconds"]["total"],
                     "quantize_s": res["seconds"]["quantize"], "eval_s": res["seconds"]["eval"],
                     "peak_gib": peak, "windows": res["eval"]["windows"], "recipe": res["recipe"]})
        print(f"  {label}: ppl {res['ppl']:.3f} ({res['seconds']['total']:.1f} s)", flush=True)
    print(format_table(rows, [("setting", "setting", ""), ("ppl", "PPL", ".3f"), ("seconds", "wall s", ".1f"),
                              ("quantize_s", "quant s", ".1f"), ("eval_s", "eval s", ".1f"),
                              ("peak_gib", "peak GiB", ".2f")]))
    return rows


def section_memory(args) -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rotaquant.models.architecture import ArchitectureSpec
    from rotaquant.quant.gptq import GPTQConfig
    from rotaquant.quant.layerwise import quantize_weights_layerwise
    from rotaquant.quant.quantizer import QuantSpec

    rows = []
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      num_hidden_layers=2, vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float16).eval()  # on CPU; GPTQ moves one layer at a time
    windows = torch.randint(0, cfg.vocab_size, (args.nsamples, args.seqlen))
    torch.cuda.reset_peak_memory_stats()
    stats = quantize_weights_layerwise(model, QuantSpec(4), windows, ArchitectureSpec(), "gptq", GPTQConfig(),
                                       device="cuda", progress=False)
    layer_bytes = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    rows.append({"setting": "7B-shaped Llama, 2 layers, GPTQ W4", "peak_gib": stats["peak_gpu_bytes"] / 2**30,
                 "layer_gib": layer_bytes / 2**30, "seconds": stats["seconds"], "per_layer_s": stats["seconds"] / 2,
                 "nsamples": args.nsamples, "seqlen": args.seqlen})
    print(format_table(rows, [("setting", "setting", ""), ("peak_gib", "peak GiB", ".2f"),
                              ("layer_gib", "one layer GiB", ".2f"), ("per_layer_s", "s/layer", ".1f")]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--section", nargs="+", default=["rotation", "ptq"], choices=["rotation", "ptq", "memory"])
    ap.add_argument("--rows", nargs="+", default=list(PTQ_ROWS), choices=list(PTQ_ROWS))
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    print(f"model {args.model}, WikiText-2 test, seqlen {args.seqlen}, {machine}, torch {torch.__version__}")
    out = {"meta": {"command": " ".join(sys.argv), "machine": machine, "torch": torch.__version__}}
    for section in args.section:
        print(f"\n== {section} ==", flush=True)
        out[section] = globals()[f"section_{section}"](args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
