"""Quantizer grids are exact: codes in range, representable values round-trip, error <= step/2."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rotaquant.errors import ConfigError
from rotaquant.quant.quantizer import (
    ActQuantizer,
    QuantSpec,
    fake_quantize,
    fake_quantize_ste,
    quant_params,
    quantize_to_int,
)
from rotaquant.quant.quantizer import (
    to_groups as grouped,
)
from rotaquant.quant.rtn import rtn_quantize_weight

SPECS = [QuantSpec(b, sym, g) for b in range(2, 9) for sym in (True, False) for g in (None, 8)]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_codes_in_range_and_values_on_grid(spec):
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(spec.bits))
    scale, zero = quant_params(x, spec)
    codes = quantize_to_int(grouped(x, spec), scale, zero, spec)
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    assert torch.equal(codes, codes.round())
    fq = grouped(fake_quantize(x, spec), spec)
    ratio = fq / scale + zero  # back to codes
    assert torch.allclose(ratio, ratio.round(), atol=1e-4)
    assert all(len(torch.unique(row)) <= 2**spec.bits for row in fq.reshape(-1, fq.shape[-1]))
    # inside the range, the error is at most half a step
    err = (fq - grouped(x, spec)).abs()
    assert torch.all(err <= scale / 2 + 1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_representable_values_round_trip_exactly(spec):
    x = torch.randn(4, 16)
    scale, zero = quant_params(x, spec)
    fq = fake_quantize(x, spec, scale, zero)
    assert torch.equal(fake_quantize(fq, spec, scale, zero), fq)
    if spec.symmetric and spec.group_size is None:  # the grid's own points, dynamic params
        grid = torch.arange(-spec.qmax, spec.qmax + 1, dtype=torch.float32)[None] * 0.25
        assert torch.equal(fake_quantize(grid, spec), grid)


@given(bits=st.integers(2, 8), sym=st.booleans(), rows=st.integers(1, 5), scale=st.floats(1e-3, 1e3))
@settings(max_examples=60, deadline=None)
def test_error_bound_property(bits, sym, rows, scale):
    spec = QuantSpec(bits, sym)
    x = torch.randn(rows, 24, generator=torch.Generator().manual_seed(bits * 7 + rows), dtype=torch.float64) * scale
    s, _ = quant_params(x, spec)
    assert torch.all((fake_quantize(x, spec) - x).abs() <= s[..., 0] / 2 * (1 + 1e-9))


def test_zero_rows_and_dtypes():
    spec = QuantSpec(4)
    x = torch.zeros(3, 8)
    assert torch.equal(fake_quantize(x, spec), x)
    assert torch.equal(fake_quantize(x, QuantSpec(4, symmetric=False)), x)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        y = fake_quantize(torch.randn(2, 8).to(dtype), spec)
        assert y.dtype == dtype and torch.isfinite(y).all()


def test_clip_ratio_shrinks_the_range():
    x = torch.linspace(-1, 1, 16)[None]
    y = fake_quantize(x, QuantSpec(4, clip_ratio=0.5))
    assert y.max() <= 0.5 + 1e-6 and y.min() >= -0.5 * 8 / 7 - 1e-6  # int4 has one extra negative code


def test_ste_gradient_is_identity():
    x = torch.randn(3, 16, requires_grad=True)
    fake_quantize_ste(x, QuantSpec(3)).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    y = ActQuantizer(QuantSpec(4), ste=True)(x)
    torch.testing.assert_close(y, fake_quantize(x.detach(), QuantSpec(4)))


@pytest.mark.parametrize("kwargs,match", [({"bits": 1}, "bits"), ({"bits": 9}, "bits"), ({"bits": 0}, "bits"),
                                          ({"group_size": 0}, "group_size"), ({"clip_ratio": 0}, "clip_ratio"),
                                          ({"clip_ratio": 1.5}, "clip_ratio")])
def test_bad_specs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantSpec(**kwargs)


def test_group_not_dividing_names_both_numbers():
    with pytest.raises(ConfigError, match=r"5.*12"):
        fake_quantize(torch.randn(2, 12), QuantSpec(4, group_size=5))


def test_clip_search_never_worse():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=gen) ** 3  # heavy-tailed
    for spec in (QuantSpec(3), QuantSpec(4, symmetric=False), QuantSpec(4, group_size=32)):
        plain = (rtn_quantize_weight(w, spec) - w).abs().pow(2.4).sum(1)
        clipped = (rtn_quantize_weight(w, spec, clip_search=True) - w).abs().pow(2.4).sum(1)
        assert torch.all(clipped <= plain + 1e-5) and clipped.sum() < plain.sum()
