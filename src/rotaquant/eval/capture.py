"""Activation capture: streaming statistics of chosen modules' inputs, outputs and weights.

:func:`capture` runs token windows through a model with forward hooks on the modules whose
names match glob patterns and keeps, per module and per tensor (``input``, ``output``,
``weight``), only running statistics, never the activations themselves:

* ``absmax``: the per-channel maximum of ``|x|`` (channels = the last dimension; for a weight
  ``[out, in]`` that is the input channel, the maximum over rows);
* ``kurtosis``: the Pearson kurtosis (3 for a Gaussian) of all the elements, from float64
  power sums shifted by the first batch's mean (so the moments do not cancel);
* ``outliers``: the share of elements with ``|x - m| > k * s``, where ``m`` and ``s`` are the
  mean and standard deviation of the element's own token (row): the outliers that hurt
  per-token quantization, well defined without a second pass.

A forward hook sees a module's input after every forward pre-hook, so a capture registered
after ``rotate`` sees ``down_proj``'s input after the online R4; capture before ``quantize``
to see full-precision activations. The hooks are removed when the capture ends, also when the
forward raises.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError

logger = logging.getLogger(__name__)

STATS = ("absmax", "kurtosis", "outliers")
WHAT = ("input", "output", "weight")


class TensorStats:
    """Running statistics of a stream of tensors whose last dimension is the channel."""

    def __init__(self, stats: Iterable[str] = STATS, outlier_k: float = 6.0):
        self.stats = tuple(stats)
        unknown = set(self.stats) - set(STATS)
        if unknown:
            raise ConfigError(f"unknown statistics {sorted(unknown)}; choose from {list(STATS)}")
        self.outlier_k = float(outlier_k)
        self.numel = 0
        self.absmax: torch.Tensor | None = None
        self._shift: float | None = None
        self._sums = torch.zeros(4, dtype=torch.float64)
        self._outliers = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold one tensor (any leading shape, channels last) into the statistics."""
        x = x.detach().reshape(-1, x.shape[-1])
        self.numel += x.numel()
        if "absmax" in self.stats:
            amax = x.abs().amax(dim=0).to("cpu", torch.float64)
            self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        if "kurtosis" in self.stats:
            xd = x.double()
            if self._shift is None:
                self._shift = xd.mean().item()
            c = xd - self._shift
            c2 = c * c
            self._sums += torch.stack([c.sum(), c2.sum(), (c2 * c).sum(), (c2 * c2).sum()]).cpu()
        if "outliers" in self.stats:
            xf = x.float()
            dev = (xf - xf.mean(dim=-1, keepdim=True)).abs()
            std = xf.std(dim=-1, keepdim=True, unbiased=False)
            self._outliers += int((dev > self.outlier_k * std).sum().item())

    @property
    def kurtosis(self) -> float:
        """Pearson kurtosis of all the elements seen (nan before any update)."""
        if "kurtosis" not in self.stats or self.numel == 0:
            return float("nan")
        m1, m2, m3, m4 = (self._sums / self.numel).tolist()
        var = m2 - m1 * m1
        if var <= 0:
            return float("nan")
        return (m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4) / var**2

    @property
    def outlier_share(self) -> float:
        """Share of elements more than ``outlier_k`` token standard deviations from the token mean."""
        if "outliers" not in self.stats or self.numel == 0:
            return float("nan")
        return self._outliers / self.numel

    def to_dict(self) -> dict:
        """Scalars and the per-channel maxima as plain Python values."""
        out = {"numel": self.numel, "kurtosis": self.kurtosis, "outlier_share": self.outlier_share,
               "outlier_k": self.outlier_k}
        if self.absmax is not None:
            out["absmax"] = self.absmax.tolist()
        return out


def match_modules(model: nn.Module, patterns: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Modules whose names match any glob pattern (``|`` also separates alternatives)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    alts = [a.strip() for p in patterns for a in p.split("|") if a.strip()]
    hits = [(n, m) for n, m in model.named_modules() if n and any(fnmatch.fnmatchcase(n, a) for a in alts)]
    if not hits:
        names = [n for n, _ in model.named_modules() if n][:8]
        raise ConfigError(f"no module of {type(model).__name__} matches {list(patterns)}; "
                          f"module names look like {names}")
    return hits


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _output_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _hook(stats: dict[str, TensorStats]):
    def hook(module, args, kwargs, output):
        if "input" in stats:
            x = _first_tensor(args, kwargs)
            if x is not None and x.is_floating_point():
                stats["input"].update(x)
        if "output" in stats:
            y = _output_tensor(output)
            if y is not None:
                stats["output"].update(y)

    return hook


def _as_windows(data: torch.Tensor) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or data.dtype not in (torch.long, torch.int32, torch.int64):
        raise ConfigError("capture data must be a tensor of token ids [windows, seqlen]")
    return data[None] if data.dim() == 1 else data


@torch.no_grad()
def capture(
    model: nn.Module,
    modules: str | Sequence[str],
    data: torch.Tensor,
    what: Sequence[str] = ("input",),
    stats: Sequence[str] = STATS,
    outlier_k: float = 6.0,
    batch_size: int = 1,
    progress: bool = False,
) -> dict[str, dict[str, TensorStats]]:
    """Statistics of the inputs/outputs/weights of the modules matching ``modules``.

    Args:
        model: a causal LM taking ``input_ids`` (not mutated: the hooks are removed on exit,
            also when a forward raises).
        modules: glob pattern(s) on module names, e.g. ``"*.layers.*.mlp.down_proj"``.
        data: token ids ``[windows, seqlen]`` (or one window ``[seqlen]``).
        what: any of ``input``, ``output``, ``weight`` (the weight needs no forward).
        stats: any of ``absmax``, ``kurtosis``, ``outliers`` (see the module docstring).
        outlier_k: the outlier threshold in token standard deviations.
        batch_size: windows per forward pass.
        progress: show a progress bar.

    Returns:
        ``{module_name: {"input": TensorStats, ...}}`` in the model's module order.
    """
    bad = set(what) - set(WHAT)
    if bad or not what:
        raise ConfigError(f"capture what={list(what)}: choose one or more of {list(WHAT)}")
    windows = _as_windows(data)
    hits = match_modules(model, modules)
    result: dict[str, dict[str, TensorStats]] = {}
    for name, module in hits:
        result[name] = {w: TensorStats(stats, outlier_k) for w in what}
        if "weight" in what:
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                result[name]["weight"].update(weight)
    needs_forward = any(w != "weight" for w in what)
    if not needs_forward:
        return result
    device = next(model.parameters()).device
    handles = []
    try:
        for name, module in hits:
            live = {w: s for w, s in result[name].items() if w != "weight"}
            handles.append(module.register_forward_hook(_hook(live), with_kwargs=True))
        for batch in tqdm(windows.split(batch_size), desc="capture", unit="batch", disable=not progress):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    logger.info("captured %s of %d modules on %d windows", "/".join(what), len(hits), len(windows))
    return result
