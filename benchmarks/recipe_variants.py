"""W4A4KV4 recipe variants side by side: the default preset with and without GPTQ act-order, the
full symmetric grid (compressed-tensors' amax/7.5), and without its QuaRot activation/KV
clipping (0.9 / 0.95), one random-Hadamard seed.

    python benchmarks/recipe_variants.py --device cuda --json out.json                  # 128 x 2048, full test
    python benchmarks/recipe_variants.py --device cpu --nsamples 32 --cal-seqlen 512 --max-windows 8 --json out.json

Every variant quantizes its own copy of the model with ``run_ptq`` (rotation seed ``--seed``) and
scores WikiText-2 test perplexity; the table and the JSON (machine, versions, commit, command) are
rewritten after each variant, so a cut-off run keeps what it finished.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_common import git_commit  # noqa: E402

from rotaquant.io import atomic_write_json  # noqa: E402
from rotaquant.jobs.ptq import run_ptq  # noqa: E402
from rotaquant.models.loading import load_model  # noqa: E402
from rotaquant.quant.recipe import CLIP  # noqa: E402

W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}
VARIANTS = {
    "auto": {},
    "auto+actorder": {"gptq_act_order": True},
    "auto+fullgrid": {"sym_grid": "full"},
    "auto+actorder+fullgrid": {"gptq_act_order": True, "sym_grid": "full"},
    # without QuaRot's activation / KV clipping, which the default preset has since e578aed (the
    # results files before it name this comparison the other way round: auto vs auto+clip)
    "auto-noclip": dict.fromkeys(CLIP, 1.0),
    # tighter and looser clipping than QuaRot's
    "auto+a0.85": {"a_clip_ratio": 0.85},
    "auto+a0.95": {"a_clip_ratio": 0.95},
    "auto+kv0.9": {"k_clip_ratio": 0.9, "v_clip_ratio": 0.9},
    "auto+a0.85+kv0.9": {"a_clip_ratio": 0.85, "k_clip_ratio": 0.9, "v_clip_ratio": 0.9},
    # asymmetric weight grids (GPTQ per channel, 16 levels from min to max instead of +-amax)
    "auto+wasym": {"w_asym": True},
    # o_proj's input: heads mixed by an online Hadamard (QuaRot) instead of a scale per head
    "auto+mixed": {"o_proj_input": "mixed"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="default: fp16 on CUDA, float32 on CPU")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    ap.add_argument("--cal-seqlen", type=int, default=2048)
    ap.add_argument("--max-windows", type=int, default=None, help="perplexity on the first N test windows")
    ap.add_argument("--seed", type=int, default=0, help="rotation and calibration seed")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    base, tok = load_model(args.model, dtype=args.dtype or "float32", device=args.device)
    device = next(base.parameters()).device
    if args.dtype is None and device.type == "cuda":
        base = base.half()
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = {"meta": {"command": " ".join(sys.argv), "machine": machine, "torch": torch.__version__,
                    "commit": git_commit(), "settings": vars(args)}, "rows": {}}
    for key in args.variants:
        t = time.perf_counter()
        res = run_ptq(None, progress=False, preloaded=(copy.deepcopy(base), tok), **W4A4KV4, device=str(device),
                      dtype=str(next(base.parameters()).dtype).removeprefix("torch."), nsamples=args.nsamples,
                      cal_seqlen=args.cal_seqlen, seqlen=2048, max_windows=args.max_windows, seed=args.seed,
                      **VARIANTS[key])
        out["rows"][key] = {"ppl": res["ppl"], "seconds": time.perf_counter() - t, "stages": res["seconds"],
                            "overrides": VARIANTS[key]}
        print(f"{key:26s} ppl {res['ppl']:9.3f}  ({out['rows'][key]['seconds']:.0f} s)", flush=True)
        if args.json:
            atomic_write_json(args.json, out)


if __name__ == "__main__":
    main()
