"""Quantization specs and fake quantization on exact integer grids.

Grid convention (``b`` bits, ``c`` = ``clip_ratio``), computed per row of the last dimension or
per group of ``group_size`` consecutive elements of it:

* **symmetric**: codes ``q`` in ``[-2^(b-1), 2^(b-1) - 1]``, zero point 0, and one of two
  scales (``sym_grid``):

  - ``restricted`` (default): ``scale = c * max|x| / (2^(b-1) - 1)`` (int4: ``amax / 7``).
    Dynamic parameters therefore never produce the code ``-2^(b-1)``; it is reached only when
    fixed parameters meet a larger value (as in GPTQ, where error feedback moves weights after
    their scales were fixed). QuaRot's grid: 15 of the 16 int4 codes in use.
  - ``full``: ``scale = c * max|x| / ((2^b - 1) / 2)`` (int4: ``amax / 7.5``, a 6.7% finer
    step), compressed-tensors' convention (``calculate_qparams``: ``amax / (bit_range / 2)``):
    the most negative value maps to ``-2^(b-1)``, the most positive one to ``2^(b-1) - 1/2``,
    which rounds up and is clamped to ``2^(b-1) - 1``. All 16 int4 codes are used.
* **float** (``type="float"``, 8 bits): FP8 e4m3 (``float8_e4m3fn``), symmetric,
  ``scale = c * max|x| / 448`` (448: the largest finite e4m3 value; ``sym_grid`` does not
  apply); a code is ``x / scale`` rounded to the nearest e4m3 value (round half to even).
* **asymmetric**: codes in ``[0, 2^b - 1]``, ``scale = c * (max - min) / (2^b - 1)`` where the
  range is first widened to contain 0 (``min <= 0 <= max``, the GPTQ convention, so 0 is always
  exactly representable), and an integer zero point ``zero = round(-c * min / scale)`` in
  ``[0, 2^b - 1]``.

Quantize: ``q = clamp(round(x / scale) + zero, qmin, qmax)``; dequantize: ``(q - zero) * scale``.
A row or group whose range is 0 (all zeros) gets ``scale = 1`` (and ``zero = 0``), so it
round-trips to zeros without NaN.

One function serves every tensor: weights ``[out, in]`` (``group_size=None`` = per output
channel, else per group along the input dim), activations ``[..., tokens, hidden]`` (per
token, or per group of the hidden dim) and the KV cache ``[batch, heads, seq, head_dim]``
(``group_size=None`` = one scale per head and token over ``head_dim``, else per group of
``head_dim``). Parameters are computed in float32 (float64 for float64 inputs) and the output
keeps the dtype of the input.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import asdict, dataclass, fields

import torch

from ..errors import ConfigError
from ..stages.base import Stage

logger = logging.getLogger(__name__)

SPEC_VERSION = 1
NUMBER_TYPES = ("int", "float")
FP8_E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
SYM_GRIDS = ("restricted", "full")


def _as_int(value) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def _as_real(value) -> float | None:
    """``value`` as a Python float if it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one kind of tensor.

    Attributes:
        bits: 2..8, or 16 for "no quantization".
        symmetric: symmetric grid (zero point 0) or asymmetric grid with an integer zero point.
        group_size: ``None`` = one scale per row over the whole last dim; else one scale per
            group of that many consecutive elements of the last dim.
        clip_ratio: in (0, 1]; the range (max|x|, or min/max) is multiplied by it.
        version: format version of the spec (currently 1).
        type: ``"int"`` (integer grid) or ``"float"``: FP8 e4m3 codes (8 bits, symmetric), the
            compressed-tensors ``float`` type that ``torch._scaled_mm`` multiplies.
        sym_grid: the scale of a symmetric grid: ``"restricted"`` (``amax / (2^(b-1) - 1)``,
            QuaRot's) or ``"full"`` (``amax / ((2^b - 1) / 2)``, compressed-tensors'); see the
            module docstring. Asymmetric grids have one definition and ignore it.
    """

    bits: int = 16
    symmetric: bool = True
    group_size: int | None = None
    clip_ratio: float = 1.0
    version: int = SPEC_VERSION
    type: str = "int"
    sym_grid: str = "restricted"

    def __post_init__(self):
        bits, group, clip, version = (_as_int(self.bits), _as_int(self.group_size),
                                      _as_real(self.clip_ratio), _as_int(self.version))
        if bits is None or not (2 <= bits <= 8 or bits == 16):
            raise ConfigError(f"bits must be in 2..8 or 16 (no quantization), got {self.bits!r}")
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"symmetric must be a bool, got {self.symmetric!r}")
        if self.group_size is not None and (group is None or group <= 0):
            raise ConfigError(f"group_size must be a positive integer or None, got {self.group_size!r}")
        if clip is None or not (math.isfinite(clip) and 0 < clip <= 1):
            raise ConfigError(f"clip_ratio must be in (0, 1], got {self.clip_ratio!r}")
        if self.sym_grid not in SYM_GRIDS:
            raise ConfigError(f"sym_grid must be one of {SYM_GRIDS}, got {self.sym_grid!r}")
        if self.type not in NUMBER_TYPES:
            raise ConfigError(f"type must be one of {NUMBER_TYPES}, got {self.type!r}")
        if self.type == "float" and bits != 16 and (bits != 8 or not self.symmetric):
            raise ConfigError(f"type 'float' is FP8 e4m3: it needs bits=8 and symmetric=True, got bits={self.bits!r}, "
                              f"symmetric={self.symmetric!r}")
        if version is None or not 1 <= version <= SPEC_VERSION:
            raise ConfigError(f"unsupported QuantSpec version {self.version!r} (this rotaquant reads 1..{SPEC_VERSION})")
        # store plain Python numbers (numpy scalars in, JSON-friendly values out)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "group_size", group)
        object.__setattr__(self, "clip_ratio", clip)
        object.__setattr__(self, "version", version)

    @property
    def enabled(self) -> bool:
        """Whether this spec quantizes at all (``bits < 16``)."""
        return self.bits < 16

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        if self.type == "float":
            return -FP8_E4M3_MAX
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        if self.type == "float":
            return FP8_E4M3_MAX
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def range_divisor(self) -> float:
        """What the range (``max|x|`` symmetric, ``max - min`` asymmetric) is divided by to give
        the scale: ``2^(b-1) - 1`` (restricted), ``(2^b - 1) / 2`` (full), ``2^b - 1``
        (asymmetric) or 448 (FP8 e4m3, whose largest finite value ``max|x|`` maps to)."""
        if self.type == "float":
            return FP8_E4M3_MAX
        if not self.symmetric:
            return float(self.qmax)
        if self.sym_grid == "full":
            return (2**self.bits - 1) / 2
        return float(self.qmax)

    def to_dict(self) -> dict:
        """Plain-dict form (JSON/YAML friendly). ``sym_grid`` is left out when it is the default
        ``"restricted"``, so such specs read the same in rotaquant versions without the key."""
        data = asdict(self)
        if data["sym_grid"] == "restricted":
            del data["sym_grid"]
        if data["type"] == "int":  # likewise: integer specs read as before the key existed
            del data["type"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> QuantSpec:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a QuantSpec must be read from a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown QuantSpec keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def __str__(self) -> str:
        if not self.enabled:
            return "fp16+ (no quantization)"
        group = f"g{self.group_size}" if self.group_size else "per-row"
        clip = f" clip{self.clip_ratio:g}" if self.clip_ratio < 1 else ""
        if self.type == "float":
            return f"fp8e4m3 {group}{clip}"
        grid = " full" if self.symmetric and self.sym_grid == "full" else ""
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'}{grid} {group}{clip}"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Dtype used for quantization arithmetic on ``x``: float64 for float64, else float32."""
    if not x.is_floating_point():
        raise TypeError(f"quantization needs a floating-point tensor, got {x.dtype}")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def to_groups(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``x`` ``[..., n]`` as ``[..., n // g, g]`` (``g`` = group size, or ``n``).

    Raises :class:`ConfigError` naming both numbers when ``g`` does not divide ``n``.
    """
    if x.dim() == 0:
        raise ConfigError("cannot quantize a 0-d tensor: there is no last dimension")
    n = x.shape[-1]
    g = spec.group_size or n
    if g == 0 or n % g:
        raise ConfigError(f"group_size {spec.group_size} does not divide the last dimension {n}")
    return x.reshape(*x.shape[:-1], n // g, g)



def params_from_range(xmin: torch.Tensor, xmax: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` for the (already clipped) ranges ``[xmin, xmax]``, elementwise.

    This is the single place where grids are defined; RTN, its clipping search and GPTQ all
    call it. Ranges of width 0 give ``scale = 1`` and ``zero = 0``.
    """
    if spec.symmetric:  # FP8 specs are symmetric too (max|x| maps to 448)
        amax = torch.maximum(xmin.abs(), xmax.abs())
        scale = amax / spec.range_divisor
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale)
    lo, hi = xmin.clamp(max=0), xmax.clamp(min=0)
    scale = (hi - lo) / spec.qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, spec.qmax)
    return scale, zero


