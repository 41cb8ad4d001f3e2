import math

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.eval.capture import TensorStats, capture
from tests.conftest import tiny_model


def _windows(n=3, seqlen=16):
    return torch.randint(0, 96, (n, seqlen), generator=torch.Generator().manual_seed(0))


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._forward_hooks_with_kwargs
               for m in model.modules())


def test_streaming_stats_equal_the_whole_tensor_stats():
    x = torch.randn(50, 8, dtype=torch.float64) * torch.linspace(0.1, 5, 8, dtype=torch.float64) + 0.3
    x[3, 2] = 40.0
    st = TensorStats(outlier_k=2.0)
    for part in x.split(7):
        st.update(part)
    torch.testing.assert_close(st.absmax, x.abs().amax(0))
    c = x - x.mean()
    assert st.kurtosis == pytest.approx(((c**4).mean() / (c**2).mean() ** 2).item(), rel=1e-9)
    dev = (x - x.mean(-1, keepdim=True)).abs()
    expected = (dev > 2.0 * x.std(-1, keepdim=True, unbiased=False)).double().mean().item()
    assert st.outlier_share == pytest.approx(expected)
    assert st.numel == x.numel()


def test_gaussian_kurtosis_is_three():
    st = TensorStats(stats=("kurtosis",))
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        st.update(torch.randn(20000, 16, generator=gen))
    assert st.kurtosis == pytest.approx(3.0, abs=0.05)
    assert math.isnan(st.outlier_share) and st.absmax is None


def test_capture_records_inputs_outputs_weights_and_removes_hooks():
    model = tiny_model("llama")
    res = capture(model, ["*.layers.*.mlp.down_proj", "*.layers.0.self_attn"], _windows(),
                  what=("input", "output", "weight"), batch_size=2)
    assert list(res) == ["model.layers.0.self_attn", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    down = res["model.layers.1.mlp.down_proj"]
    assert down["input"].absmax.shape == (96,) and down["output"].absmax.shape == (64,)
    assert down["input"].numel == 3 * 16 * 96
    torch.testing.assert_close(down["weight"].absmax, model.model.layers[1].mlp.down_proj.weight.abs().amax(0).double())
    assert res["model.layers.0.self_attn"]["output"].absmax.shape == (64,)  # tuple output: first item
    assert _no_hooks(model)


def test_hooks_are_removed_when_the_forward_raises():
    model = tiny_model("llama")

    def boom(module, args):
        raise RuntimeError("boom")

    # the failure happens after capture's hooks on layer 0 have run
    handle = model.model.layers[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, "*.layers.*", _windows(), what=("input", "output"))
    handle.remove()
    assert _no_hooks(model)
    with pytest.raises(IndexError):  # token ids outside the vocabulary
        capture(model, "*q_proj", torch.full((1, 4), 10_000), what=("input",))
    assert _no_hooks(model)


def test_capture_names_a_bad_pattern_and_bad_arguments():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="no module"):
        capture(model, "*nothing_here", _windows())
    with pytest.raises(ConfigError, match="choose"):
        capture(model, "*q_proj", _windows(), what=("gradient",))
    with pytest.raises(ConfigError, match="statistics"):
        capture(model, "*q_proj", _windows(), stats=("median",))
    assert _no_hooks(model)
