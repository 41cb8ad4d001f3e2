"""Full WikiText-2 test perplexity of a model in several dtypes, with the seconds each took.

    python benchmarks/eval_fp.py --model smollm2-135m --dtypes float32 bf16 fp16 --json out.json

Prints a table and writes JSON. The model is loaded once per dtype; the timing covers the
evaluation only (tokenization included, loading excluded), after one warm-up batch.
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

from rotaquant.eval.perplexity import perplexity, window_nll  # noqa: E402
from rotaquant.jobs.demo import format_table  # noqa: E402
from rotaquant.models.loading import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bf16", "fp16"])
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for dtype in args.dtypes:
        t0 = time.perf_counter()
        model, tok = load_model(args.model, dtype=dtype, device=args.device)
        load_s = time.perf_counter() - t0
        dev = next(model.parameters()).device
        window_nll(model, torch.zeros(1, args.seqlen, dtype=torch.long, device=dev))  # warm-up
        res = perplexity(model, tok, "wikitext2", "test", seqlen=args.seqlen,
                         batch_size=args.batch_size, max_windows=args.max_windows, progress=False)
        rows.append({"dtype": dtype, "ppl": res.ppl, "windows": res.windows, "tokens": res.tokens,
                     "seconds": res.seconds, "load_seconds": load_s, "device": res.device})
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    print(f"model {args.model}, WikiText-2 test, seqlen {args.seqlen}, batch {args.batch_size}, {gpu}")
    print(format_table(rows, [("dtype", "dtype", ""), ("ppl", "PPL", ".4f"), ("windows", "windows", "d"),
                              ("seconds", "eval s", ".2f"), ("load_seconds", "load s", ".1f")]))
    if args.json:
        meta = {"command": " ".join(sys.argv), "machine": gpu, "torch": torch.__version__}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
