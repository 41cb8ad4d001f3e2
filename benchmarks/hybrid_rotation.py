"""W4A4 RTN with and without rotation on a tiny Mamba2/attention hybrid (Bamba) trained on CPU.

    python benchmarks/hybrid_rotation.py --json benchmarks/results/hybrid_cpu.json

A small BambaForCausalLM (4 layers: Mamba2, attention, Mamba2, attention; hidden 128) is trained
from scratch for ``--steps`` steps on the first 90% of WikiText-2 *validation* text at the byte
level (vocabulary 256), then evaluated on the held-out last 10% (perplexity per byte, windows of
``--seqlen``). Each setting quantizes a copy of the trained model with rotaquant.quantize():
W4 RTN on every decoder linear (in_proj/out_proj included, per output channel, symmetric) and A4
per-token symmetric at every decoder linear's input; conv1d, the SSM state and the KV cache stay
in full precision. Rotated settings use the registry's ``bamba`` config (R1 fused; with online:
R3 on attention Q/K, R4 on down_proj, a Hadamard at out_proj's input), one per rotation seed.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import transformers  # noqa: E402

from rotaquant import quantize, rotate  # noqa: E402
from rotaquant.io import atomic_write_json  # noqa: E402
from rotaquant.jobs.demo import format_table  # noqa: E402

DATA = Path("/work/shared/data/wikitext-2/valid.txt")
MODEL = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1, 3], mamba_n_heads=8,
             mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16, mamba_expand=2, mamba_chunk_size=64,
             max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=0, bos_token_id=None,
             eos_token_id=None)


def byte_splits(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.tensor(list(path.read_bytes()), dtype=torch.long)
    cut = int(0.9 * len(data))
    return data[:cut], data[cut:]


def train(train_ids: torch.Tensor, steps: int, batch: int, seqlen: int, lr: float, seed: int):
    torch.manual_seed(seed)
    model = transformers.BambaForCausalLM(transformers.BambaConfig(**MODEL))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses, started = [], time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:  # warmup then cosine
            warm = min(1.0, (step + 1) / 20)
            group["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        starts = torch.randint(0, len(train_ids) - seqlen - 1, (batch,), generator=gen)
        x = torch.stack([train_ids[s:s + seqlen] for s in starts])
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - started:.0f} s)", flush=True)
    return model.eval(), losses, time.perf_counter() - started


@torch.no_grad()
def byte_perplexity(model, ids: torch.Tensor, seqlen: int) -> float:
    n = (len(ids) - 1) // seqlen
    x = ids[: n * seqlen].reshape(n, seqlen)
    nll, count = 0.0, 0
    for i in range(0, n, 16):
        rows = x[i:i + 16]
        logits = model(input_ids=rows, use_cache=False).logits[:, :-1].double()
        nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       rows[:, 1:].reshape(-1), reduction="sum"))
        count += rows[:, 1:].numel()
    return math.exp(nll / count)


def setting(model, eval_ids, seqlen, *, rotated: bool, online: bool = True, quant: bool = True, seed: int = 0):
    m = copy.deepcopy(model)
    t = time.perf_counter()
    if rotated:
        rotate(m, "auto", online=online, seed=seed, verify=True, progress=False)
    if quant:
        quantize(m, w_bits=4, a_bits=4, w_method="rtn", rotate=False, preset="none", progress=False)
    ppl = byte_perplexity(m, eval_ids, seqlen)
    return ppl, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--rotation-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--eval-bytes", type=int, default=32768, help="evaluate on the first N held-out bytes (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(DATA), help="the WikiText-2 validation text file")
    ap.add_argument("--device-note", default="", help="free text recorded in the JSON (which machine)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_ids, eval_ids = byte_splits(Path(args.data))
    if args.eval_bytes:
        eval_ids = eval_ids[: args.eval_bytes]
    model, losses, train_s = train(train_ids, args.steps, args.batch, args.seqlen, args.lr, args.seed)
    rows = []

    def add(name, **kw):
        ppl, secs = setting(model, eval_ids, args.seqlen, **kw)
        rows.append({"setting": name, "ppl": ppl, "seconds": secs, **{k: v for k, v in kw.items() if k != "quant"}})
        print(f"{name:40s} {ppl:8.3f}", flush=True)

    add("FP", rotated=False, quant=False)
    add("FP rotated (R1 + online)", rotated=True, quant=False)
    add("W4A4 RTN, no rotation", rotated=False)
    for s in args.rotation_seeds:
        add(f"W4A4 RTN, R1 only (seed {s})", rotated=True, online=False, seed=s)
        add(f"W4A4 RTN, R1 + online R3/R4/rm (seed {s})", rotated=True, online=True, seed=s)
    print(format_table(rows, [("setting", "setting", ""), ("ppl", "byte PPL", ".3f"), ("seconds", "s", ".1f")]))
    if args.json:
        atomic_write_json(args.json, {
            "benchmark": "hybrid_rotation", "device": "cpu", "threads": args.threads,
            "model": {"class": "BambaForCausalLM", **MODEL}, "data": Path(args.data).name,
            "machine": args.device_note or platform.node(),
            "split": "WikiText-2 validation bytes: first 90% train, last 10% eval",
            "eval_bytes": len(eval_ids), "args": vars(args), "train_seconds": train_s,
            "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
            "quantization": "W4 RTN per channel symmetric, A4 per token symmetric, all decoder linears; "
                            "conv1d, SSM state, KV cache, embeddings and lm_head in full precision",
            "results": rows, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                          "python": platform.python_version()},
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
