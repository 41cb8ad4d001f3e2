"""RTN weight quantization and its clipping search."""

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.quant.quantizer import QuantSpec, fake_quantize, quant_params, to_groups
from rotaquant.quant.rtn import rtn_quantize_weight, search_clip_params, shrink_factors


def heavy_tailed(rows: int = 24, cols: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(rows, cols, generator=g)
    chi2 = torch.randn(rows, cols, 3, generator=g).pow(2).sum(-1)  # Student t with 3 dof
    return normal / (chi2 / 3).sqrt()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [None, 16])
def test_plain_rtn_is_the_fake_quantizer(symmetric, group):
    w = heavy_tailed()
    spec = QuantSpec(bits=4, symmetric=symmetric, group_size=group)
    wq, scale, zero = rtn_quantize_weight(w, spec, return_params=True)
    assert torch.equal(wq, fake_quantize(w, spec))
    ref_scale, ref_zero = quant_params(w, spec)
    assert torch.equal(scale, ref_scale) and torch.equal(zero, ref_zero)
    assert scale.shape == (24, 64 // (group or 64), 1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [None, 16])
def test_clip_search_never_loses_to_rtn(bits, symmetric, group):
    norm = 2.4
    w = heavy_tailed(seed=bits)
    spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=group)
    plain = rtn_quantize_weight(w, spec)
    searched, scale, zero = rtn_quantize_weight(w, spec, clip_search=True, norm=norm, return_params=True)
    e_plain = to_groups((w - plain).abs().pow(norm), spec).sum(-1)
    e_search = to_groups((w - searched).abs().pow(norm), spec).sum(-1)
    assert bool((e_search <= e_plain * (1 + 1e-6)).all())  # per row and group
    if bits <= 4:  # heavy tails: clipping helps on average
        assert e_search.sum() < 0.99 * e_plain.sum()
    assert torch.equal(fake_quantize(w, spec, scale, zero), searched)  # on the returned grid
    ref_scale, _ = quant_params(w, spec)
    assert bool((scale <= ref_scale * (1 + 1e-6)).all())
    assert bool((scale >= ref_scale * 0.2 * (1 - 1e-6)).all())  # never below 1 - max_shrink


def test_clip_search_matches_brute_force_on_one_row():
    spec = QuantSpec(bits=3)
    x = heavy_tailed(1, 32, seed=7)
    scale, _ = search_clip_params(x, spec, grid=20, max_shrink=0.5, norm=2.0)
    amax = x.abs().max()
    errs = []
    for p in shrink_factors(20, 0.5):
        s = p * amax / spec.qmax
        errs.append(((x - fake_quantize(x, spec, s.reshape(1, 1, 1))).pow(2).sum().item(), s.item()))
    best = min(errs, key=lambda e: e[0])
    assert scale.item() == pytest.approx(best[1], rel=1e-6)


def test_shrink_factors_are_a_linspace():
    assert shrink_factors(5, 0.8) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert shrink_factors(1, 0.8) == [1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dtype_shape_and_disabled(dtype):
    w = heavy_tailed().to(dtype)
    spec = QuantSpec(bits=4, group_size=16)
    out = rtn_quantize_weight(w, spec, clip_search=True, grid=10)
    assert out.dtype == dtype and out.shape == w.shape and bool(torch.isfinite(out).all())
    assert torch.equal(out, rtn_quantize_weight(w.float(), spec, clip_search=True, grid=10).to(dtype))
    assert rtn_quantize_weight(w, QuantSpec()) is w
    assert rtn_quantize_weight(w, QuantSpec(), return_params=True) == (w, None, None)


def test_zero_rows_and_bad_search_settings():
    w = heavy_tailed()
    w[3] = 0
    out = rtn_quantize_weight(w, QuantSpec(bits=4, symmetric=False), clip_search=True)
    assert bool((out[3] == 0).all()) and bool(torch.isfinite(out).all())
    for bad in (dict(grid=0), dict(max_shrink=1.0), dict(max_shrink=-0.1), dict(norm=0)):
        with pytest.raises(ConfigError):
            rtn_quantize_weight(w, QuantSpec(bits=4), clip_search=True, **bad)
    with pytest.raises(ConfigError, match="48.*64|64.*48"):
        rtn_quantize_weight(w, QuantSpec(bits=4, group_size=48))
