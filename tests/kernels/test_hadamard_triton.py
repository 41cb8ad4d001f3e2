"""Kernel-vs-reference tests of the Triton Hadamard kernels (transform, fused quant, autograd).

Marked ``gpu``: run with ``-m gpu`` on a CUDA machine with Triton; skipped elsewhere.  They also
run on CPU under Triton's interpreter (``TRITON_INTERPRET=1`` with Triton installed), where the
kernel logic is checked on fewer rows.
"""

from __future__ import annotations

import math

import pytest
import torch

import rotaquant.kernels as kernels
from rotaquant.quant.quantizer import (
    QuantSpec,
    fake_quantize,
    quant_params,
    quantize_to_int,
    to_groups,
)
from rotaquant.rotation.hadamard import hadamard_factorization, hadamard_matrix
from rotaquant.rotation.transform import hadamard_reference, hadamard_transform
from tests.kernels.triton_env import DEVICE, INTERPRET, ON_GPU, TRITON_MARKS

pytestmark = TRITON_MARKS

# the orders of issue 11's grid, core orders the library builds (m = 12..924; 156 and 172 from the
# issue have no construction here), folded small
# Sylvester parts (k < 4) and the powers of two from 1 to 16384
ORDERS = [64, 128, 576, 1536, 4096, 5120, 11008, 14336,
          12, 20, 28, 40, 44, 52, 60, 68, 76, 80, 84, 96, 108, 140, 148, 164, 180, 344, 896, 4864, 29568,
          1, 2, 4, 8, 16, 32, 256, 1024, 8192, 16384]
ROWS = [1, 16, 2048] if ON_GPU else [1, 16, 37]
MANTISSA = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}


