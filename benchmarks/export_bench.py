"""Quantized checkpoints: size on disk, load time, agreement, prefill/decode tokens/s, peak memory.

Two modes (both print a table and write JSON):

* kernels (default): a random model of a given shape (``--shape 7b``: LLaMA-2-7B's layers, a few
  of them; ``--shape smollm2``: SmolLM2-135M's), FP16 vs each quantized setting. Each setting is
  fake-quantized (RTN), exported (``rotaquant.export``), reloaded (``rotaquant.load_model`` with
  the ``auto`` kernel), checked against the fake-quantized logits, then timed: prefill of
  ``--prefill`` tokens at batch 1, decode at batch 1 and 16 with a KV cache.
* ``--ppl``: a real model (default smollm2-135m): WikiText-2 perplexity of the fake-quantized
  model and of its reloaded export (reference and auto kernels), which must agree.

    python benchmarks/export_bench.py --device cuda --shape 7b --layers 4 --json out.json
    python benchmarks/export_bench.py --ppl --model smollm2-135m --max-windows 4 --seqlen 512

On the GPU machine (it lacks compressed-tensors and pydantic: carry their wheels, e.g. `.carry/export/whl`):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/export/whl/*.whl
    PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/export_bench.py --device cuda --shape 7b --layers 4 \
        --settings w4a16_g128,w8a8,w4a4 --json $OUT/export_7b.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

import rotaquant
from rotaquant.eval.perplexity import perplexity

SETTINGS = {  # name -> PTQ recipe keys (RTN, no rotation unless --rotate)
    "w4a16_g128": {"w_bits": 4, "w_groupsize": 128},
    "w4a16_g64": {"w_bits": 4, "w_groupsize": 64},  # SmolLM2's 576 = 4.5 * 128
    "w4a16_channel": {"w_bits": 4},
    "w8a8": {"w_bits": 8, "a_bits": 8},
    "w4a4": {"w_bits": 4, "a_bits": 4},
    "w4a4kv4": {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4},
}
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                    head_dim=64, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def random_model(shape: str, layers: int, dtype, device, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=layers, rms_norm_eps=1e-5, **SHAPES[shape])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


@torch.inference_mode()
def throughput(model, vocab: int, device, prefill: int, decode_steps: int, reps: int = 3) -> dict:
    out = {}
    ids = torch.randint(0, vocab, (1, prefill), device=device)
    model(ids[:, :64])  # warm-up (kernels, allocator)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        model(ids, use_cache=False)
    sync(device)
    out["prefill_tok_s"] = prefill * reps / (time.perf_counter() - t)
    for batch in (1, 16):
        ctx = torch.randint(0, vocab, (batch, 128), device=device)
        res = model(ctx, use_cache=True)
        past, nxt = res.past_key_values, res.logits[:, -1:].argmax(-1)
        for _ in range(2):  # warm-up steps
            res = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = res.past_key_values, res.logits[:, -1:].argmax(-1)
        sync(device)
        t = time.perf_counter()
        for _ in range(decode_steps):
            res = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = res.past_key_values, res.logits[:, -1:].argmax(-1)
        sync(device)
        out[f"decode_b{batch}_tok_s"] = batch * decode_steps / (time.perf_counter() - t)
    return out


def peak_reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_kernels(args) -> dict:
    device, dtype = torch.device(args.device), rotaquant.models.loading.resolve_dtype(args.dtype)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = random_model(args.shape, args.layers, dtype, device)
    vocab = base.config.vocab_size
    probe = torch.randint(0, vocab, (1, 256), generator=torch.Generator().manual_seed(1)).to(device)
    rows = []
    # FP16 baseline: a plain HF folder
    t = time.perf_counter()
    base.save_pretrained(work / "fp")
    row = {"setting": f"fp ({args.dtype})", "export_s": time.perf_counter() - t, "disk_mb": folder_bytes(work / "fp") / 2**20}
    peak_reset(device)
    t = time.perf_counter()
    from transformers import AutoModelForCausalLM

    fp = AutoModelForCausalLM.from_pretrained(work / "fp", dtype=dtype, device_map=device).eval()
    sync(device)
    row.update(load_s=time.perf_counter() - t, kernels="dense")
    row.update(throughput(fp, vocab, device, args.prefill, args.decode_steps), peak_gib=peak(device))
    rows.append(row)
    del fp
    shutil.rmtree(work / "fp")
    for name in args.settings.split(","):
        row = {"setting": name}
        try:
            model = copy.deepcopy(base)
            rotaquant.quantize(model, {"preset": "none", "rotate": args.rotate, **SETTINGS[name]}, device=device,
                               progress=False)
            with torch.inference_mode():
                ref = model(probe).logits.float()
                # how far the fake-quantized model itself moves under 1e-6 relative input noise
                # (quantizer codes on rounding ties flip): the floor for any kernel's agreement
                emb = model.get_input_embeddings()(probe)
                noisy = model(inputs_embeds=emb * (1 + 1e-6 * torch.randn_like(emb))).logits.float()
                row["fq_noise_floor_rel"] = ((noisy - ref).abs().max() / ref.abs().max()).item()
                del noisy, emb
            t = time.perf_counter()
            rotaquant.export(model, None, work / name, dtype=dtype)
            row.update(export_s=time.perf_counter() - t, disk_mb=folder_bytes(work / name) / 2**20)
            del model
            peak_reset(device)
            t = time.perf_counter()
            q, _ = rotaquant.load_model(work / name, dtype=dtype, device=device, kernel=args.kernel)
            sync(device)
            row["load_s"] = time.perf_counter() - t
            kinds = {}
            for m in q.modules():
                if hasattr(m, "kernel"):
                    kinds[m.kernel] = kinds.get(m.kernel, 0) + 1
            row["kernels"] = ",".join(f"{k}x{v}" for k, v in sorted(kinds.items()))
            with torch.inference_mode():
                got = q(probe).logits.float()
            row["max_rel_diff"] = ((got - ref).abs().max() / ref.abs().max()).item()
            row["argmax_agree"] = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
            row.update(throughput(q, vocab, device, args.prefill, args.decode_steps), peak_gib=peak(device))
            del q, ref, got
        except Exception as exc:  # one failing setting must not lose the others' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        rows.append(row)
        shutil.rmtree(work / name, ignore_errors=True)
        print(json.dumps(row), flush=True)
    fp_row = rows[0]
    for row in rows[1:]:
        for key in ("disk_mb", "prefill_tok_s", "decode_b1_tok_s", "decode_b16_tok_s"):
            if key in row and fp_row.get(key):
                row[f"{key}_vs_fp"] = row[key] / fp_row[key]
    return {"mode": "kernels", "shape": args.shape, "layers": args.layers, "rows": rows}


def run_ppl(args) -> dict:
    device = torch.device(args.device)
    model, tok = rotaquant.load_model(args.model, dtype=args.dtype, device=device)
    recipe = {"preset": "none", "rotate": True, **SETTINGS[args.settings.split(",")[0]]}
    rotaquant.quantize(model, recipe, progress=False)
    ev = dict(seqlen=args.seqlen, max_windows=args.max_windows, progress=False)
    rows = [{"model": "fake-quantized", "ppl": perplexity(model, tok, "wikitext2", "test", **ev).ppl}]
    out = Path(args.workdir) / "ppl"
    shutil.rmtree(out, ignore_errors=True)
    rotaquant.export(model, tok, out)
    rows[0]["disk_mb"] = folder_bytes(out) / 2**20
    del model
    for kernel in ("reference", "auto"):
        t = time.perf_counter()
        q, qtok = rotaquant.load_model(out, dtype=args.dtype, device=device, kernel=kernel)
        load = time.perf_counter() - t
        rows.append({"model": f"reloaded ({kernel})", "load_s": load,
                     "ppl": perplexity(q, qtok, "wikitext2", "test", **ev).ppl})
        del q
    return {"mode": "ppl", "model": args.model, "recipe": recipe, "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--settings", default="w4a16_g128,w4a16_channel,w8a8,w4a4")
    p.add_argument("--kernel", default="auto")
    p.add_argument("--rotate", action="store_true", help="rotate (R1-R4) before quantizing")
    p.add_argument("--prefill", type=int, default=2048)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--workdir", default="/tmp/rotaquant-export-bench")
    p.add_argument("--ppl", action="store_true", help="perplexity mode on a real model")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    t0 = time.perf_counter()
    res = run_ppl(args) if args.ppl else run_kernels(args)
    res.update(seconds=time.perf_counter() - t0, torch=torch.__version__, python=platform.python_version(),
               device=torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
               args=vars(args))
    for row in res["rows"]:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
