"""The fake-quant dispatch without a GPU: row views of tensor memory, backend choice, fallbacks."""

from __future__ import annotations

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.kernels.fake_quant import kernel_fake_quantize, rows_view, unsupported_reason
from rotaquant.quant.quantizer import QuantSpec, fake_quantize


def test_rows_view_of_contiguous_and_transposed_memory():
    x = torch.arange(2 * 3 * 8.0).reshape(2, 3, 8)
    assert torch.equal(rows_view(x, 4), x.reshape(-1, 4))
    k = torch.arange(2 * 5 * 3 * 8.0).reshape(2, 5, 3, 8).transpose(1, 2)  # [b, heads, seq, d] view
    rows = rows_view(k, 8)
    assert rows.shape == (30, 8)
    # every row of the view is one of k's last-dim rows, each exactly once
    mine = sorted(map(tuple, rows.tolist()))
    assert mine == sorted(map(tuple, k.reshape(-1, 8).tolist()))


def test_rows_view_refuses_gaps_and_strided_last_dim():
    assert rows_view(torch.randn(4, 16)[:, :8], 8) is None  # gaps between rows
    assert rows_view(torch.randn(8, 4).t(), 4) is None  # the last dim is not the innermost


def test_cpu_takes_the_reference_and_bad_backends_are_named(monkeypatch):
    x = torch.randn(4, 64)
    spec = QuantSpec(4)
    assert kernel_fake_quantize(x, spec) is None
    with pytest.raises(ConfigError, match="cannot run here"):
        kernel_fake_quantize(x, spec, backend="triton")
    monkeypatch.setenv("ROTAQUANT_QUANT_BACKEND", "fast")
    with pytest.raises(ConfigError, match="ROTAQUANT_QUANT_BACKEND"):
        kernel_fake_quantize(x, spec)
    monkeypatch.setenv("ROTAQUANT_QUANT_BACKEND", "reference")
    assert kernel_fake_quantize(x, spec) is None
    assert fake_quantize(x, spec).shape == x.shape


def test_uncovered_inputs_have_reasons():
    x = torch.randn(4, 64)
    assert "integer grid" in unsupported_reason(x, QuantSpec(8, type="float"))
    assert "dtype" in unsupported_reason(x.double(), QuantSpec(4))
    assert "divide" in unsupported_reason(x, QuantSpec(4, group_size=48))
    assert "gradient" in unsupported_reason(x.requires_grad_(), QuantSpec(4))
