"""Fake quantization: exact grids, error bounds, zero rows, dtypes, STE, bad specs."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rotaquant.errors import ConfigError
from rotaquant.quant.quantizer import (
    ActQuantizer,
    QuantSpec,
    dequantize,
    fake_quantize,
    fake_quantize_ste,
    quant_params,
    quantize_to_int,
    to_groups,
)

BITS = list(range(2, 9))


def random_tensor(seed: int, rows: int, cols: int, magnitude: float, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * magnitude
    x[:, ::5] += magnitude * 3 * torch.rand(rows, (cols + 4) // 5, generator=g)  # skewed: asym matters
    return x.to(dtype)


specs = st.builds(
    QuantSpec,
    bits=st.sampled_from(BITS),
    symmetric=st.booleans(),
    group_size=st.sampled_from([None, 4, 8]),
    clip_ratio=st.sampled_from([1.0, 1.0, 0.9, 0.5]),
)
tensors = st.tuples(st.integers(0, 10**6), st.integers(1, 6), st.sampled_from([8, 16, 24]),
                    st.sampled_from([1e-3, 1.0, 1e3]))


@settings(max_examples=80, deadline=None)
@given(spec=specs, t=tensors)
def test_values_lie_on_the_grid(spec, t):
    x = random_tensor(*t)
    scale, zero = quant_params(x, spec)
    groups = x.shape[-1] // (spec.group_size or x.shape[-1])
    assert scale.shape == zero.shape == (x.shape[0], groups, 1)
    assert scale.dtype == torch.float32 and bool((scale > 0).all())
    assert torch.equal(zero, zero.round()) and bool((zero >= 0).all()) and bool((zero <= spec.qmax).all())
    codes = quantize_to_int(to_groups(x, spec), scale, zero, spec)
    assert codes.dtype == torch.int32
    assert int(codes.min()) >= spec.qmin and int(codes.max()) <= spec.qmax
    fq = fake_quantize(x, spec)
    assert torch.equal(fq, dequantize(codes, scale, zero, spec).reshape(x.shape))
    ratio = to_groups(fq, spec) / scale + zero  # back to codes
    assert torch.allclose(ratio, ratio.round(), atol=1e-3)
    assert len(torch.unique(fq)) <= x.shape[0] * groups * 2**spec.bits
    for row in to_groups(fq, spec).reshape(-1, spec.group_size or x.shape[-1]):
        assert len(torch.unique(row)) <= 2**spec.bits
    assert torch.equal(fake_quantize(fq, spec, scale, zero), fq)  # idempotent with the same params


@settings(max_examples=80, deadline=None)
@given(bits=st.sampled_from(BITS), symmetric=st.booleans(), group=st.sampled_from([None, 4, 8]), t=tensors)
def test_error_at_most_half_a_step_inside_the_range(bits, symmetric, group, t):
    spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=group)  # clip 1: all inside
    x = random_tensor(*t)
    scale, _ = quant_params(x, spec)
    err = to_groups((x - fake_quantize(x, spec)).abs(), spec)
    assert bool((err <= scale / 2 * (1 + 1e-5) + 1e-30).all())


@settings(max_examples=40, deadline=None)
@given(spec=specs, seed=st.integers(0, 10**6))
def test_clipped_values_saturate_at_the_grid_ends(spec, seed):
    x = random_tensor(seed, 3, 16, 1.0)
    scale, zero = quant_params(x, spec)
    codes = quantize_to_int(to_groups(x, spec), scale, zero, spec)
    lo = (spec.qmin - zero) * scale
    hi = (spec.qmax - zero) * scale
    fq = to_groups(fake_quantize(x, spec), spec)
    assert bool((fq >= lo - 1e-6).all()) and bool((fq <= hi + 1e-6).all())
    assert codes.shape == to_groups(x, spec).shape


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [None, 8])
def test_representable_values_round_trip_exactly(bits, symmetric, group):
    spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=group)
    g = torch.Generator().manual_seed(bits)
    rows, cols = 5, 32
    size = group or cols
    # with dynamic parameters the symmetric grid is [-qmax, qmax] (qmin = -qmax - 1 is unused)
    low = -spec.qmax if symmetric else 0
    codes = torch.randint(low, spec.qmax + 1, (rows, cols // size, size), generator=g)
    if symmetric:
        zero = torch.zeros(rows, cols // size, 1, dtype=torch.long)
        codes[..., 0] = spec.qmax  # the largest magnitude sets the scale
        codes[..., 1] = -spec.qmax
    else:
        zero = torch.randint(0, spec.qmax + 1, (rows, cols // size, 1), generator=g)
        codes[..., 0], codes[..., 1] = 0, spec.qmax  # both grid ends present
        codes[..., 2] = zero[..., 0]  # and zero
    scale = 2.0 ** torch.randint(-8, 4, (rows, cols // size, 1), generator=g).float()
    x = ((codes - zero) * scale).reshape(rows, cols)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        xd = x.to(dtype)
        if dtype == torch.bfloat16 and bits == 8:
            continue  # 8-bit codes times powers of two need 9 significant bits
        out = fake_quantize(xd, spec)
        assert out.dtype == dtype
        assert torch.equal(out, xd), dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_rows_stay_zero_and_dtype_is_kept(dtype, symmetric):
    spec = QuantSpec(bits=4, symmetric=symmetric, group_size=8)
    x = random_tensor(0, 4, 32, 1.0, dtype)
    x[1] = 0
    x[2, 8:16] = 0
    out = fake_quantize(x, spec)
    assert out.dtype == dtype and out.shape == x.shape
    assert bool(torch.isfinite(out).all())
    assert bool((out[1] == 0).all()) and bool((out[2, 8:16] == 0).all())
    scale, zero = quant_params(x, spec)
    assert scale.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref = fake_quantize(x.to(scale.dtype), spec).to(dtype)
    assert torch.equal(out, ref)  # half inputs: computed in float32, rounded once at the end


def test_clip_ratio_shrinks_the_scale_and_disabled_is_identity():
    x = random_tensor(1, 4, 16, 1.0)
    s1, _ = quant_params(x, QuantSpec(bits=4))
    s2, _ = quant_params(x, QuantSpec(bits=4, clip_ratio=0.5))
    assert torch.allclose(s2, 0.5 * s1)
    fp = QuantSpec()
    assert not fp.enabled and fake_quantize(x, fp) is x and ActQuantizer(fp)(x) is x


def test_symmetric_asymmetric_grid_ends():
    x = torch.tensor([[-1.0, 0.25, 0.5, 1.0]])
    sym = QuantSpec(bits=3)
    assert (sym.qmin, sym.qmax) == (-4, 3)
    scale, zero = quant_params(x, sym)
    assert scale.item() == pytest.approx(1 / 3) and zero.item() == 0
    asym = QuantSpec(bits=3, symmetric=False)
    assert (asym.qmin, asym.qmax) == (0, 7)
    pos = torch.tensor([[0.5, 1.0, 3.5]])  # range widened to contain 0
    scale, zero = quant_params(pos, asym)
    assert scale.item() == pytest.approx(0.5) and zero.item() == 0
    assert torch.equal(fake_quantize(pos, asym), pos)


def test_ste_gradient_is_identity():
    x = random_tensor(2, 3, 16, 1.0).requires_grad_()
    spec = QuantSpec(bits=3, group_size=4)
    y = fake_quantize_ste(x, spec)
    assert torch.equal(y.detach(), fake_quantize(x.detach(), spec))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x2 = x.detach().clone().requires_grad_()
    ActQuantizer(spec, ste=True)(x2).pow(2).sum().backward()
    assert torch.allclose(x2.grad, 2 * fake_quantize(x2.detach(), spec))


def test_ste_forward_is_the_quantizer_alone():
    """The straight-through quantizer's forward runs exactly fake_quantize's operations (one kernel
    launch on CUDA), not two more passes over the activations (x + (fq(x) - x).detach())."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    spec = QuantSpec(bits=4, symmetric=False)
    x = random_tensor(7, 4, 64, 1.0).requires_grad_()
    xd = x.detach()
    with Ops() as plain:
        fake_quantize(xd, spec)
    with Ops() as ste:
        y = fake_quantize_ste(x, spec)
    assert ste.ops == plain.ops and y.requires_grad