def quant_params(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic ``(scale, zero)`` of ``x`` ``[..., n]``, one per row (and group) of the last dim.

    Both are shaped ``[..., G, 1]`` with ``G = n // group_size`` (``G = 1`` when ungrouped),
    i.e. they broadcast against ``to_groups(x, spec)``; dtype float32 (float64 for float64
    ``x``). ``zero`` holds integer values (all zeros for symmetric specs).
    """
    g = to_groups(x, spec).to(compute_dtype(x))
    lo, hi = torch.aminmax(g, dim=-1, keepdim=True)
    clip = float(spec.clip_ratio)
    return params_from_range(lo * clip, hi * clip, spec)


def _round(v: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``v`` rounded to the grid's codes: integers, or the nearest e4m3 value (saturated at
    +-448, as a cast to ``float8_e4m3fn`` alone would give NaN on CUDA) for float specs."""
    if spec.type == "float":
        return v.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).to(v.dtype)
    return torch.round(v)


def _codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer-valued float codes ``clamp(round(x / scale) + zero, qmin, qmax)`` (e4m3 values
    for float specs)."""
    return torch.clamp(_round(x / scale, spec) + zero, spec.qmin, spec.qmax)


def quantize_to_int(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes (``torch.int32``) of ``x`` on ``spec``'s grid; ``torch.float8_e4m3fn``
    codes for float specs.

    Elementwise with broadcasting: pass ``x`` in a shape that broadcasts against ``scale`` and
    ``zero`` (for :func:`quant_params` output, the grouped view ``to_groups(x, spec)``).
    """
    work = x.to(scale.dtype) if x.dtype != scale.dtype else x
    return _codes(work, scale, zero, spec).to(torch.float8_e4m3fn if spec.type == "float" else torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec | None = None) -> torch.Tensor:
    """Values ``(q - zero) * scale`` of integer codes ``q``, in ``scale``'s dtype.

    ``spec`` is accepted for symmetry with :func:`quantize_to_int`; the formula does not need it.
    """
    return (q.to(scale.dtype) - zero) * scale


