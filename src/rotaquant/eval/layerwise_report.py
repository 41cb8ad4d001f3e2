"""Text forms of the layer-wise analysis rows: CSV, the console summary, the side-by-side table."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .layerwise import LAYER, LOGITS, Row

CSV_FIELDS = ("method", "layer", "module", "mode", "metric", "value")


def rows_to_csv(rows: Iterable[Row]) -> str:
    """One line per row: ``method,layer,module,mode,metric,value`` (value with 10 significant digits)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([r.method, r.layer, r.module, r.mode, r.metric, f"{r.value:.10g}"])
    return buf.getvalue()


def _pick(rows: Sequence[Row], **want) -> list[Row]:
    return [r for r in rows if all(getattr(r, k) == v for k, v in want.items())]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def flagged(rows: Sequence[Row], threshold: float) -> list[Row]:
    """Cosine rows of outputs (not weights) below ``threshold``, worst first."""
    hits = [r for r in rows if r.metric == "cosine" and r.mode in ("isolated", "accumulated") and r.value < threshold]
    return sorted(hits, key=lambda r: r.value)


def method_summary(rows: Sequence[Row], method: str, threshold: float) -> dict:
    """Headline numbers of one method (the console summary's columns)."""
    mine = _pick(rows, method=method, metric="cosine")
    out = {"method": method}
    logit = _pick(mine, module=LOGITS, mode="accumulated")
    out["logits_cosine"] = logit[0].value if logit else math.nan
    for mode in ("isolated", "accumulated"):
        layer_rows = _pick(mine, module=LAYER, mode=mode)
        out[f"layer_cosine_mean_{mode}"] = _mean([r.value for r in layer_rows])
        module_rows = [r for r in mine if r.mode == mode and r.module != LOGITS]
        worst = min(module_rows, key=lambda r: r.value, default=None)
        out[f"worst_{mode}"] = (worst.value, worst.layer, worst.module) if worst else None
    out["weight_cosine_mean"] = _mean([r.value for r in _pick(mine, mode="weight")])
    out["flagged"] = len(flagged(mine, threshold))
    out["compared"] = len([r for r in mine if r.mode in ("isolated", "accumulated")])
    fp = _pick(mine, mode="processed_fp")
    out["processed_fp_logits_cosine"] = fp[0].value if fp else math.nan
    return out


def summary_text(rows: Sequence[Row], methods: Sequence[str], threshold: float, header: str = "",
                 max_flagged: int = 12) -> str:
    """The console summary: a line per method, then the entries with cosine < ``threshold``."""
    lines = [header] if header else []
    lines.append(f"{'method':<12} {'logits cos':>10} {'layer cos iso':>13} {'layer cos acc':>13} "
                 f"{'weight cos':>10} {'flagged':>11}  worst output (accumulated)")
    for m in methods:
        s = method_summary(rows, m, threshold)
        worst = s["worst_accumulated"]
        where = f"{worst[0]:.4f} layer {worst[1]} {worst[2]}" if worst else "-"
        lines.append(f"{m:<12} {s['logits_cosine']:>10.4f} {s['layer_cosine_mean_isolated']:>13.4f} "
                     f"{s['layer_cosine_mean_accumulated']:>13.4f} {s['weight_cosine_mean']:>10.4f} "
                     f"{s['flagged']:>5}/{s['compared']:<5}  {where}")
    lines.append("(layer cos: mean over decoder layers of the layer-output cosine; weight cos: mean over linears)")
    lines.append(f"\nentries with cosine < {threshold} (worst first, at most {max_flagged} per method):")
    for m in methods:
        hits = flagged(_pick(rows, method=m), threshold)
        if not hits:
            lines.append(f"  {m}: none")
            continue
        lines.append(f"  {m}: {len(hits)} entries")
        for r in hits[:max_flagged]:
            lines.append(f"    layer {r.layer:>3}  {r.module:<22} {r.mode:<12} cosine {r.value:.4f}")
    return "\n".join(lines) + "\n"


def side_by_side(rows: Sequence[Row], methods: Sequence[str], modules: Sequence[str] | None = None,
                 metric: str = "cosine", fmt: str = "{:.4f}") -> str:
    """A Markdown table: one line per (layer, module, mode), one column per method."""
    table: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r.metric == metric and (modules is None or r.module in modules):
            table[(r.layer, r.module, r.mode)][r.method] = r.value
    head = f"| layer | module | mode | {' | '.join(methods)} |"
    lines = [head, "|" + "---|" * (3 + len(methods))]
    for key in sorted(table, key=lambda k: (k[0], k[2], k[1])):
        vals = [fmt.format(table[key][m]) if m in table[key] else "" for m in methods]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {' | '.join(vals)} |")
    return "\n".join(lines) + "\n"