def test_act_quantizer_is_per_token_and_kv_is_per_head():
    spec = QuantSpec(bits=4, symmetric=False)
    act = torch.randn(2, 5, 64)
    out = ActQuantizer(spec)(act)
    for b in range(2):
        for t in range(5):
            assert torch.equal(out[b, t], fake_quantize(act[b, t][None], spec)[0])
    kv = torch.randn(2, 3, 7, 16)  # [batch, heads, seq, head_dim]
    per_group = QuantSpec(bits=4, group_size=8)
    out = ActQuantizer(per_group)(kv)
    assert torch.equal(out, fake_quantize(kv.reshape(-1, 8), QuantSpec(bits=4)).reshape(kv.shape))
    assert "int4" in repr(ActQuantizer(per_group))


@pytest.mark.parametrize("bits", [0, 1, 9, 15, 17, True, 4.0])
def test_bad_bits(bits):
    with pytest.raises(ConfigError, match="bits must be in 2..8 or 16"):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("clip", [0, 0.0, 1.5, -0.1, float("nan")])
def test_bad_clip_ratio(clip):
    with pytest.raises(ConfigError, match="clip_ratio"):
        QuantSpec(bits=4, clip_ratio=clip)


@pytest.mark.parametrize("group", [0, -8, True, 2.5])
def test_bad_group_size(group):
    with pytest.raises(ConfigError, match="group_size"):
        QuantSpec(bits=4, group_size=group)


