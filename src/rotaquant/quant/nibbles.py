"""Two 4-bit codes per byte: column ``2j`` in the low nibble, ``2j + 1`` in the high one.

Used by :class:`~rotaquant.quant.weights.QuantizedWeight` (the codes a fake-quantized linear
keeps for export) and :class:`~rotaquant.quant.qlinear.QuantLinear` (the reloaded module).
"""

from __future__ import annotations

import torch


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """``[rows, cols]`` codes in ``[-8, 15]`` (even ``cols``) -> ``[rows, cols / 2]`` uint8."""
    u = codes.to(torch.int16) & 0xF
    return (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """The inverse of :func:`pack_nibbles`: int8 codes in ``[-8, 7]`` (``signed``) or ``[0, 15]``."""
    p = packed.to(torch.int16)
    out = torch.stack([p & 0xF, p >> 4], dim=-1).reshape(p.shape[0], -1)
    if signed:
        out = torch.where(out > 7, out - 16, out)
    return out.to(torch.int8)