def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Elementwise fake quantization of ``x`` with given parameters, in ``scale``'s dtype.

    Same grid as :func:`quantize_to_int` followed by :func:`dequantize`, without the detour
    through an integer dtype (used by GPTQ's column loop and the RTN clipping search).
    """
    work = x.to(scale.dtype) if x.dtype != scale.dtype else x
    return (_codes(work, scale, zero, spec) - zero) * scale


def fake_quantize(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | None = None,
                  zero: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize ``x`` ``[..., n]``; same shape and dtype. Identity when disabled.

    Parameters are computed dynamically from ``x`` (:func:`quant_params`) unless ``scale`` is
    given, in a shape broadcastable against ``to_groups(x, spec)`` (e.g. ``[..., G, 1]``);
    a missing ``zero`` then means 0. The arithmetic runs in ``scale``'s dtype (float32 for
    fp16/bf16/fp32 inputs with dynamic parameters) and the result is cast back to ``x.dtype``.
    With dynamic parameters on CUDA a Triton kernel computes the same values in one pass where it
    applies (see :mod:`rotaquant.kernels.fake_quant`).
    """
    if not spec.enabled:
        return x
    if scale is None and x.is_cuda:
        from ..kernels.fake_quant import kernel_fake_quantize

        out = kernel_fake_quantize(x, spec)
        if out is not None:
            return out
    xg = to_groups(x, spec)
    if scale is None:
        scale, zero = quant_params(x, spec)  # shaped for xg by construction
    else:
        zero = torch.zeros_like(scale) if zero is None else zero
        for name, t in (("scale", scale), ("zero", zero)):  # caller-given parameters: check their shape
            try:
                ok = torch.broadcast_shapes(xg.shape, t.shape) == xg.shape
            except RuntimeError:
                ok = False
            if not ok:
                raise ConfigError(f"{name} of shape {tuple(t.shape)} does not broadcast against the grouped "
                                  f"input of shape {tuple(xg.shape)}")
    out = quantize_dequantize(xg, scale, zero, spec)
    return out.reshape(x.shape).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """``fake_quantize(x)`` forward (exactly its values, one kernel launch on CUDA), identity
    backward. The usual ``x + (fq(x) - x).detach()`` costs two more passes over ``x`` (a
    subtraction and an addition, each a launch) and can differ from ``fq(x)`` in the last bit."""

    @staticmethod
    def forward(ctx, x, spec):
        return fake_quantize(x, spec)  # grad mode is off here: the Triton kernel applies on CUDA

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize_ste(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """:func:`fake_quantize` forward (the same values) with a straight-through (identity)
    gradient: ``d/dx`` of any loss passes through the quantizer unchanged."""
    if not spec.enabled:
        return x
    if not (torch.is_grad_enabled() and x.requires_grad):
        return fake_quantize(x, spec)
    return _StraightThrough.apply(x, spec)


def fake_quantize_scale_grad(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """:func:`fake_quantize` forward; backward through the dynamic scale as well (LSQ-style).

    Rounding passes gradients straight through, but the scale stays a function of ``x``
    (``max|x| / qmax`` per row or group), so the gradient also carries ``round(v) - v`` times
    the derivative of the scale, which points at the row's largest entries: it tells a
    rotation which outliers cost resolution. Same values as :func:`fake_quantize`.
    """
    if not spec.enabled:
        return x
    g = to_groups(x, spec).to(compute_dtype(x))
    scale, zero = quant_params(x, spec)  # not detached: the gradient reaches x through the scale
    zero = zero.detach()
    v = g / scale
    q = torch.clamp(v + (_round(v, spec) - v).detach() + zero, spec.qmin, spec.qmax)
    return ((q - zero) * scale).reshape(x.shape).to(x.dtype)


def ste_quantizer(mode: str | bool):
    """The differentiable fake quantizer of a gradient ``mode``: ``"identity"`` (or True), the
    plain straight-through estimator, or ``"scale"``, which also differentiates the scale."""
    if mode in (True, "identity"):
        return fake_quantize_ste
    if mode == "scale":
        return fake_quantize_scale_grad
    raise ConfigError(f"unknown straight-through mode {mode!r}; use 'identity' or 'scale'")


class SharedResult:
    """One quantized result for several quantizer stages that run one after another on the very
    same input tensor (q/k/v, or gate/up, quantizing one normed hidden state): the first computes
    and keeps it, the other ``users - 1`` take it; then it is released. A different tensor, or the
    same one modified in place since (its version counter moved), is computed afresh. Tensors
    made under ``torch.inference_mode`` keep no version counter: for them identity alone decides
    (the model code between sibling linears does not modify their input in place)."""

    def __init__(self, users: int):
        self.users = users
        self._release()

    def _release(self) -> None:
        self.x = self.out = self.version = None
        self.left = 0

    @staticmethod
    def _version(x: torch.Tensor) -> int | None:
        return None if x.is_inference() else x._version

    def get(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.left and x is self.x and self._version(x) == self.version:
            out, self.left = self.out, self.left - 1
            if not self.left:
                self._release()
            return out
        return None

    def put(self, x: torch.Tensor, out: torch.Tensor) -> None:
        self.x, self.out, self.version, self.left = x, out, self._version(x), self.users - 1

    def compute(self, x: torch.Tensor, fn):
        """``fn(x)``, or the result kept from a sibling's call on the very same ``x``."""
        out = self.get(x)
        if out is None:
            out = fn(x)
            self.put(x, out)
        return out


def share_result(members: list, specs: list[QuantSpec], attr: str) -> bool:
    """Give ``members`` (the quantizers of one input) one :class:`SharedResult` in their attribute
    ``attr`` when there are several and their ``specs`` agree; returns whether they share."""
    if len(members) < 2 or any(spec != specs[0] for spec in specs):
        return False
    holder = SharedResult(len(members))
    for member in members:
        setattr(member, attr, holder)
    return True


class ActQuantizer(Stage):
    """Dynamic fake quantizer for activations and the KV cache, over the last dimension.

    Activations ``[..., tokens, hidden]`` get one scale per token (or per group of ``hidden``);
    keys/values ``[batch, heads, seq, head_dim]`` one per head and token (or per group of
    ``head_dim``). Identity when ``spec`` is not enabled. With ``ste`` the quantizer is
    differentiable (for rotation learning): True or ``"identity"`` passes gradients straight
    through, ``"scale"`` also differentiates the dynamic scale (see :func:`ste_quantizer`).
    As a stage it runs after every rotation at its site.
    """

    kind = "quantizer"
    order = 100

    def __init__(self, spec: QuantSpec, ste: bool | str = False):
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise ConfigError(f"ActQuantizer needs a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self.ste = ste if isinstance(ste, str) else bool(ste)
        self._fq = ste_quantizer(ste) if ste else fake_quantize
        self.shared: SharedResult | None = None  # set for quantizers of one shared input (same spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` per row of its last dim (or per group)."""
        if not self.spec.enabled:
            return x
        if self.shared is None or x.requires_grad:
            return self._fq(x, self.spec)
        return self.shared.compute(x, lambda t: self._fq(t, self.spec))

    def extra_repr(self) -> str:
        return f"{self.spec}, ste={self.ste}"
