"""Fast Hadamard transform along the last dimension of a tensor.

``hadamard_transform(x)`` equals ``x @ hadamard_matrix(n).T / sqrt(n)`` but costs
``O(n (m + sum of factor sizes))`` instead of ``O(n^2)``.  With ``(m, k) =
hadamard_factorization(n)`` the matrix is ``kron(core(m), sylvester(k))``, and ``sylvester(k)``
is itself ``kron(sylvester(k1), sylvester(k2), ...)`` for ``k = k1 + k2 + ...``.  So the last
dimension is viewed as ``(m, 2**k1, 2**k2, ...)`` and each axis is multiplied by its small
matrix (at most 64 x 64 for the Sylvester factors): one batched matmul per axis instead of one
launch per butterfly bit.

Two backends compute the same values:

* ``"reference"``: the pure torch path above (any device and float dtype, differentiable by
  autograd).  float16/bfloat16 are computed in float32 and rounded once.
* ``"triton"``: :mod:`rotaquant.kernels` (one pass over memory, CUDA only), used automatically
  for float16/bfloat16/float32 CUDA tensors when Triton is installed and the order is supported.

The backend is picked per call: the ``backend`` argument if given, else the environment variable
``ROTAQUANT_HADAMARD_BACKEND`` (``auto``, ``reference`` or ``triton``), else ``auto``.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import torch

from rotaquant.errors import ConfigError
from rotaquant.rotation.hadamard import core_matrix, hadamard_factorization, sylvester

__all__ = ["BACKENDS", "hadamard_reference", "hadamard_transform"]

BACKENDS = ("auto", "reference", "triton")
BACKEND_ENV = "ROTAQUANT_HADAMARD_BACKEND"
_KERNEL_CHOICES = ("auto", "triton", "")  # values of BACKEND_ENV under which the kernel runs when it can
MAX_FACTOR_BITS = 6  # Sylvester factors of at most 64 x 64: few matmuls, few flops per element

_UPCAST = (torch.float16, torch.bfloat16)


def sylvester_bits(k: int, max_bits: int = MAX_FACTOR_BITS) -> tuple[int, ...]:
    """Split ``k`` into as few parts of at most ``max_bits`` as possible, as even as possible.

    ``sylvester(k) == kron(sylvester(b0), sylvester(b1), ...)`` for the returned ``(b0, b1, ...)``.
    """
    if k <= 0:
        return ()
    parts = -(-k // max_bits)
    base, extra = divmod(k, parts)
    return tuple(base + 1 if i < extra else base for i in range(parts))


@functools.lru_cache(maxsize=128)
def _axis_matrices(
    n: int, device: torch.device, dtype: torch.dtype, normalize: bool, transpose: bool
) -> tuple[torch.Tensor, ...]:
    """The per-axis matrices ``A_i`` with ``H (/ sqrt n) = kron(A_0, A_1, ...)``, cached; read-only.

    Axis 0 is the core (when ``m > 1``), then the Sylvester factors.  With ``transpose`` the
    core is transposed (Sylvester factors are symmetric), giving ``H.T``.  The normalisation
    ``1 / sqrt(n)`` is folded into the first matrix, computed in float64.
    """
    m, k = hadamard_factorization(n)
    mats = []
    if m > 1:
        core = core_matrix(m)
        mats.append(core.T if transpose else core)
    mats.extend(sylvester(b) for b in sylvester_bits(k))
    if not mats:  # n == 1
        mats.append(torch.ones(1, 1, dtype=torch.float64))
    if normalize:
        mats[0] = mats[0] / math.sqrt(n)
    return tuple(a.to(device=device, dtype=dtype).contiguous() for a in mats)


def hadamard_reference(x: torch.Tensor, normalize: bool = True, transpose: bool = False) -> torch.Tensor:
    """The pure-torch transform: ``x @ H.T`` (``x @ H`` if ``transpose``), ``/ sqrt(n)`` if ``normalize``.

    Same conventions as :func:`hadamard_transform` (which validates the input); differentiable.
    """
    n = x.shape[-1]
    out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    work_dtype = torch.float32 if out_dtype in _UPCAST else out_dtype
    lead = x.shape[:-1]
    mats = _axis_matrices(n, x.device, work_dtype, bool(normalize), bool(transpose))
    sizes = [a.shape[0] for a in mats]
    y = x.to(work_dtype).reshape(-1, n)
    rows = y.shape[0]
    for i, a in enumerate(mats):
        before, after = math.prod(sizes[:i]), math.prod(sizes[i + 1 :])
        if sizes[i] == 1:
            y = y * a[0, 0]
        elif after == 1:  # the last axis: one plain GEMM
            y = y.reshape(-1, sizes[i]) @ a.T
        else:  # an inner axis: a broadcast batched GEMM over (rows * before) blocks
            y = torch.matmul(a, y.reshape(rows * before, sizes[i], after))
    return y.reshape(*lead, n).to(out_dtype)


def _backend(x: torch.Tensor, backend: str | None) -> str:
    """The backend this call runs on: ``"reference"`` or ``"triton"``."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto") or "auto"
    if choice not in BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ConfigError(f"unknown Hadamard backend {choice!r} (from {source}); choose one of {', '.join(BACKENDS)}")
    if choice == "reference":
        return choice
    from rotaquant import kernels

    supported = kernels.hadamard_supported(x)
    if choice == "triton" and not supported:
        raise ConfigError(
            f"the Triton Hadamard kernel cannot run this input ({kernels.unsupported_reason(x)}); "
            "use backend='auto' or 'reference'"
        )
    return "triton" if supported else "reference"


