"""Dynamic fake quantization on the GPU: which inputs the Triton kernel takes, and the dispatch.

:func:`rotaquant.quant.quantizer.fake_quantize` calls :func:`kernel_fake_quantize` for dynamic
parameters; it returns None where the kernel does not apply, and the torch reference runs.  The
kernel (:mod:`rotaquant.kernels.quant_triton`) computes the same values bit for bit, so it is
the automatic choice on CUDA.  It covers integer grids (symmetric restricted or full,
asymmetric), any clip ratio, per row or per group, for float16/bfloat16/float32 tensors that do
not need a gradient.  FP8 specs, float64, CPU tensors and autograd inputs take the reference.

The backend is picked per call: the ``backend`` argument, else the environment variable
``ROTAQUANT_QUANT_BACKEND`` (``auto``, ``reference`` or ``triton``), else ``auto``.
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

__all__ = ["BACKENDS", "BACKEND_ENV", "kernel_fake_quantize", "rows_view", "unsupported_reason"]

BACKENDS = ("auto", "reference", "triton")
BACKEND_ENV = "ROTAQUANT_QUANT_BACKEND"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_WIDTH = 16384  # quant_triton.MAX_WIDTH, without importing Triton here


def rows_view(t: torch.Tensor, g: int) -> torch.Tensor | None:
    """``t``'s memory as ``[numel / g, g]`` rows, each a group of ``g`` consecutive elements of
    ``t``'s last dim, or None when the memory is not laid out so.

    Any dense, non-overlapping layout whose last dim is the innermost qualifies (keys and values
    as ``[batch, heads, seq, head_dim]`` transposed views of ``[batch, seq, heads, head_dim]``
    memory do): the rows are then ``t``'s rows in memory order, which a per-row operation may
    process in any order.
    """
    if t.is_contiguous():
        return t.view(-1, g)
    dims = sorted(((st, sz) for st, sz in zip(t.stride(), t.shape, strict=True) if sz != 1), reverse=True)
    if t.shape[-1] != 1 and t.stride(-1) != 1:
        return None
    expected = 1
    for st, sz in reversed(dims):
        if st != expected:
            return None
        expected *= sz
    return t.as_strided((t.numel() // g, g), (g, 1))


def _choice(backend: str | None) -> str:
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto") or "auto"
    if choice not in BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ConfigError(f"unknown fake-quant backend {choice!r} (from {source}); choose one of {', '.join(BACKENDS)}")
    return choice


def unsupported_reason(x: torch.Tensor, spec) -> str | None:
    """Why the Triton fake-quant kernel cannot quantize ``x`` with ``spec``, or None if it can."""
    from . import triton_available

    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} (the kernel takes float16, bfloat16, float32)"
    if not spec.enabled or spec.type != "int":
        return f"{spec} is not an integer grid"
    if x.dim() == 0 or x.shape[-1] % (spec.group_size or x.shape[-1] or 1):
        return f"group_size {spec.group_size} does not divide the last dimension"
    if (spec.group_size or x.shape[-1]) > _MAX_WIDTH:
        return f"groups of {spec.group_size or x.shape[-1]} elements (the kernel holds at most {_MAX_WIDTH})"
    if torch.is_grad_enabled() and x.requires_grad:
        return "the input needs a gradient (the kernel has no backward; the STE wraps a detached call)"
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"tensor is on {x.device.type}, the kernel needs CUDA"
    if x.is_cuda and not triton_available():
        return "Triton is not installed or CUDA is unusable"
    return None


def kernel_fake_quantize(x: torch.Tensor, spec, backend: str | None = None) -> torch.Tensor | None:
    """``fake_quantize(x, spec)`` (dynamic parameters) by the Triton kernel, or None when the
    reference should run (not CUDA, an uncovered spec or dtype, backend ``"reference"``).

    ``backend="triton"`` raises :class:`ConfigError` with the reason instead of returning None.
    The result has ``x``'s shape, dtype and (for dense layouts) strides; ``x`` is not modified.
    """
    choice = _choice(backend)
    if choice == "reference" or (choice == "auto" and not x.is_cuda):
        return None
    reason = unsupported_reason(x, spec)
    if reason is not None:
        if choice == "triton":
            raise ConfigError(f"the Triton fake-quant kernel cannot run here ({reason}); use backend 'auto' or "
                              "'reference'")
        return None
    from .quant_triton import launch_fake_quant

    g = spec.group_size or x.shape[-1]
    out = torch.empty_like(x)
    src, dst = rows_view(x, g), rows_view(out, g)
    if src is None or dst is None:  # a layout with gaps or overlaps: work on a contiguous copy
        x = x.contiguous()
        out = torch.empty_like(x)
        src, dst = x.view(-1, g), out.view(-1, g)
    launch_fake_quant(src, dst, spec)
    return out
