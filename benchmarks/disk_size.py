"""Checkpoint size on disk (issue 12): FP16 vs W4A16 (and W8A8) of a full-depth LLaMA-7B-shaped model.

export_bench measures a 4-layer 7B-shaped model, whose two 32000 x 4096 FP16 embedding matrices
weigh as much as 1.3 of its layers, so its W4/FP16 ratio says little about a real 7B checkpoint.
This script builds the shape with ``--layers`` layers (random weights, float16, on the CPU),
writes the FP16 folder, quantizes with RTN (no calibration: the size does not depend on the
method), exports with :func:`rotaquant.export` and compares the folders' bytes. Memory: the FP16
weights (0.42 GB a layer) plus the quantization's copies; all 32 layers need more than a 23 GB box
has (the run was killed there after writing the FP16 folder), so measure two depths and add the
per-layer increment (every layer adds the same tensors; `results/disk_size_7b_cpu.md`)::

    python benchmarks/disk_size.py --layers 16 --settings w4a16_g128 --json benchmarks/results/disk_size_7b_16layers_cpu.json
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit  # noqa: E402

import rotaquant  # noqa: E402
from rotaquant.io import atomic_write_json  # noqa: E402

SETTINGS = {"w4a16_g128": {"w_bits": 4, "w_groupsize": 128}, "w4a16_channel": {"w_bits": 4},
            "w8a8": {"w_bits": 8, "a_bits": 8}}


def memory_gib() -> dict:
    """Resident memory now and the process's peak so far, GiB (Linux)."""
    page = Path("/proc/self/statm").read_text().split()[1]
    return {"rss_gib": int(page) * resource.getpagesize() / 2**30,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(layers: int, seed: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False,
                      num_hidden_layers=layers)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
    # float16 storage, never a float32 copy of 6.7B parameters; the buffers (RoPE's inv_freq, not
    # saved) stay uninitialized: nothing here runs the model
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02))
    return model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--settings", default="w4a16_g128,w4a16_channel", help=",".join(SETTINGS))
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rq-disk-"))
    rows = []
    t = time.perf_counter()
    model = build(args.layers, 0)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {params / 1e9:.2f} B parameters in {time.perf_counter() - t:.0f} s ({memory_gib()})", flush=True)
    try:
        model.save_pretrained(work / "fp16")
        fp = folder_bytes(work / "fp16")
        rows.append({"setting": "fp16", "bytes": fp, "ratio": 1.0})
        print(rows[-1], flush=True)
        shutil.rmtree(work / "fp16")
        for i, name in enumerate(args.settings.split(",")):
            t = time.perf_counter()
            if i:  # a fresh copy of the same weights (two 7B models do not fit in memory)
                model = build(args.layers, 0)
            built = memory_gib()
            rotaquant.quantize(model, {"preset": "none", "rotate": False, **SETTINGS[name]}, progress=False)
            quantized = memory_gib()
            rotaquant.export(model, None, work / name, dtype="float16")
            size = folder_bytes(work / name)
            rows.append({"setting": name, "bytes": size, "ratio": size / fp, "seconds": time.perf_counter() - t,
                         "memory_gib": {"built": built, "quantized": quantized, "exported": memory_gib()}})
            print(rows[-1], flush=True)
            shutil.rmtree(work / name)
            del model
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {"command": " ".join(sys.argv), "commit": git_commit(), "machine": platform.machine(),
              "torch": torch.__version__, "layers": args.layers, "parameters": params, "rows": rows}
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
