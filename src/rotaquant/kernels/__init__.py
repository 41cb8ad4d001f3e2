"""GPU kernels (Triton) for the online Hadamard transform, alone and fused with quantization.

Importing this package never needs Triton or CUDA: the kernels module is imported lazily, on
the first call that runs on the GPU.  The public entry points pick the kernel when it can run
and fall back to the torch reference otherwise, so callers never branch on the device:

* :func:`rotaquant.rotation.transform.hadamard_transform` (dispatches here automatically),
* :func:`hadamard_quantize`: Hadamard + dynamic quantization to integer codes and scales,
* :func:`hadamard_fake_quantize`: Hadamard + quantize-dequantize (the fake-quant stages),
* :func:`rotaquant.quant.quantizer.fake_quantize` with dynamic parameters (dispatches to the
  per-row kernel of :mod:`rotaquant.kernels.fake_quant` automatically),
* :func:`rotaquant.quant.rtn.search_clip_params` (the weight clipping search of RTN and GPTQ:
  :mod:`rotaquant.kernels.clip_search` when ``ROTAQUANT_CLIP_KERNEL=1``, until it is timed).

:func:`triton_available` tells whether the kernels can run at all in this process.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util

import torch

__all__ = [
    "KERNEL_DTYPES",
    "hadamard_fake_quantize",
    "hadamard_quantize",
    "hadamard_supported",
    "triton_transform",
    "triton_available",
    "unsupported_reason",
]

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_SYLVESTER_BITS = 14  # 2**k up to 16384 (two in-register factors of at most 128)
MAX_CORE = 1024  # padded core order the kernel handles (m up to 1024: 924 = Paley II of 461)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for grid sizes. (``triton.cdiv`` is a constexpr function whose host-side
    call unwraps its arguments: a few microseconds on every launch.)"""
    return -(-a // b)


def pow2_at_least(v: int, low: int = 1) -> int:
    """The smallest power of two that is ``>= v`` and ``>= low`` (tile and bucket sizes; plain
    integers, like :func:`ceil_div`, instead of ``triton.next_power_of_2`` on the host)."""
    return max(low, 1 << max(0, (v - 1).bit_length()))


def on_device(device: torch.device):
    """Context for a Triton launch on ``device``: Triton launches on the current CUDA device, so
    make it ``device``'s when it is another GPU (nothing to do for CPU tensors: the interpreter)."""
    if device.type != "cuda" or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


@functools.cache
def triton_available() -> bool:
    """True if Triton imports and CUDA is usable (checked once per process)."""
    if importlib.util.find_spec("triton") is None or not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install must not break rotaquant: fall back to torch
        return False
    return True


def unsupported_reason(x: torch.Tensor) -> str | None:
    """Why the Triton Hadamard kernel cannot run on ``x``, or None if it can."""
    if not x.is_cuda:
        return f"tensor is on {x.device.type}, the kernel needs CUDA"
    return _cuda_reason(x.shape[-1], x.dtype)


@functools.lru_cache(maxsize=1024)
def _cuda_reason(n: int, dtype: torch.dtype) -> str | None:
    """:func:`unsupported_reason` for a CUDA tensor (cached: it runs on every transform call)."""
    if dtype not in KERNEL_DTYPES:
        return f"dtype {dtype} (the kernel takes float16, bfloat16, float32)"
    if not triton_available():
        return "Triton is not installed or CUDA is unusable"
    from rotaquant.rotation.hadamard import hadamard_factorization

    m, k = hadamard_factorization(n)
    if k > MAX_SYLVESTER_BITS:
        return f"2**{k} Sylvester part is larger than 2**{MAX_SYLVESTER_BITS}"
    core = m << k if k < 4 else m  # Sylvester parts below 16 are folded into the core
    if core > MAX_CORE:
        return f"core order {core} is larger than {MAX_CORE}"
    return None


def hadamard_supported(x: torch.Tensor) -> bool:
    """True if the Triton Hadamard kernel can transform ``x`` (see :func:`unsupported_reason`)."""
    return unsupported_reason(x) is None


def triton_transform(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """The Triton transform (``x @ H.T``, ``/ sqrt(n)`` if ``normalize``), differentiable.

    ``x`` must pass :func:`hadamard_supported`; any leading shape.
    """
    from .hadamard_triton import hadamard_autograd

    return hadamard_autograd(x, normalize)


def __getattr__(name):  # the fused API lives in its own module; load it on first use
    if name in ("hadamard_quantize", "hadamard_fake_quantize"):
        from . import fused_quant

        return getattr(fused_quant, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
