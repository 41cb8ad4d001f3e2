"""Hadamard transform fused with dynamic quantization (what R4 + activation quantizer and R3 +
KV quantizer compute), with the torch reference as fallback.

Both functions quantize ``hadamard_transform(x, normalize)`` (rounded to ``x.dtype`` first) on
the grid of :mod:`rotaquant.quant.quantizer`, per row of the last dim or per group of
``spec.group_size``.  The Triton kernel runs when :func:`rotaquant.kernels.hadamard_supported`
holds, the spec is a 2..8-bit integer one (either symmetric grid), and the groups fit the kernel
(a power-of-two group size, or one group per row); otherwise the reference runs.  ``backend``
works as in :func:`~rotaquant.rotation.transform.hadamard_transform`.
"""

from __future__ import annotations

import torch

from rotaquant.errors import ConfigError
from rotaquant.quant.quantizer import (
    QuantSpec,
    fake_quantize_ste,
    quant_params,
    quantize_to_int,
    to_groups,
)
from rotaquant.rotation.transform import _backend, hadamard_transform

__all__ = ["fusion_applies", "hadamard_fake_quantize", "hadamard_quantize"]


def _use_kernel(x: torch.Tensor, spec: QuantSpec, backend: str | None) -> bool:
    if _backend(x, backend) != "triton":
        return False
    from .hadamard_triton import fused_supported

    ok = fused_supported(x.shape[-1], spec)
    if backend == "triton" and not ok:
        raise ConfigError(f"the fused kernel cannot compute {spec} groups for order {x.shape[-1]}; it needs an "
                          "integer grid and a power-of-two group size; or use backend='auto'")
    return ok


def fusion_applies(x: torch.Tensor, spec: QuantSpec) -> bool:
    """Whether :func:`hadamard_fake_quantize` of ``x`` runs the fused kernel *and* equals, bit for
    bit, what the automatic backends give for ``fake_quantize(hadamard_transform(x), spec)``: a
    CUDA tensor without a gradient (with one, the two stages run: a learning quantizer
    differentiates on its own), the Hadamard kernel chosen for it, a spec the fused
    kernel covers, and neither backend forced to the reference by its environment variable."""
    import os

    from .fake_quant import BACKEND_ENV

    if not x.is_cuda or not isinstance(spec, QuantSpec) or not spec.enabled or spec.type != "int":
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    if os.environ.get(BACKEND_ENV, "auto") == "reference":
        return False
    return _use_kernel(x, spec, None)


def _check(x: torch.Tensor, spec: QuantSpec) -> None:
    if not isinstance(spec, QuantSpec):
        raise ConfigError(f"expected a QuantSpec, got {type(spec).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() == 0 or not x.is_floating_point():
        raise ConfigError("hadamard quantization needs a floating-point tensor with a last dimension")
    n, g = x.shape[-1], spec.group_size
    if g and n % g:
        raise ConfigError(f"group_size {g} does not divide the last dimension {n}")


def hadamard_quantize(x: torch.Tensor, spec: QuantSpec, normalize: bool = True, *,
                      backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes and parameters of ``hadamard_transform(x)`` on ``spec``'s grid.

    Returns ``(codes, scale, zero)``: ``codes`` shaped like ``x``, int8 for symmetric specs and
    uint8 for asymmetric ones (one code per byte, not packed); ``scale`` and ``zero`` float32
    (float64 for float64 ``x``) of shape ``[..., G, 1]`` as from
    :func:`~rotaquant.quant.quantizer.quant_params`, so ``dequantize(to_groups(codes), scale,
    zero)`` gives the fake-quantized values.  ``x`` is not modified.
    """
    _check(x, spec)
    if not spec.enabled:
        raise ConfigError(f"hadamard_quantize needs a 2..8-bit spec, got {spec}")
    if _use_kernel(x, spec, backend):
        from .hadamard_triton import _as_rows, launch

        codes, scale, zero = launch(_as_rows(x), bool(normalize), False, 1, spec)
        lead = x.shape[:-1]
        return codes.reshape(x.shape), scale.reshape(*lead, -1, 1), zero.reshape(*lead, -1, 1)
    y = hadamard_transform(x, normalize, backend=backend)
    scale, zero = quant_params(y, spec)
    codes = quantize_to_int(to_groups(y, spec), scale, zero, spec)
    return codes.to(torch.int8 if spec.symmetric else torch.uint8).reshape(x.shape), scale, zero


def hadamard_fake_quantize(x: torch.Tensor, spec: QuantSpec, normalize: bool = True, *,
                           backend: str | None = None) -> torch.Tensor:
    """``fake_quantize(hadamard_transform(x, normalize), spec)`` in ``x``'s dtype.

    Differentiable with a straight-through gradient (``grad @ H / sqrt(n)``, the quantizer
    passing gradients unchanged) on both backends.  Identity quantization when ``spec`` is
    disabled.
    """
    _check(x, spec)
    if spec.enabled and _use_kernel(x, spec, backend):
        from .hadamard_triton import hadamard_fake_quant_autograd

        return hadamard_fake_quant_autograd(x, spec, normalize)
    y = hadamard_transform(x, normalize, backend=backend)
    if not spec.enabled:
        return y
    return fake_quantize_ste(y, spec)
