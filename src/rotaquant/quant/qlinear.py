"""A linear layer that keeps its weight as integer codes and computes with real kernels.

:class:`QuantLinear` holds the codes of a quantized weight (``(codes - zero) * scale``, the grid
of :mod:`rotaquant.quant.quantizer`), never a float copy of it, and optionally the spec of the
dynamic per-token quantizer of its input (then the input is quantized here, fused with the
matmul, instead of by an ``a_quant`` stage). Kernels, chosen by :meth:`QuantLinear.set_kernel`:

* ``reference``: dequantize the weight (float32, as the fake-quantized model did) and matmul;
  activations fake-quantized exactly as :class:`~rotaquant.quant.quantizer.ActQuantizer` does.
  Bit-for-bit the fake-quantized model. Codes are kept nibble-packed (2 per byte) up to 4 bits.
* ``int4mm`` (weight-only, up to 4 bits): torch's tinygemm int4 kernel,
  ``aten._weight_int4pack_mm`` on CUDA (bf16) and ``aten._weight_int4pack_mm_for_cpu`` on CPU,
  with ``w = (u - 8) * s + z`` per group (32..256; a per-channel scale is repeated per group).
* ``int8mm`` (weights and per-token activations up to 8 bits, per-channel weights):
  ``torch._int_mm`` on int8 codes, zero points and scales applied in the epilogue. 4-bit codes
  run through it exactly (no int4 tensor cores on H100). On CUDA with Triton one Triton pass
  quantizes the activations and one kernel does the int8 GEMM and the epilogue
  (:mod:`rotaquant.kernels.int8_linear`; H200, a LLaMA-7B layer's linears: 119 / 885 us at 1 / 2048
  rows vs 184 / 1304 us around ``_int_mm``, FP16 129 / 1136 us), the same values as the torch ops, which
  ``ROTAQUANT_QUANT_BACKEND=reference`` selects.
* ``w4triton`` (weight-only, up to 4 bits, CUDA; groups of 32-256 or per channel): for up to 16
  rows (decode) the split-K Triton kernel of :mod:`rotaquant.kernels.w4a16_gemv` (fp16/bf16 in
  and out, no casts around it, weights dequantized exactly as the reference; H200, a LLaMA-7B
  layer's linears at 1 row: 118 us vs FP16 129 us, tinygemm 120 us); for more rows (prefill)
  the weight is dequantized by one Triton pass (bit-identical to the reference's) and multiplied
  by cuBLAS: tinygemm is memory-efficient at 1 row but 25x slower than cuBLAS at 2048 rows
  (28.5 ms vs 1.3 ms).
* ``fp8mm`` (FP8 e4m3 weights per channel, dynamic per-token FP8 activations): ``torch._scaled_mm``
  with row-wise scales (CUDA sm89+; its row-wise kernel writes bfloat16, cast to the input's dtype).
  Elsewhere FP8 layers run ``reference`` (weights dequantized from their e4m3 codes).
* ``auto``: ``fp8mm``/``int8mm`` when activations are quantized per token and the weight per
  channel; for weight-only <= 4 bits ``w4triton`` on CUDA with Triton (measured on an H200 at a
  LLaMA-7B layer's linears in a CUDA graph: tinygemm's speed at 1 row, 2.5x at 16, 23x at 2048
  rows), else ``int4mm``; else ``reference``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .nibbles import pack_nibbles, unpack_nibbles
from .quantizer import (
    QuantSpec,
    SharedResult,
    fake_quantize,
    quant_params,
    quantize_to_int,
    share_result,
    to_groups,
)

KERNELS = ("auto", "reference", "int4mm", "int8mm", "fp8mm", "w4triton")
_TRITON_ROWS = 16  # w4triton's matmul kernel serves up to this many rows; dequantization + cuBLAS the rest
_INT4_GROUPS = (256, 128, 64, 32)


class QuantLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as integer codes.

    Codes are stored signed (asymmetric grids shifted by ``2^(b-1)``, their zero points too, as
    compressed-tensors stores them), so 8-bit asymmetric codes fit int8; ``(codes - zero)`` is
    unchanged by the shift. FP8 specs (``spec.type == "float"``) keep ``float8_e4m3fn`` codes.

    Args:
        codes: integer ``[out, in]`` codes on ``spec``'s grid (rotaquant's convention).
        scale, zero: float32 ``[out, G]`` (``zero`` integer-valued; zeros for symmetric specs).
        spec: the weight's QuantSpec.
        bias: optional bias.
        act_spec: dynamic quantizer of the input (None: the input is used as it comes).
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec,
                 bias: torch.Tensor | None = None, act_spec: QuantSpec | None = None):
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.spec, self.act_spec = spec, act_spec if act_spec is not None and act_spec.enabled else None
        self.nibbles = spec.bits <= 4 and self.in_features % 2 == 0
        off = 0 if spec.symmetric else 2 ** (spec.bits - 1)
        if spec.type == "float":
            self.register_buffer("codes", codes.to(torch.float8_e4m3fn).contiguous())
        else:
            signed = (codes.to(torch.int32) - off).to(torch.int8)
            self.register_buffer("codes", pack_nibbles(signed) if self.nibbles else signed)
        self.register_buffer("scale", scale.to(torch.float32).contiguous())
        self.register_buffer("zero", (zero.to(torch.float32) - off).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.kernel = "reference"
        self._packed: dict[str, torch.Tensor] = {}
        self.shared_act: SharedResult | None = None  # one quantized input for q/k/v, gate/up (share_inputs)

    # -- weights ------------------------------------------------------------------------------
    def int_codes(self) -> torch.Tensor:
        """The signed codes as int8 ``[out, in]`` (``zero`` is shifted alike); FP8 codes as
        ``float8_e4m3fn``."""
        if self.nibbles:
            return unpack_nibbles(self.codes, signed=True)
        return self.codes

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """``(codes - zero) * scale`` computed in float32, returned in ``dtype``."""
        g = to_groups(self.int_codes().to(torch.float32), self.spec)
        w = (g - self.zero[..., None]) * self.scale[..., None]
        return w.reshape(self.out_features, self.in_features).to(dtype)

    # -- kernels ------------------------------------------------------------------------------
    def supports(self, kernel: str) -> str | None:
        """None if ``kernel`` can run this layer, else why not."""
        if kernel == "reference":
            return None
        if kernel == "fp8mm":
            return self._fp8_unsupported()
        if self.spec.type == "float" or (self.act_spec is not None and self.act_spec.type == "float"):
            return f"FP8 layers run fp8mm or reference, not {kernel}"
        if kernel == "w4triton":
            from ..kernels import w4a16_gemv

            why = self.supports("int4mm")
            if why is None and not w4a16_gemv.available(self.codes.device):
                why = "w4triton needs CUDA and Triton"
            if why is None and w4a16_gemv.half_for(self.in_features, self.spec.group_size) is None:
                why = (f"no w4triton layout for input size {self.in_features} in groups of {self.spec.group_size}"
                       " (groups of 32/64/128/256 dividing it; per channel: a multiple of 32)")
            return why
        if kernel == "int4mm":
            if self.act_spec is not None:
                return "activations are quantized (int4mm is weight-only)"
            if self.spec.bits > 4:
                return f"{self.spec.bits}-bit weights (int4mm takes up to 4)"
            if self._int4_group() is None:
                return f"group size {self.spec.group_size} / input size {self.in_features} fit no int4 group of {_INT4_GROUPS}"
            if self.codes.is_cuda and (self.out_features % 8 or self.in_features % 32):
                return "CUDA int4mm needs out % 8 == 0 and in % 32 == 0"
            return None
        if kernel == "int8mm":
            if self.act_spec is None or self.act_spec.group_size is not None:
                return "int8mm needs activations quantized per token"
            if self.spec.group_size is not None and self.spec.group_size != self.in_features:
                return "int8mm needs per-channel weight scales"
            if self.codes.is_cuda and (self.in_features % 8 or self.out_features % 8):
                return "CUDA _int_mm needs in % 8 == 0 and out % 8 == 0"
            return None
        return f"unknown kernel {kernel!r}; choose one of {KERNELS}"

    def _fp8_unsupported(self) -> str | None:
        if self.spec.type != "float" or self.spec.group_size not in (None, self.in_features):
            return "fp8mm needs FP8 weights with one scale per output channel"
        if self.act_spec is None or self.act_spec.type != "float" or self.act_spec.group_size is not None:
            return "fp8mm needs FP8 activations quantized per token"
        if not self.codes.is_cuda or torch.cuda.get_device_capability(self.codes.device) < (8, 9):
            return "fp8mm needs a CUDA GPU of compute capability 8.9+ (torch._scaled_mm with row-wise scales)"
        if self.in_features % 16 or self.out_features % 16:
            return "torch._scaled_mm needs in % 16 == 0 and out % 16 == 0"
        return None

    def _int4_group(self) -> int | None:
        g = self.spec.group_size or self.in_features
        if g in _INT4_GROUPS:
            return g
        if self.spec.group_size is None:  # per channel: repeat the scale over groups of any size
            return next((c for c in _INT4_GROUPS if self.in_features % c == 0), None)
        return None

    def set_kernel(self, kernel: str = "auto") -> str:
        """Choose the kernel (``auto`` picks the fastest that applies); returns the one chosen.

        Mutates self: builds the kernel's packed weight on the current device (so call it
        again after moving the model to another device).
        Raises ConfigError if an explicitly named kernel cannot run this layer.
        """
        if kernel == "auto":
            order = ("fp8mm", "int8mm", "int4mm") if self.act_spec is not None else ("w4triton", "int4mm")
            kernel = next((k for k in order if self.supports(k) is None), "reference")
        why = self.supports(kernel)
        if why:
            raise ConfigError(f"kernel {kernel!r} cannot run this {self.spec} layer: {why}")
        self._packed = {}
        if kernel == "int4mm":
            self._prepare_int4()
        elif kernel == "w4triton":
            from ..kernels.w4a16_gemv import pack_w4

            self._packed["tri"] = pack_w4(self.int_codes(), self.scale, self.zero, self.spec.group_size)
        elif kernel == "int8mm":
            self._prepare_int8()
        elif kernel == "fp8mm":
            self._packed = {"sw": self.scale[:, 0].reshape(1, -1).contiguous()}
        self.kernel = kernel
        return kernel

    def _prepare_int4(self) -> None:
        g = self._int4_group()
        u = self.int_codes().to(torch.int32) + 8  # unsigned nibble: w = (u - 8 - zero) * s = (u - 8) * s + z
        reps = g // self.spec.group_size if self.spec.group_size else self.in_features // g
        scale = self.scale if self.spec.group_size == g else self.scale.repeat_interleave(reps, dim=1)
        zero = self.zero if self.spec.group_size == g else self.zero.repeat_interleave(reps, dim=1)
        zf = -zero * scale
        sz = torch.stack([scale.t(), zf.t()], dim=-1).contiguous()  # [G, out, 2]
        if u.is_cuda:
            packed_u8 = ((u[:, 0::2] << 4) | u[:, 1::2]).to(torch.uint8)
            tiles = 8 if self.in_features % 128 == 0 else (4 if self.in_features % 64 == 0 else 2)
            self._packed = {"w": torch.ops.aten._convert_weight_to_int4pack(packed_u8.contiguous(), tiles),
                            "sz": sz.to(torch.bfloat16), "g": g}
        else:
            self._packed = {"w": torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.contiguous(), 1),
                            "sz": sz, "g": g}

    def _prepare_int8(self) -> None:
        q = self.int_codes()
        self._packed = {"w": q.contiguous(), "zw": self.zero[:, 0], "sw": self.scale[:, 0],
                        "qsum": q.to(torch.float32).sum(1)}

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "int8mm":
            return self._forward_int8(x)  # the bias is added in its epilogue
        if self.kernel == "fp8mm":
            y = self._forward_fp8(x)
        elif self.kernel == "w4triton":
            y = self._forward_w4triton(x)
        elif self.kernel == "int4mm":
            y = self._forward_int4(x)
        else:
            if self.act_spec is not None:
                x = self._shared(x, lambda t: fake_quantize(t, self.act_spec))
            y = F.linear(x, self.dequantize(x.dtype))
            return y if self.bias is None else y + self.bias
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _forward_int4(self, x: torch.Tensor) -> torch.Tensor:
        p, shape = self._packed, x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2.to(torch.bfloat16), p["w"], p["g"], p["sz"])
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, p["w"], p["g"], p["sz"].to(x2.dtype))
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _forward_w4triton(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.w4a16_gemv import w4_dequantize, w4a16_matmul

        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= _TRITON_ROWS and x.dtype != torch.float32:
            y = w4a16_matmul(x2, self._packed["tri"])
        else:  # prefill: one dequantization pass, then cuBLAS (the reference's own arithmetic)
            y = F.linear(x2, w4_dequantize(self._packed["tri"], x.dtype))
        return y.reshape(*x.shape[:-1], self.out_features)

    def _shared(self, x: torch.Tensor, quantize):
        """``quantize(x)``, or the result a sibling linear computed from the very same ``x``."""
        if self.shared_act is None or x.requires_grad:
            return quantize(x)
        return self.shared_act.compute(x, quantize)

    def _forward_int8(self, x: torch.Tensor) -> torch.Tensor:
        p, x2 = self._packed, x.reshape(-1, self.in_features)
        args = (p["w"], p["sw"], p["zw"], p["qsum"], self.act_spec, self.bias)
        if _int8_triton_applies(x2):  # the same values in two passes around _int_mm (see the kernels)
            from ..kernels.int8_linear import int8_linear as linear
            from ..kernels.int8_linear import int8_quantize as quantize
        else:
            linear, quantize = int8_linear_torch, int8_quantize_torch
        q = self._shared(x, lambda t: quantize(t.reshape(-1, self.in_features), self.act_spec))
        return linear(x2, *args, quantized=q).reshape(*x.shape[:-1], self.out_features)

    def _forward_fp8(self, x: torch.Tensor) -> torch.Tensor:
        spec, shape = self.act_spec, x.shape
        x2 = x.reshape(-1, self.in_features)
        scale, zero = quant_params(x2, spec)  # [M, 1, 1] float32, as ActQuantizer computes them
        xq = quantize_to_int(to_groups(x2, spec), scale, zero, spec).reshape(x2.shape)  # float8_e4m3fn
        # codes [out, in] row-major: .t() is the column-major [in, out] operand _scaled_mm wants
        y = torch._scaled_mm(xq, self.codes.t(), scale_a=scale.reshape(-1, 1), scale_b=self._packed["sw"],
                             out_dtype=torch.bfloat16)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        act = f", act={self.act_spec}" if self.act_spec is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight={self.spec}{act}, kernel={self.kernel}")


def _int8_triton_applies(x2: torch.Tensor) -> bool:
    """Whether int8mm quantizes and finishes with the Triton kernels of
    :mod:`rotaquant.kernels.int8_linear`: CUDA with Triton, unless ``ROTAQUANT_QUANT_BACKEND`` is
    ``reference``."""
    from ..kernels import KERNEL_DTYPES, triton_available
    from ..kernels.fake_quant import BACKEND_ENV

    return (x2.is_cuda and x2.dtype in KERNEL_DTYPES and os.environ.get(BACKEND_ENV) != "reference"
            and triton_available())


def int8_quantize_torch(x2: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, ...]:
    """int8mm's per-token quantization of ``x2`` ``[M, K]`` as ActQuantizer computes it (torch
    reference of :func:`rotaquant.kernels.int8_linear.quantize_rows`).

    Returns int8 ``codes`` ``[M, K]`` (asymmetric codes shifted by ``-2^(b-1)`` into int8) and
    float32 ``[M]`` scale, zero point (shifted alike) and the sum of each row's codes.
    """
    scale, zero = quant_params(x2, spec)  # [M, 1, 1]
    off = 0 if spec.symmetric else 2 ** (spec.bits - 1)
    xq = (quantize_to_int(to_groups(x2, spec), scale, zero, spec).reshape(x2.shape) - off).to(torch.int8)
    m = x2.shape[0]
    return (xq, scale.reshape(m).to(torch.float32), (zero.reshape(m) - off).to(torch.float32),
            xq.to(torch.float32).sum(1))


def int8_epilogue_torch(acc: torch.Tensor, sx: torch.Tensor, zx: torch.Tensor, xsum: torch.Tensor,
                        sw: torch.Tensor, zw: torch.Tensor, qsum: torch.Tensor, k: int, dtype: torch.dtype,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """int8mm's epilogue (torch reference of :func:`rotaquant.kernels.int8_linear.int8_epilogue`):
    ``[M, N]`` in ``dtype`` from the int32 ``acc`` ``[M, N]`` of ``k``-long products of codes."""
    sx, zx, xsum = sx[:, None], zx[:, None], xsum[:, None]
    # sum_k (xq - zx)(wq - zw) = acc - zw*sum(xq) - zx*sum(wq) + K*zx*zw
    acc = acc.to(torch.float32) - zw[None] * xsum - zx * qsum[None] + k * zx * zw[None]
    y = (acc * sx * sw[None]).to(dtype)
    return y if bias is None else y + bias.to(dtype)


def int8_linear_torch(x2: torch.Tensor, w: torch.Tensor, sw: torch.Tensor, zw: torch.Tensor, qsum: torch.Tensor,
                      spec: QuantSpec, bias: torch.Tensor | None = None, quantized: tuple | None = None) -> torch.Tensor:
    """int8mm in torch ops (the reference and the CPU path); arguments as
    :func:`rotaquant.kernels.int8_linear.int8_linear` (``quantized``: ``int8_quantize_torch(x2,
    spec)`` computed before, e.g. by a linear that reads the same input)."""
    xq, sx, zx, xsum = quantized if quantized is not None else int8_quantize_torch(x2, spec)
    m = xq.shape[0]
    if xq.is_cuda and m <= 16:  # _int_mm on CUDA needs more than 16 rows
        xq = F.pad(xq, (0, 0, 0, 32 - m))
    acc = torch._int_mm(xq, w.t())[:m]
    return int8_epilogue_torch(acc, sx, zx, xsum, sw, zw, qsum, x2.shape[1], x2.dtype, bias)


def share_inputs(model: nn.Module, groups: list[list[str]]) -> int:
    """Let the QuantLinears named by each group (full module names; e.g. a layer's q/k/v) that
    quantize their input with one spec do it once per call (:class:`SharedResult`, checked by
    tensor identity, so siblings fed different tensors still quantize each). Mutates them;
    returns how many groups share."""
    modules = dict(model.named_modules())
    shared = 0
    for names in groups:
        members = [m for n in names if isinstance(m := modules.get(n), QuantLinear) and m.act_spec is not None]
        shared += share_result(members, [m.act_spec for m in members], "shared_act")
    return shared


def set_kernels(model: nn.Module, kernel: str = "auto") -> dict[str, int]:
    """Choose ``kernel`` for every QuantLinear of ``model`` (mutates them); returns counts per kernel."""
    if kernel not in KERNELS:
        raise ConfigError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear):
            chosen = module.set_kernel(kernel)
            counts[chosen] = counts.get(chosen, 0) + 1
    return counts