def test_group_size_must_divide_the_last_dim():
    with pytest.raises(ConfigError) as info:
        fake_quantize(torch.randn(4, 40), QuantSpec(bits=4, group_size=16))
    assert "16" in str(info.value) and "40" in str(info.value)
    with pytest.raises(ConfigError, match="48"):
        quant_params(torch.randn(2, 48), QuantSpec(bits=4, group_size=32))
    with pytest.raises(ConfigError, match="does not broadcast"):
        fake_quantize(torch.randn(4, 32), QuantSpec(bits=4), torch.ones(4, 1))  # needs [4, 1, 1]


def test_dict_round_trip_and_bad_keys():
    spec = QuantSpec(bits=3, symmetric=False, group_size=32, clip_ratio=0.9)
    assert spec.to_dict() == {"bits": 3, "symmetric": False, "group_size": 32, "clip_ratio": 0.9, "version": 1}
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    assert QuantSpec.from_dict({}) == QuantSpec()
    numpy_spec = QuantSpec(bits=np.int64(3), symmetric=False, group_size=np.int32(32), clip_ratio=np.float32(0.9))
    assert numpy_spec.to_dict() == {**spec.to_dict(), "clip_ratio": float(np.float32(0.9))}
    assert type(numpy_spec.bits) is int and type(numpy_spec.clip_ratio) is float
    with pytest.raises(ConfigError, match="groupsize"):
        QuantSpec.from_dict({"bits": 4, "groupsize": 32})
    with pytest.raises(ConfigError, match="version"):
        QuantSpec(bits=4, version=2)
    with pytest.raises(TypeError):
        fake_quantize(torch.arange(8).reshape(1, 8), QuantSpec(bits=4))


# -- differentiable fake quantizers for rotation learning ------------------------------------
@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(4, symmetric=False), QuantSpec(3, group_size=8),
                                  QuantSpec(4, clip_ratio=0.9)])
def test_scale_grad_quantizer_has_the_same_values(spec):
    from rotaquant.quant.quantizer import fake_quantize_scale_grad

    x = torch.randn(5, 32)
    assert torch.equal(fake_quantize_scale_grad(x, spec), fake_quantize(x, spec))


def test_scale_grad_differs_from_identity_only_through_the_scale():
    from rotaquant.quant.quantizer import ActQuantizer, ste_quantizer

    x = torch.randn(4, 16, requires_grad=True)
    ActQuantizer(QuantSpec(4), ste="identity")(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    y = x.detach().clone().requires_grad_(True)
    ActQuantizer(QuantSpec(4), ste="scale")(y).sum().backward()
    # every entry keeps the straight-through 1; the row's max |x| also gets the scale's term
    amax = y.detach().abs().argmax(dim=-1)
    other = torch.ones_like(y, dtype=torch.bool)
    other[torch.arange(4), amax] = False
    assert torch.allclose(y.grad[other], torch.ones(int(other.sum())))
    assert not torch.allclose(y.grad[~other], torch.ones(4))
    with pytest.raises(ConfigError, match="straight-through"):
        ste_quantizer("nope")
