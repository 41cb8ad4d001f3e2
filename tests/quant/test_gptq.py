"""GPTQ on a tiny layer: beats RTN, stays on the grid, matches a naive reference; the Hessian."""

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rotaquant.errors import ConfigError
from rotaquant.quant.gptq import (
    GPTQConfig,
    GPTQError,
    HessianAccumulator,
    NonFiniteActivationError,
    gptq_quantize_weight,
    quantization_objective,
)
from rotaquant.quant.quantizer import (
    QuantSpec,
    fake_quantize,
    quant_params,
    quantize_to_int,
    to_groups,
)
from rotaquant.quant.rtn import rtn_quantize_weight

OUT, IN, N = 32, 64, 512


def calibration(seed: int = 0, n: int = N, dead: tuple[int, ...] = ()) -> torch.Tensor:
    """Correlated activations (a random mixing of Gaussians with unequal channel scales)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(IN, IN, generator=g) / IN**0.5 + 0.5 * torch.eye(IN)
    x = torch.randn(n, IN, generator=g) @ mix * torch.linspace(0.2, 3, IN)
    x[:, list(dead)] = 0
    return x


def weight(seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed)).to(dtype)


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(IN)
    acc.add(x)
    return acc.hessian


VARIANTS = {
    "per-channel": (None, GPTQConfig()),
    "act-order": (None, GPTQConfig(act_order=True)),
    "groups": (16, GPTQConfig()),
    "groups+act-order": (16, GPTQConfig(act_order=True)),
    "static-groups": (16, GPTQConfig(static_groups=True)),
    "static-groups+act-order": (16, GPTQConfig(static_groups=True, act_order=True)),
    "small-blocks": (16, GPTQConfig(block_size=5, act_order=True)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_beats_rtn_and_stays_on_the_grid(variant, bits, symmetric):
    group, cfg = VARIANTS[variant]
    spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=group)
    w, h = weight(), hessian_of(calibration())
    wq, scale, zero = gptq_quantize_weight(w, h, spec, cfg, return_params=True)
    assert wq.shape == w.shape and wq.dtype == w.dtype
    rtn = rtn_quantize_weight(w, spec)
    assert quantization_objective(w, wq, h) < 0.9 * quantization_objective(w, rtn, h)
    # on the grid: the returned parameters (groups in original column order) reproduce wq
    assert scale.shape == zero.shape == (OUT, IN // (group or IN), 1)
    assert torch.equal(fake_quantize(wq, spec, scale, zero), wq)
    codes = quantize_to_int(to_groups(wq, spec), scale, zero, spec)
    assert int(codes.min()) >= spec.qmin and int(codes.max()) <= spec.qmax
    for row in to_groups(wq, spec).reshape(-1, group or IN):
        assert len(torch.unique(row)) <= 2**bits
    if group is None or cfg.static_groups:  # parameters from the original weight, as RTN
        rtn_scale, rtn_zero = quant_params(w, spec)
        assert torch.equal(scale, rtn_scale) and torch.equal(zero, rtn_zero)


def reference_gptq(w, h, spec, damp=0.01, act_order=False, static=False):
    """Naive GPTQ in float64: one column at a time, explicit inverse with rank-1 downdates."""
    W, H = w.double().clone(), h.double().clone()
    dead = torch.diagonal(H) == 0
    torch.diagonal(H)[dead] = 1
    W[:, dead] = 0
    cols = W.shape[1]
    gs = spec.group_size
    Hinv = torch.linalg.inv(H + damp * torch.diagonal(H).mean() * torch.eye(cols, dtype=H.dtype))
    scale, zero = quant_params(W, spec)
    ready = set()
    order = torch.argsort(torch.diagonal(H), descending=True, stable=True).tolist() if act_order else range(cols)
    Q = torch.zeros_like(W)
    for j in order:
        g = j // gs if gs else 0
        if gs and not static and g not in ready:
            s, z = quant_params(W[:, g * gs:(g + 1) * gs], spec)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            ready.add(g)
        Q[:, j:j + 1] = fake_quantize(W[:, j:j + 1], QuantSpec(bits=spec.bits, symmetric=spec.symmetric),
                                      scale[:, g:g + 1], zero[:, g:g + 1])
        err = (W[:, j] - Q[:, j]) / Hinv[j, j]
        W -= torch.outer(err, Hinv[j])
        Hinv -= torch.outer(Hinv[:, j], Hinv[j]) / Hinv[j, j]
    return Q


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_naive_reference_in_float64(variant):
    group, cfg = VARIANTS[variant]
    spec = QuantSpec(bits=3, symmetric=False, group_size=group)
    w, h = weight(dtype=torch.float64), hessian_of(calibration(dead=(5, 40))).double()
    wq = gptq_quantize_weight(w, h, spec, cfg)
    ref = reference_gptq(w, h, spec, cfg.damp, cfg.act_order, cfg.static_groups)
    assert torch.allclose(wq, ref, atol=1e-9)


def test_dead_inputs_get_zero_weights():
    w, h = weight(), hessian_of(calibration(dead=(3, 17)))
    spec = QuantSpec(bits=4, symmetric=False, group_size=16)
    for cfg in (GPTQConfig(), GPTQConfig(act_order=True)):
        wq = gptq_quantize_weight(w, h, spec, cfg)
        assert bool(torch.isfinite(wq).all())
        assert bool((wq[:, [3, 17]] == 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_weights_keep_their_dtype(dtype):
    w, h = weight(dtype=dtype), hessian_of(calibration())
    spec = QuantSpec(bits=4, group_size=16)
    wq = gptq_quantize_weight(w, h, spec)
    assert wq.dtype == dtype and bool(torch.isfinite(wq).all())
    assert torch.equal(wq, gptq_quantize_weight(w.float(), h, spec).to(dtype))
    assert gptq_quantize_weight(w, h, QuantSpec()) is w


def test_clip_search_in_gptq_stays_on_its_grid():
    w, h = weight(), hessian_of(calibration())
    for group, cfg in ((None, GPTQConfig()), (16, GPTQConfig(act_order=True))):
        spec = QuantSpec(bits=3, group_size=group)
        wq, scale, zero = gptq_quantize_weight(w, h, spec, cfg, clip_search=True, return_params=True)
        assert torch.equal(fake_quantize(wq, spec, scale, zero), wq)
        assert quantization_objective(w, wq, h) < quantization_objective(w, rtn_quantize_weight(w, spec), h)


def test_damping_is_raised_when_the_hessian_does_not_factor(caplog):
    g = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(IN, IN, generator=g, dtype=torch.float64))
    eig = torch.ones(IN, dtype=torch.float64)
    eig[0] = -0.05  # slightly indefinite: 1% damping is not enough, 10% is
    h = basis @ torch.diag(eig) @ basis.T
    with caplog.at_level(logging.WARNING, logger="rotaquant.quant.gptq"):
        wq = gptq_quantize_weight(weight(), h, QuantSpec(bits=4), GPTQConfig(damp=0.01), name="layer.0")
    assert bool(torch.isfinite(wq).all())
    assert any("damping" in r.message and "layer.0" in r.message for r in caplog.records)
    with pytest.raises(GPTQError, match="not positive definite"):
        gptq_quantize_weight(weight(), -torch.eye(IN), QuantSpec(bits=4))
    bad = torch.eye(IN)
    bad[2, 3] = float("nan")
    with pytest.raises(GPTQError, match="NaN"):
        gptq_quantize_weight(weight(), bad, QuantSpec(bits=4))


def test_bad_inputs():
    w, h = weight(), hessian_of(calibration())
    with pytest.raises(ConfigError) as info:
        gptq_quantize_weight(w, h, QuantSpec(bits=4, group_size=24))
    assert "24" in str(info.value) and "64" in str(info.value)
    with pytest.raises(GPTQError, match="Hessian shape"):
        gptq_quantize_weight(w, h[:32, :32], QuantSpec(bits=4))
    with pytest.raises(GPTQError, match="2-D"):
        gptq_quantize_weight(w[0], h, QuantSpec(bits=4))
    for bad in (dict(damp=-0.1), dict(block_size=0), dict(damp=float("nan"))):
        with pytest.raises(ConfigError):
            GPTQConfig(**bad)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 200), max_size=4), seed=st.integers(0, 1000))
def test_hessian_does_not_depend_on_how_rows_are_split(cuts, seed):
    x = calibration(seed, n=200).double()
    acc = HessianAccumulator(IN, dtype=torch.float64)
    bounds = [0, *sorted(cuts), 200]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        acc.add(x[a:b])
    assert acc.nsamples == 200
    assert torch.allclose(acc.hessian, 2 / 200 * x.T @ x, rtol=1e-10, atol=1e-12)


def test_hessian_accepts_any_leading_shape_and_half_inputs():
    x = calibration(n=96)
    acc = HessianAccumulator(IN, name="model.layers.0.mlp.up_proj")
    acc.add(x[:48].reshape(2, 4, 6, IN))
    acc.add(x[48:].to(torch.bfloat16).float().reshape(1, 48, IN))
    ref = x.clone()
    ref[48:] = ref[48:].to(torch.bfloat16).float()
    assert acc.nsamples == 96 and acc.hessian.dtype == torch.float32
    assert torch.allclose(acc.hessian, 2 / 96 * ref.T @ ref, rtol=1e-4, atol=1e-4)


def test_non_finite_activations_are_refused():
    acc = HessianAccumulator(IN, name="model.layers.3.self_attn.o_proj")
    x = calibration(n=10)
    acc.add(x)
    before = acc.hessian.clone()
    bad = x.clone()
    bad[0, 0], bad[1, 1], bad[2, 2] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(NonFiniteActivationError) as info:
        acc.add(bad)
    message = str(info.value)
    assert "model.layers.3.self_attn.o_proj" in message and "3 non-finite" in message and "1 NaN" in message
    assert torch.equal(acc.hessian, before) and acc.nsamples == 10
    with pytest.raises(GPTQError, match="expected"):
        acc.add(torch.randn(4, IN + 1))
    with pytest.raises(GPTQError, match="no calibration"):
        _ = HessianAccumulator(IN).hessian


def test_deferred_check_refuses_non_finite_activations_once_read():
    acc = HessianAccumulator(IN, name="model.layers.3.mlp.down_proj", check_each=False)
    acc.add(calibration(n=10))
    bad = calibration(n=4)
    bad[0, 7] = float("inf")
    acc.add(bad)  # no host sync here: the Hessian's diagonal tells when it is read
    with pytest.raises(NonFiniteActivationError, match="down_proj.*1 of"):
        _ = acc.hessian
    good = HessianAccumulator(IN, check_each=False)
    good.add(calibration(n=10))
    assert torch.equal(good.hessian, hessian_of(calibration(n=10)))


def test_stacked_rows_quantize_as_separate_weights():
    """Rows are independent in GPTQ: linears sharing an input can be quantized stacked."""
    h = hessian_of(calibration())
    a, b = weight(1, torch.float64), weight(2, torch.float64)[:20]
    spec = QuantSpec(bits=3, symmetric=False, group_size=16)
    for cfg in (GPTQConfig(), GPTQConfig(act_order=True)):
        stacked, scale, zero = gptq_quantize_weight(torch.cat([a, b]), h, spec, cfg, return_params=True)
        alone = [gptq_quantize_weight(x, h, spec, cfg, return_params=True) for x in (a, b)]
        torch.testing.assert_close(stacked, torch.cat([alone[0][0], alone[1][0]]), rtol=0, atol=1e-12)
        torch.testing.assert_close(scale, torch.cat([alone[0][1], alone[1][1]]), rtol=0, atol=1e-12)


def test_objective_is_the_trace():
    w, h = weight(), hessian_of(calibration())
    wq = rtn_quantize_weight(w, QuantSpec(bits=4))
    d = (w - wq).double()
    assert quantization_objective(w, wq, h) == pytest.approx(torch.trace(d @ h.double() @ d.T).item(), rel=1e-9)
    x = calibration()
    layer_err = ((x.double() @ d.T) ** 2).sum() * 2 / N  # = tr(D H D^T) with H = 2/N X^T X
    assert quantization_objective(w, wq, h) == pytest.approx(layer_err.item(), rel=1e-4)


def test_tf32_matmul_restores_the_setting():
    from rotaquant.quant.gptq import tf32_matmul

    m = torch.backends.cuda.matmul
    before = m.fp32_precision
    with pytest.raises(RuntimeError), tf32_matmul():
        assert m.fp32_precision == "tf32"
        raise RuntimeError("inside")
    assert m.fp32_precision == before