def _ulp(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` at ``|v|`` (normal range), as float64."""
    e = torch.floor(torch.log2(v.abs().double().clamp_min(2.0**-14)))
    return torch.pow(2.0, e - MANTISSA[dtype])


def _transform(x, normalize=True, transpose=False):
    from rotaquant.kernels import hadamard_triton

    return hadamard_triton.transform(x, normalize, transpose)


GRID = [64, 128, 576, 1536, 4096, 5120, 11008, 14336, 12, 80, 96]  # bfloat16/float32: fewer compiles
CASES = ([pytest.param(n, torch.float16, id=f"fp16-{n}") for n in ORDERS]
         + [pytest.param(n, torch.bfloat16, id=f"bf16-{n}") for n in GRID]
         + [pytest.param(n, torch.float32, id=f"fp32-{n}") for n in GRID])


@pytest.mark.parametrize(("n", "dtype"), CASES)
def test_kernel_matches_reference(n, dtype):
    if INTERPRET and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter has no bfloat16 dot")
    if INTERPRET and n > 4096:
        pytest.skip("large orders take minutes in the interpreter")
    g = torch.Generator().manual_seed(n)
    for rows in ROWS:
        x = torch.randn(rows, n, generator=g).to(dtype).to(DEVICE)
        truth = hadamard_reference(x.double())
        y, ref = _transform(x), hadamard_reference(x)
        assert y.dtype == dtype and y.shape == x.shape
        if dtype == torch.float32:  # float32 accumulation over up to ~n terms, as the reference
            bound = max(2e-6 * truth.norm(), 2 * (ref.double() - truth).norm())
            assert (y.double() - truth).norm() <= bound
        else:  # both round once from (nearly) exact sums: at most one unit in the last place
            # apart, plus 1/16 ulp of the row's largest value where an output cancels far below it
            diff = (y.double() - ref.double()).abs()
            big = y.abs().amax(-1, keepdim=True)
            bound = _ulp(torch.maximum(y.abs(), ref.abs()), dtype) + _ulp(big, dtype) / 16
            worst = (diff / bound).max().item()
            assert worst <= 1.0, f"rows={rows}: {worst:.2f} of the bound"
            assert (y.double() - truth).norm() <= 1.05 * (ref.double() - truth).norm() + 1e-6
        yt = _transform(x, False, True)  # x @ H, unnormalised (the backward pass)
        reft = hadamard_reference(x.double(), False, True)
        assert (yt.double() - reft).norm() <= (4e-3 if dtype != torch.float32 else 3e-6) * reft.norm()


@pytest.mark.skipif(not ON_GPU, reason="dispatch needs CUDA tensors")
def test_dispatch_picks_kernel_and_falls_back(monkeypatch):
    x = torch.randn(8, 1536, device="cuda", dtype=torch.float16)
    assert kernels.hadamard_supported(x)
    assert torch.equal(hadamard_transform(x), _transform(x))
    assert torch.equal(hadamard_transform(x, backend="reference"), hadamard_reference(x))
    monkeypatch.setenv("ROTAQUANT_HADAMARD_BACKEND", "reference")
    assert torch.equal(hadamard_transform(x), hadamard_reference(x))
    x64 = x.double()  # float64 is not a kernel dtype: reference
    assert not kernels.hadamard_supported(x64)
    assert torch.allclose(hadamard_transform(x64), hadamard_reference(x64))
    xs = torch.randn(4, 3, 576, device="cuda")[:, 1]  # strided rows
    assert torch.allclose(hadamard_transform(xs), hadamard_reference(xs), atol=1e-5)


SPECS = [QuantSpec(4), QuantSpec(4, symmetric=False, group_size=32), QuantSpec(8, clip_ratio=0.9),
         QuantSpec(8, symmetric=False, group_size=128), QuantSpec(4, group_size=64, sym_grid="full")]
FUSED = ([pytest.param(spec, n, torch.float16, id=f"fp16-{n}-{spec}")
          for spec in SPECS for n in (64, 576, 1536, 4096, 14336)]
         + [pytest.param(QuantSpec(4), n, torch.bfloat16, id=f"bf16-{n}-int4") for n in (576, 4096)])


@pytest.mark.parametrize(("spec", "n", "dtype"), FUSED)
def test_fused_quant_matches_reference_quantizer(spec, n, dtype):
    """Codes, scales and zero points equal the reference quantizer (on the same device) applied to
    the kernel's own transform exactly.  Against the full reference path, where the two transforms
    round an element to neighbouring values (one ulp apart), a code can move by one step, and for
    asymmetric grids by one more through the zero point, so +-1 (symmetric) / +-2 (asymmetric)."""
    if INTERPRET and (dtype == torch.bfloat16 or n > 4096):
        pytest.skip("interpreter: no bfloat16 dot; large orders are slow")
    from rotaquant.kernels import hadamard_triton

    if not hadamard_triton.fused_supported(n, spec):
        pytest.skip(f"{spec} is not fused for {n}")
    x = (torch.randn(ROWS[-1], n, generator=torch.Generator().manual_seed(n)) * 2).to(dtype).to(DEVICE)
    codes, scale, zero = hadamard_triton.launch(x, True, False, 1, spec)
    y = _transform(x)
    rs, rz = quant_params(y, spec)
    rc = quantize_to_int(to_groups(y, spec), rs, rz, spec).reshape(x.shape)
    assert torch.equal(codes.int(), rc)
    assert torch.equal(scale, rs.reshape(scale.shape)) and torch.equal(zero, rz.reshape(zero.shape))
    fq = hadamard_triton.launch(x, True, False, 2, spec)[0]
    assert torch.equal(fq, fake_quantize(y, spec))
    yref = hadamard_reference(x)  # the full reference path
    rs2, rz2 = quant_params(yref, spec)
    rc2 = quantize_to_int(to_groups(yref, spec), rs2, rz2, spec).reshape(x.shape)
    assert (codes.int() - rc2).abs().max() <= (1 if spec.symmetric else 2)
    assert (codes.int() != rc2).float().mean() < 0.01
    # the public API returns the same through the dispatch
    if ON_GPU:
        c2, s2, z2 = kernels.hadamard_quantize(x, spec)
        assert torch.equal(c2, codes) and torch.equal(s2.reshape(scale.shape), scale)


@pytest.mark.parametrize("n", [64, 576, 1536, 4096])
@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(4, group_size=64, sym_grid="full")], ids=str)
def test_fake_quant_dispatch_two_launches_for_core_orders(monkeypatch, n, spec):
    """Orders with a core fake-quantize as the transform, then the fake-quant kernel (faster than
    the fused launch on the H200); pure Sylvester orders keep the fused launch. Either way the
    values are the fused launch's, bit for bit."""
    from rotaquant.kernels import hadamard_triton as ht
    from rotaquant.kernels import quant_triton

    monkeypatch.setenv("ROTAQUANT_QUANT_BACKEND", "triton")  # the interpreter's CPU tensors take the kernel too
    monkeypatch.setattr(ht, "TWO_LAUNCH_ROWS", ROWS[-1])  # the test's rows count as many
    assert not ht.two_launches(n, ROWS[-1] - 1)  # few rows (decode): one launch, the host's time counts
    assert ht.two_launches(n, ROWS[-1]) == (hadamard_factorization(n)[0] > 1)
    calls = []
    launch_fq = quant_triton.launch_fake_quant
    monkeypatch.setattr(quant_triton, "launch_fake_quant", lambda *a: calls.append(a) or launch_fq(*a))
    x = (torch.randn(ROWS[-1], n, generator=torch.Generator().manual_seed(n)) * 2).half().to(DEVICE)
    got = ht.hadamard_fake_quant_autograd(x, spec)
    assert len(calls) == (1 if ht.two_launches(n, ROWS[-1]) else 0)
    assert torch.equal(got, ht.launch(x, True, False, 2, spec)[0])
    signs = (torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(1)) * 2 - 1).half().to(DEVICE)
    assert torch.equal(ht.signed(x, signs, spec), ht.launch(x, True, False, 2, spec, signs=signs)[0])


@pytest.fixture
def folded(monkeypatch):
    """Plans with 3 Sylvester bits folded into cores (``ROTAQUANT_HADAMARD_FOLD=3``), in caches of
    the test's own: the process's setups stay alive, so no compiled-kernel key is reused."""
    import functools

    from rotaquant.kernels import hadamard_triton as ht

    monkeypatch.setattr(ht, "TUNING", (0, 0, 0, 3))
    monkeypatch.setattr(ht, "_setup", functools.cache(ht._setup.__wrapped__))
    monkeypatch.setattr(ht, "_core_operand", functools.lru_cache(maxsize=128)(ht._core_operand.__wrapped__))
    monkeypatch.setattr(ht, "_COMPILED", {})
    monkeypatch.setattr(ht, "_READY", {})
    return ht


@pytest.mark.parametrize("n", [1536, 576, 5120, 896, 14336])
def test_folded_core_plans_match_reference(folded, n):
    """The tuning knob's plans (order 1536: a 96-order core and 16-wide Sylvester instead of the
    default 48 and 32) compute the same transform and fused quantization as the default plans."""
    if INTERPRET and n > 4096:
        pytest.skip("large orders take minutes in the interpreter")
    plan = folded.plan_for(n)
    m = hadamard_factorization(n)[0]
    assert plan.M > m or n == 576  # 576 = 36 * 16 keeps its 16-wide Sylvester part
    test_kernel_matches_reference(n, torch.float16)
    for spec in SPECS:
        if folded.fused_supported(n, spec):
            test_fused_quant_matches_reference_quantizer(spec, n, torch.float16)


def test_plan_skips_core_padding():
    """Cores above 256 are cut into the output blocks with the fewest padded columns and the
    contraction stops at the last chunk holding real columns (the results stay exact: the tests
    above cover 344 = M and 11008 = 344 * 32)."""
    from rotaquant.kernels.hadamard_triton import plan_for

    p = plan_for(11008)
    assert (p.M, p.MP, p.IB, p.blocks, p.MK) == (344, 512, 128, 3, 384)
    assert p.IB * p.blocks >= p.M and p.MK >= p.M
    p = plan_for(29568)  # 924: four blocks of 256 (128s would also pad to 1024)
    assert (p.IB, p.blocks, p.MK) == (256, 4, 960)
    p = plan_for(576)  # small cores: one block, the whole padded core
    assert (p.M, p.IB, p.blocks, p.MK) == (36, 64, 1, 64)


@pytest.mark.parametrize("n", [80, 576, 1536, 4096, 11008])
def test_autograd(n):
    """Gradients of the kernel path equal ``grad @ H / sqrt(n)`` (the transpose: Paley I cores
    such as 12 and 20 are not symmetric), also through the fused fake quantizer (STE)."""
    if INTERPRET and n > 4096:
        pytest.skip("slow in the interpreter")
    from rotaquant.kernels import hadamard_triton

    h = hadamard_matrix(n).to(DEVICE) / math.sqrt(n)
    x = torch.randn(5, n, device=DEVICE, requires_grad=True)
    g = torch.randn(5, n, device=DEVICE)
    y = hadamard_triton.hadamard_autograd(x)
    y.backward(g)
    assert torch.allclose(y.double(), x.detach().double() @ h.T, atol=1e-5)
    assert torch.allclose(x.grad.double(), g.double() @ h, atol=1e-5)
    x.grad = None
    if hadamard_triton.fused_supported(n, QuantSpec(4)):
        hadamard_triton.hadamard_fake_quant_autograd(x, QuantSpec(4)).backward(g)
        assert torch.allclose(x.grad.double(), g.double() @ h, atol=1e-5)
    # double backward: the backward is itself differentiable
    x2 = torch.randn(3, n, device=DEVICE, dtype=torch.float32, requires_grad=True)
    (gx,) = torch.autograd.grad(hadamard_triton.hadamard_autograd(x2).square().sum(), x2, create_graph=True)
    assert torch.allclose(gx, 2 * x2, atol=1e-4)  # H orthogonal: d/dx |Hx|^2 = 2x
    gx.sum().backward()
    assert x2.grad is not None


@pytest.mark.parametrize("fused", [False, True], ids=["transform", "fake-quant"])
def test_transposed_heads_processed_in_memory_order(fused):
    """Queries/keys after RoPE are [batch, heads, seq, head_dim] views of [batch, seq, heads,
    head_dim] memory: the kernel reads them in place (no reshape copy), the output keeps the
    input's strides and equals the result on a contiguous copy."""
    from rotaquant.kernels.hadamard_triton import hadamard_fake_quant_autograd, transform

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, 64, generator=g).to(DEVICE, torch.float16).transpose(1, 2)  # [2, 3, 5, 64]
    assert not x.is_contiguous()
    spec = QuantSpec(4, symmetric=False)
    run = (lambda t: hadamard_fake_quant_autograd(t, spec)) if fused else (lambda t: transform(t, True))
    got, ref = run(x), run(x.contiguous())
    assert got.stride() == x.stride() and got.shape == x.shape
    assert torch.equal(got, ref)


@pytest.mark.parametrize("n", [64, 576, 1536, 12, 80, 344])
def test_sign_flip_on_load_equals_flipping_first(n):
    """``signs=`` (a random Hadamard's +-1 per column, applied as the kernel loads x) gives bit
    for bit the kernel's result on ``x * signs``: transform, codes + scales, fake quantization,
    and the in-place rows of a transposed [batch, heads, seq, head_dim] view."""
    from rotaquant.kernels.hadamard_triton import launch, signed

    g = torch.Generator().manual_seed(n)
    x = (torch.randn(19, n, generator=g) * 3).to(DEVICE, torch.float16)
    signs = (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(DEVICE, torch.float16)
    flipped = x * signs
    assert torch.equal(launch(x, True, signs=signs)[0], launch(flipped, True)[0])
    assert torch.equal(signed(x, signs), _transform(flipped))
    for spec in (QuantSpec(4), QuantSpec(4, symmetric=False), QuantSpec(8, group_size=4 if n == 12 else 16)):
        from rotaquant.kernels.hadamard_triton import fused_supported

        if not fused_supported(n, spec):
            continue
        assert all(torch.equal(a, b) for a, b in zip(launch(x, True, False, 1, spec, signs=signs),
                                                     launch(flipped, True, False, 1, spec), strict=True))
        assert torch.equal(signed(x, signs, spec), launch(flipped, True, False, 2, spec)[0])
    xt = torch.randn(2, 5, 3, n, generator=g).to(DEVICE, torch.float16).transpose(1, 2)
    got = signed(xt, signs)
    assert got.stride() == xt.stride() and torch.equal(got, _transform((xt * signs).contiguous()))
    with pytest.raises(ValueError, match="signs"):
        launch(x, True, signs=signs.float())


def test_online_stage_flips_signs_in_the_kernel_on_cuda():
    """An OnlineHadamard with random signs gives, through the kernel's sign flip, exactly the values
    of the two steps (flip, then transform / fused fake quantization); the cast signs follow the
    buffer when it changes."""
    if not ON_GPU:
        pytest.skip("the stage takes the kernel path for CUDA tensors only")
    from rotaquant.quant.quantizer import ActQuantizer
    from rotaquant.rotation.online import OnlineHadamard

    g = torch.Generator().manual_seed(5)
    for n in (64, 1536, 576):
        signs = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
        stage = OnlineHadamard(n, signs).to(DEVICE)
        x = torch.randn(33, n, generator=g).to(DEVICE, torch.float16)
        two_steps = hadamard_transform(x * stage.signs.to(x.dtype))
        assert torch.equal(stage(x), two_steps)
        quantizer = ActQuantizer(QuantSpec(4, symmetric=False))
        assert torch.equal(stage.fused_forward(x, quantizer), quantizer(two_steps))
        stage.signs.mul_(-1)  # the buffer changes in place: the cast copy must follow
        assert torch.equal(stage(x), hadamard_transform(x * stage.signs.to(x.dtype)))
