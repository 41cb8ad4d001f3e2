"""The Triton GPTQ block kernel against the torch column loop: bit-identical results.

Marked ``gpu``: run with ``-m gpu`` on a CUDA machine with Triton; skipped elsewhere. They also
run on CPU under Triton's interpreter (``TRITON_INTERPRET=1`` with Triton installed).
"""

from __future__ import annotations

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.quant.gptq import GPTQConfig, HessianAccumulator, gptq_quantize_weight
from rotaquant.quant.quantizer import QuantSpec
from tests.kernels.triton_env import DEVICE, ON_GPU, TRITON_MARKS

pytestmark = TRITON_MARKS
OUT, IN = (300, 256) if ON_GPU else (40, 48)

CASES = {
    "per-channel": (QuantSpec(4), GPTQConfig(block_size=16), False),
    "per-channel clip, one block": (QuantSpec(4), GPTQConfig(), True),
    "groups inside blocks": (QuantSpec(3, symmetric=False, group_size=8), GPTQConfig(block_size=16), False),
    "groups + act-order + clip": (QuantSpec(3, symmetric=False, group_size=8),
                                  GPTQConfig(block_size=16, act_order=True), True),
    "static groups, odd blocks": (QuantSpec(4, group_size=16),
                                  GPTQConfig(block_size=5, act_order=True, static_groups=True), False),
    "groups across blocks": (QuantSpec(2, symmetric=False, group_size=16), GPTQConfig(block_size=7), True),
    "full symmetric grid": (QuantSpec(4, group_size=16, sym_grid="full"), GPTQConfig(block_size=32), False),
}


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * IN, IN, generator=g) @ (torch.randn(IN, IN, generator=g) / 7 + torch.eye(IN))
    x = x * torch.linspace(0.2, 3, IN)
    x[:, 5] = 0  # a dead input
    acc = HessianAccumulator(IN)
    acc.add(x)
    return torch.randn(OUT, IN, generator=g).to(DEVICE), acc.hessian.to(DEVICE)


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_the_torch_loop_bit_for_bit(case):
    spec, cfg, clip = CASES[case]
    w, h = _problem()
    ref = gptq_quantize_weight(w, h, spec, cfg, clip, return_params=True, backend="torch")
    got = gptq_quantize_weight(w, h, spec, cfg, clip, return_params=True, backend="triton")
    for what, a, b in zip(("weight", "scale", "zero"), ref, got, strict=True):
        assert torch.equal(a, b), _difference(what, a, b)


def _difference(what, a, b):
    """Where two results differ: enough to tell a rounding tie from a wrong column or group."""
    diff = (a != b).reshape(a.shape[0], -1)
    cols = diff.any(0).nonzero().flatten().tolist()
    return (f"{what}: {int(diff.sum())} of {diff.numel()} differ, in {len(diff.any(1).nonzero())} rows and columns "
            f"{cols[:12]}{'...' if len(cols) > 12 else ''}; max |diff| {(a - b).abs().max().item():.3g}")


def test_kernel_refuses_what_it_cannot_run():
    w, h = _problem()
    with pytest.raises(ConfigError, match="float32"):
        gptq_quantize_weight(w.double(), h, QuantSpec(4), backend="triton")
    with pytest.raises(ConfigError, match="block_size"):
        gptq_quantize_weight(w, h, QuantSpec(4), GPTQConfig(block_size=512), backend="triton")


@pytest.mark.skipif(not ON_GPU, reason="TF32 tensor cores need a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_hessian_of_half_activations_on_tf32_is_exact_up_to_summation(dtype):
    """Half-precision activations accumulate on TF32 tensor cores (every half value is a TF32
    value): the Hessian equals the float64 one to float32 accumulation accuracy, and the global
    matmul precision setting is left as it was."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, 512, generator=g) * torch.linspace(0.01, 30, 512)).to(dtype)
    before = torch.backends.cuda.matmul.fp32_precision
    acc = HessianAccumulator(512, device="cuda")
    for part in x.split(1000):
        acc.add(part.to("cuda"))
    assert torch.backends.cuda.matmul.fp32_precision == before
    x64 = x.double()
    ref = 2 * x64.T @ x64 / x.shape[0]
    err = (acc.hessian.double().cpu() - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, err  # TF32 rounding of float32 inputs would give ~1e-3
