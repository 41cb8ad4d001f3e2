"""The PNGs of one ``rotaquant analyze`` run (drawn by :mod:`rotaquant.jobs.plots`)."""

from __future__ import annotations

import os
from collections import defaultdict

from ..eval.analyze import AnalysisResult, AnalyzeConfig, bits_label
from ..eval.layerwise import LAYER, Row


def _per_layer(rows: list[Row], mode: str, metric: str, modules: list[str]) -> dict:
    out: dict[str, dict[str, dict[int, float]]] = {m: defaultdict(dict) for m in modules}
    for r in rows:
        if r.mode == mode and r.metric == metric and r.module in out:
            out[r.module][r.method][r.layer] = r.value
    return out


def plot_layers(result: AnalysisResult, cfg: AnalyzeConfig) -> list[int]:
    """The layers whose channel magnitudes are plotted: configured, else the middle layer, the
    layer where the first method's first input site (the attention input) has the largest
    max |x|, and the layer where any of its input sites has."""
    if cfg.plot_layers is not None:
        return [i for i in cfg.plot_layers if 0 <= i < result.layers]
    picks = [result.layers // 2]
    maxima = [r for r in result.rows if r.method == cfg.methods[0] and r.metric == "max_abs"]
    for rows in ([r for r in maxima if r.module == result.sites[0]], maxima):
        if rows:
            picks.append(max(rows, key=lambda r: r.value).layer)
    return sorted(set(picks))


def write_plots(result: AnalysisResult, cfg: AnalyzeConfig, folder: os.PathLike) -> list[str]:
    """The PNGs of one analysis into ``folder``; returns the file names."""
    from .plots import plot_channel_magnitude, plot_per_layer

    names = []
    label = bits_label(cfg)
    for layer in plot_layers(result, cfg):
        series = {}
        for method, per in result.absmax.items():
            series[method] = {s: v for n, v in per.items() for s in result.sites if n.endswith(f".{layer}.{s}")}
        name = f"channel_magnitude_layer{layer}.png"
        plot_channel_magnitude(series, os.path.join(folder, name),
                               f"{cfg.model}: per-channel max |x| of decoder layer {layer}'s linear inputs, full "
                               "precision, after each method's processing (rotated: norm gains folded "
                               "into the next linears, then rotated)")
        names.append(name)
    kurt = _per_layer(result.rows, "activation", "kurtosis", result.sites)
    plot_per_layer({f"input of {k}": v for k, v in kurt.items()}, os.path.join(folder, "kurtosis.png"),
                   "kurtosis", f"{cfg.model}: kurtosis of the linear inputs per layer", log=True, ncols=2)
    names.append("kurtosis.png")
    modules = list(dict.fromkeys(r.module for r in result.rows if r.mode in cfg.modes and r.layer < result.layers
                                 and "." not in r.module and r.module != LAYER)) + [LAYER]
    panels = {}
    for mode in cfg.modes:
        for module, per in _per_layer(result.rows, mode, "cosine", modules).items():
            panels[f"{module} output, {mode}"] = per
    plot_per_layer(panels, os.path.join(folder, "cosine.png"), "cosine vs FP",
                   f"{cfg.model} {label}: output cosine per layer", ncols=len(modules))
    names.append("cosine.png")
    return names