def _fast_kernel(x: torch.Tensor, normalize: bool) -> torch.Tensor | None:
    """The kernel's launch without the per-call checks, for a contiguous CUDA tensor whose call
    kind (order, dtype, normalisation, device) the kernel has run before under the automatic
    backend (:func:`rotaquant.kernels.hadamard_triton.fast_transform`); None otherwise. Host time
    per call is what decode-size transforms cost (issue 11)."""
    kernels = sys.modules.get("rotaquant.kernels.hadamard_triton")  # loaded by the first kernel call
    if kernels is None or not x.is_contiguous() or (x.requires_grad and torch.is_grad_enabled()):
        return None
    if os.environ.get(BACKEND_ENV, "auto") not in _KERNEL_CHOICES:
        return None
    return kernels.fast_transform(x, bool(normalize))


def hadamard_transform(x: torch.Tensor, normalize: bool = True, *, backend: str | None = None) -> torch.Tensor:
    """Return ``x @ hadamard_matrix(n).T`` (divided by ``sqrt(n)`` if ``normalize``).

    ``n = x.shape[-1]``; any leading shape.  float16/bfloat16 inputs are computed in float32 and
    cast back; integer inputs are computed in torch's default float dtype.  ``backend`` is
    ``"auto"`` (Triton kernel for CUDA float16/bfloat16/float32 when available, else the torch
    reference), ``"reference"`` or ``"triton"``; ``None`` reads ``ROTAQUANT_HADAMARD_BACKEND``.
    Differentiable on both backends.  Raises
    :class:`~rotaquant.rotation.hadamard.HadamardUnavailableError` if ``n`` is not constructible.
    """
    if backend is None and type(x) is torch.Tensor and x.is_cuda:  # the decode-size hot path
        y = _fast_kernel(x, normalize)
        if y is not None:
            return y
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"hadamard_transform needs a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ConfigError("hadamard_transform needs a tensor with at least one dimension")
    hadamard_factorization(x.shape[-1])  # a clear error for an order with no construction
    if _backend(x, backend) == "triton":
        from rotaquant.kernels import triton_transform

        return triton_transform(x, normalize)
    return hadamard_reference(x, normalize)
