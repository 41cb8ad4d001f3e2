"""The quick-start job: the default model on the default data, as a results table."""

from __future__ import annotations

import logging
import time

import torch

from .eval.perplexity import perplexity
from .io import atomic_write_json
from .models.aliases import DEFAULT_MODEL
from .models.loading import load_model, resolve_device

logger = logging.getLogger(__name__)
CPU_WINDOWS = 8


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header, format) triples."""
    cells = [[h for _, h, _ in columns]]
    cells += [[format(r[k], f) if r.get(k) is not None else "-" for k, _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
              for row in cells[1:]]
    return "\n".join(lines)


def run_demo(max_windows: int | None = None, device: str | None = None,
             json_path: str | None = None, progress: bool = True) -> list[dict]:
    """Evaluate the default model's WikiText-2 perplexity and print a table.

    On CPU only the first ``CPU_WINDOWS`` windows of 2048 tokens are used unless
    ``max_windows`` says otherwise; on GPU the whole test split.
    """
    dev = resolve_device(device)
    if max_windows is None and dev.type == "cpu":
        max_windows = CPU_WINDOWS
    dtype = torch.float32
    started = time.perf_counter()
    model, tokenizer = load_model(DEFAULT_MODEL, dtype=dtype, device=dev)
    logger.info("model loaded in %.1f s", time.perf_counter() - started)
    res = perplexity(model, tokenizer, "wikitext2", "test", seqlen=2048,
                     batch_size=1 if dev.type == "cpu" else 8, max_windows=max_windows, progress=progress)
    rows = [{"setting": "FP32 (no quantization)", "ppl": res.ppl, "seconds": res.seconds}]
    scope = "all windows" if max_windows is None else f"first {res.windows} windows (subset)"
    print(f"\nrotaquant demo: {DEFAULT_MODEL}, WikiText-2 test, seqlen 2048, {scope}, "
          f"{res.tokens} tokens scored, device {res.device}")
    print(format_table(rows, [("setting", "setting", ""), ("ppl", "PPL", ".3f"), ("seconds", "seconds", ".1f")]))
    if json_path:
        atomic_write_json(json_path, {"model": DEFAULT_MODEL, "windows": res.windows, "rows": rows})
    return rows
