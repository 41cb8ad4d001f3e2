"""PNG plots of the analysis (matplotlib, the ``plot`` extra, imported only when a plot is made).

* :func:`plot_channel_magnitude`: per-channel max |x| of one layer's linear inputs, one row per
  method: the picture of the QuaRot/SpinQuant papers (a few huge channels before rotation, flat
  channels after).
* :func:`plot_per_layer`: one metric per decoder layer, a line per method, a panel per module
  (kurtosis of the linear inputs, or the analysis cosine).

Every PNG is rendered in memory and written atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import RotaquantError
from ..io import atomic_write_bytes


class PlotDependencyError(RotaquantError, ImportError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotDependencyError(
            "plots need matplotlib: pip install 'rotaquant[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_channel_magnitude(series: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                           title: str = "") -> Path:
    """Per-channel max |x|: ``series[method][input name] = values per channel``.

    One row of panels per method, one column per input; the y-axes of a column are shared, so
    the height of the bars compares across methods. Returns the written path.
    """
    plt = _pyplot()
    methods = list(series)
    inputs = list(dict.fromkeys(k for m in methods for k in series[m]))
    fig, axes = plt.subplots(len(methods), len(inputs), figsize=(4.2 * len(inputs), 2.1 * len(methods)),
                             sharey="col", squeeze=False)
    for r, method in enumerate(methods):
        for c, name in enumerate(inputs):
            ax = axes[r][c]
            values = series[method].get(name)
            if values is not None:
                ax.bar(range(len(values)), values, width=1.0, color=f"C{r}")
                peak = max(values) if len(values) else 0.0
                ax.text(0.98, 0.92, f"max {peak:.3g}", transform=ax.transAxes, ha="right", va="top", fontsize=8)
            if r == 0:
                ax.set_title(f"input of {name}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{method}\nmax |x|", fontsize=9)
            if r == len(methods) - 1:
                ax.set_xlabel("channel", fontsize=8)
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_layer(values: Mapping[str, Mapping[str, Mapping[int, float]]], path: str | os.PathLike,
                   ylabel: str, title: str = "", log: bool = False, ncols: int = 3) -> Path:
    """``values[panel][method][layer] = value``: a panel per key, a line per method.

    ``log`` puts the y-axis on a log scale. Returns the written path.
    """
    plt = _pyplot()
    panels = list(values)
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.0 * nrows), squeeze=False)
    methods = list(dict.fromkeys(m for p in panels for m in values[p]))
    # methods that coincide (e.g. two with the same rotation) must stay visible: thinner, dashed
    styles = [("-", 2.2, 4.5), ("--", 1.6, 3.5), ("-.", 1.3, 2.5), (":", 1.1, 2.0)]
    for k, panel in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        for j, method in enumerate(methods):
            series = values[panel].get(method)
            if not series:
                continue
            layers = sorted(series)
            style, width, marker = styles[j % len(styles)]
            ax.plot(layers, [series[i] for i in layers], linestyle=style, marker="o", markersize=marker,
                    linewidth=width, color=f"C{j}", label=method)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("decoder layer", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
