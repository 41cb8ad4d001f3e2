"""The quick-start job: FP vs W4A4KV4 without and with rotation, on the default model and data.

Both W4A4KV4 rows use the default recipe (``preset: auto``, i.e. SpinQuant's: GPTQ(v2) with a
clipping search in sequential groups, asymmetric per-token activations, o_proj per head,
asymmetric per-head KV; plus QuaRot's activation and K/V clipping). On a GPU that is the whole
job (128 calibration windows, the whole test split). On a CPU GPTQ over 30 layers takes well over the few minutes a quick start may
take, so there the weights are RTN with the recipe's clipping search (everything else as the
recipe says) and only the first ``CPU_WINDOWS`` windows are scored; the output says so, and
``weights="gptq"`` (``rotaquant demo --weights gptq``) runs GPTQ on ``CPU_NSAMPLES`` windows.
"""

from __future__ import annotations

import logging

from ..io import atomic_write_json
from ..models.aliases import DEFAULT_MODEL
from ..models.loading import resolve_device

logger = logging.getLogger(__name__)
CPU_WINDOWS = 8
CPU_NSAMPLES = 4
GPU_NSAMPLES = 128
W4A4KV4 = {"w_bits": 4, "a_bits": 4, "k_bits": 4, "v_bits": 4}


def _clip(ratio: float) -> str:
    return f", clipped at {ratio:g}" if ratio < 1 else ""


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


def demo_recipes(method: str | None = None) -> list[dict]:
    """The three settings of the demo, as recipe overrides (``method`` overrides the default
    recipe's GPTQ, e.g. ``"rtn"``)."""
    weights = {} if method is None else {"w_method": method}
    return [
        {"rotate": False},
        {**W4A4KV4, **weights, "rotate": False},
        {**W4A4KV4, **weights, "rotate": True},
    ]


def run_demo(max_windows: int | None = None, device: str | None = None, json_path: str | None = None,
             progress: bool = True, weights: str = "auto") -> list[dict]:
    """Evaluate FP, W4A4KV4 without rotation and W4A4KV4 with R1-R4 rotation; print a table.

    On CPU only the first ``CPU_WINDOWS`` windows of 2048 tokens are used unless
    ``max_windows`` says otherwise; on GPU the whole WikiText-2 test split.
    """
    from .ptq import run_ptq

    dev = resolve_device(device)
    if max_windows is None and dev.type == "cpu":
        max_windows = CPU_WINDOWS
    if weights not in ("auto", "gptq", "rtn"):
        raise ValueError(f"weights must be auto, gptq or rtn, not {weights!r}")
    method = ("rtn" if dev.type == "cpu" else None) if weights == "auto" else weights
    base = {"model": DEFAULT_MODEL, "device": str(dev), "max_windows": max_windows,
            "batch_size": 1 if dev.type == "cpu" else 8,
            "nsamples": CPU_NSAMPLES if dev.type == "cpu" else GPU_NSAMPLES}
    rows, results = [], []
    for overrides in demo_recipes(method):
        res = run_ptq(None, progress=progress, **base, **overrides)
        results.append(res)
        rows.append({"setting": res["label"], "ppl": res["ppl"], "seconds": res["seconds"]["total"]})
        logger.info("%s: ppl %.3f", res["label"], res["ppl"])
    ev = results[0]["eval"]
    scope = "all windows" if max_windows is None else f"first {ev['windows']} windows (a subset; all on GPU)"
    fp = rows[0]["ppl"]
    for row in rows:
        row["vs_fp"] = row["ppl"] / fp
    rec = results[-1]["recipe"]
    wdesc = rec["w_method"].upper() + (" + clip search" if rec["w_clip"] else "")
    if rec["w_method"] == "gptq":
        wdesc += f" on {rec['nsamples']} calibration windows of {rec['cal_seqlen']} (WikiText-2 validation)"
    elif weights == "auto":
        wdesc += " (CPU: RTN instead of the recipe's GPTQ to stay within minutes; --weights gptq for GPTQ)"
    print(f"\nrotaquant demo: {DEFAULT_MODEL}, WikiText-2 test, seqlen 2048, {scope}, "
          f"{ev['tokens']} tokens scored, device {ev['device']}. Recipe: preset {rec['preset']} -> weights "
          f"{wdesc}; activations {'asym' if rec['a_asym'] else 'sym'} per token (o_proj {rec['o_proj_input']})"
          f"{_clip(rec['a_clip_ratio'])}; KV {'asym' if rec['k_asym'] else 'sym'} per head"
          f"{_clip(rec['k_clip_ratio'])}")
    print(format_table(rows, [("setting", "setting", ""), ("ppl", "PPL", ".3f"),
                              ("vs_fp", "x FP", ".2f"), ("seconds", "seconds", ".1f")]))
    if json_path:
        atomic_write_json(json_path, {"model": DEFAULT_MODEL, "rows": rows, "results": results})
    return rows
