"""Fast Hadamard transform along the last dimension of a tensor.

``hadamard_transform(x)`` equals ``x @ hadamard_matrix(n).T / sqrt(n)`` but costs
``O(n log n + n m)`` instead of ``O(n^2)``: with ``(m, k) = hadamard_factorization(n)`` the
last dimension is viewed as ``(m, 2**k)``, a Walsh-Hadamard butterfly (one vectorised step per
bit) applies ``sylvester(k)`` to the ``2**k`` axis, and a small dense matmul applies the core
matrix to the ``m`` axis.  Pure torch ops: differentiable, and runs on the input's device.
"""

from __future__ import annotations

import functools
import math

import torch

from rotaquant.errors import ConfigError
from rotaquant.rotation.hadamard import core_matrix, hadamard_factorization

__all__ = ["HadamardTransform", "hadamard_transform"]

_UPCAST = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=64)
def _core(m: int, device: torch.device, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """``scale * core_matrix(m)`` cached per ``(m, device, dtype, scale)``; read-only."""
    core = core_matrix(m, dtype=torch.float64) * scale
    return core.to(dtype=dtype, device=device)


def _fwht(y: torch.Tensor, k: int) -> torch.Tensor:
    """Apply ``sylvester(k)`` along the last dim of the 2-D ``y`` (``2**k`` columns).

    One vectorised butterfly stage per bit.  Without autograd the stages ping-pong between two
    scratch buffers (``out=``), which never writes into ``y`` and halves the memory traffic;
    with autograd they are built from differentiable ``stack`` ops.
    """
    rows, h = y.shape
    track = torch.is_grad_enabled() and y.requires_grad
    bufs: list[torch.Tensor | None] = [None, None]
    src, half, i = y, 1, 0
    while half < h:
        shape = (rows, h // (2 * half), 2, half)
        v = src.reshape(shape)
        a, b = v[:, :, 0], v[:, :, 1]
        if track:
            src = torch.stack((a + b, a - b), dim=2).reshape(rows, h)
        else:
            if bufs[i] is None:
                bufs[i] = torch.empty_like(y, memory_format=torch.contiguous_format)
            o = bufs[i].view(shape)
            torch.add(a, b, out=o[:, :, 0])
            torch.sub(a, b, out=o[:, :, 1])
            src, i = bufs[i], i ^ 1
        half *= 2
    return src


def hadamard_transform(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Return ``x @ hadamard_matrix(n).T`` (divided by ``sqrt(n)`` if ``normalize``).

    ``n = x.shape[-1]``; any leading shape.  float16/bfloat16 inputs are computed in float32 and
    cast back; integer inputs are computed in torch's default float dtype.  Raises
    :class:`~rotaquant.rotation.hadamard.HadamardUnavailableError` if ``n`` is not constructible.
    """
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"hadamard_transform needs a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ConfigError("hadamard_transform needs a tensor with at least one dimension")
    n = x.shape[-1]
    m, k = hadamard_factorization(n)
    out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    work_dtype = torch.float32 if out_dtype in _UPCAST else out_dtype
    lead = x.shape[:-1]
    h = 1 << k
    y = x.to(work_dtype).reshape(math.prod(lead) * m, h)
    if k:
        y = _fwht(y, k)
    scale = 1.0 / math.sqrt(n) if normalize else 1.0
    if m > 1:  # the normalisation rides along in the (cached, pre-scaled) core matrix
        y = torch.matmul(_core(m, y.device, work_dtype, scale), y.reshape(-1, m, h))
    elif normalize:
        y = y * scale
    return y.reshape(*lead, n).to(out_dtype)


class HadamardTransform(torch.nn.Module):
    """Module applying :func:`hadamard_transform` along the last dim (an online rotation).

    Has no parameters; the order ``n`` is validated when the module is built.
    """

    def __init__(self, n: int, normalize: bool = True):
        super().__init__()
        self.m, self.k = hadamard_factorization(n)
        self.n = int(n)
        self.normalize = bool(normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (last dim must equal ``n``)."""
        if x.shape[-1] != self.n:
            raise ConfigError(f"HadamardTransform({self.n}) got last dimension {x.shape[-1]}")
        return hadamard_transform(x, self.normalize)

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, k={self.k}, normalize={self.normalize}"
