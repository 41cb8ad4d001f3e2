"""Fake quantization on exact integer grids, with a straight-through estimator for training.

Grids (b bits):

* symmetric: codes in ``[-2^(b-1), 2^(b-1) - 1]``, zero point 0, ``scale = clip * max|x| /
  (2^(b-1) - 1)``;
* asymmetric: codes in ``[0, 2^b - 1]``, ``scale = clip * (max(x, 0) - min(x, 0)) / (2^b - 1)``
  and an integer zero point ``round(-clip * min(x, 0) / scale)``.

Dequantized value: ``(code - zero) * scale``. Scales are computed per row of the last dim, or
per group of ``group_size`` consecutive elements. The same function serves weights ``[out,
in]`` (per output channel / per group along the input), activations ``[..., tokens, hidden]``
(per token) and the KV cache ``[batch, heads, seq, head_dim]`` (per head and token, or per
group of ``head_dim``). An all-zero row gets scale 1 and stays zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError

_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one kind of tensor. ``bits=16`` means no quantization."""

    bits: int = 16
    symmetric: bool = True
    group_size: int | None = None
    clip_ratio: float = 1.0
    version: int = 1

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not (2 <= self.bits <= 8 or self.bits == 16):
            raise ConfigError(f"bits must be in 2..8 or 16 (no quantization), got {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size <= 0):
            raise ConfigError(f"group_size must be a positive integer or None, got {self.group_size!r}")
        if not 0 < float(self.clip_ratio) <= 1:
            raise ConfigError(f"clip_ratio must be in (0, 1], got {self.clip_ratio}")

    @property
    def enabled(self) -> bool:
        return self.bits < 16

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantSpec:
        return cls(**data)

    def __str__(self) -> str:
        if not self.enabled:
            return "fp"
        group = f"g{self.group_size}" if self.group_size else "row"
        clip = f" clip{self.clip_ratio:g}" if self.clip_ratio < 1 else ""
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} {group}{clip}"


def grouped(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``x`` [..., n] as [..., n // g, g] (g = group size, or n)."""
    n = x.shape[-1]
    g = spec.group_size or n
    if n % g:
        raise ConfigError(f"group size {g} does not divide the last dimension {n}")
    return x.reshape(*x.shape[:-1], n // g, g)


def params_from_range(xmin: torch.Tensor, xmax: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) for ranges ``[xmin, xmax]`` (already clipped), elementwise."""
    if spec.symmetric:
        amax = torch.maximum(xmax.abs(), xmin.abs())
        scale = amax / spec.qmax
        scale = torch.where(amax > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale)
    xmin, xmax = xmin.clamp(max=0), xmax.clamp(min=0)
    scale = (xmax - xmin) / spec.qmax
    scale = torch.where(xmax > xmin, scale, torch.ones_like(scale))
    return scale, torch.round(-xmin / scale)


def quant_params(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic (scale, zero) of ``x`` per row/group, shaped [..., groups, 1], in float32+."""
    g = grouped(x, spec)
    work = g.float() if g.dtype in _HALF else g
    clip = float(spec.clip_ratio)
    return params_from_range(work.amin(-1, keepdim=True) * clip, work.amax(-1, keepdim=True) * clip, spec)


def quantize_to_int(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes of ``x`` (grouped view [..., groups, g]) on the spec's grid."""
    return torch.clamp(torch.round(x / scale) + zero, spec.qmin, spec.qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Values of integer codes: ``(q - zero) * scale``."""
    return (q - zero) * scale


def fake_quantize(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | None = None,
                  zero: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` (same shape and dtype). Identity when ``spec`` is disabled.

    Parameters are computed from ``x`` (dynamic) unless ``scale`` and ``zero`` are given in the
    grouped shape ``[..., groups, 1]``.
    """
    if not spec.enabled:
        return x
    if scale is None:
        scale, zero = quant_params(x, spec)
    g = grouped(x, spec)
    work = g.to(scale.dtype)
    out = dequantize(quantize_to_int(work, scale, zero, spec), scale, zero)
    return out.reshape(x.shape).to(x.dtype)


def fake_quantize_ste(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """:func:`fake_quantize` forward, identity gradient (straight-through estimator)."""
    if not spec.enabled:
        return x
    return x + (fake_quantize(x.detach(), spec) - x).detach()


class ActQuantizer(nn.Module):
    """Per-token (last dim) dynamic fake quantizer for activations and the KV cache."""

    def __init__(self, spec: QuantSpec, ste: bool = False):
        super().__init__()
        self.spec, self.ste = spec, ste

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.enabled:
            return x
        return fake_quantize_ste(x, self.spec) if self.ste else fake_quantize(x, self.spec)

    def extra_repr(self) -> str:
        return f"{self.spec}, ste={self.ste}"
