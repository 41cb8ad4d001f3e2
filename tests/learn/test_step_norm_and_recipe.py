"""SpinQuant's step cap (1-norm of the Cayley direction) and learning with the deployed recipe
(asymmetric activations/KV, o_proj per head), then PTQ with the learned matrices."""

from __future__ import annotations

import pytest
import torch

import rotaquant
from rotaquant.errors import ConfigError
from rotaquant.jobs.files import write_rotation_file
from rotaquant.learn.cayley import (
    CayleyAdam,
    CayleySGD,
    orthogonality_error,
    skew_direction,
    step_cap_norm,
)
from rotaquant.learn.config import OptimizeConfig
from rotaquant.learn.train import learn, make_optimizer
from rotaquant.learn.trainable import make_trainable
from rotaquant.rotation.matrices import RotationStore
from rotaquant.rotation.rotate import resolve_spec
from tests.conftest import tiny_model

DEPLOYED = dict(w_bits=4, a_bits=4, k_bits=4, v_bits=4, a_asym=True, k_asym=True, v_asym=True,
                o_proj_input="per_head")


def test_step_cap_norms_on_a_hand_made_matrix():
    w = torch.tensor([[0.0, 2.0, -1.0], [-2.0, 0.0, 3.0], [1.0, -3.0, 0.0]], dtype=torch.float64)
    assert step_cap_norm(w, "one") == 5.0  # column sums 3, 5, 4
    assert step_cap_norm(w, "frobenius") == pytest.approx(28.0**0.5)


@pytest.mark.parametrize("cls", [CayleySGD, CayleyAdam])
def test_one_norm_caps_the_step_and_keeps_orthogonality(cls):
    gen = torch.Generator().manual_seed(0)
    x = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0]
    p = torch.nn.Parameter(x.float().clone())
    p.grad = torch.randn(16, 16, generator=gen) * 10  # large: the cap, not lr, sets the step
    opt = cls([p], lr=100.0, step_norm="one")
    opt.step()
    alpha = opt.state[p]["last_alpha"]
    if cls is CayleySGD:
        w = skew_direction(-p.grad.double(), x)
        assert alpha == pytest.approx(1.0 / (step_cap_norm(w, "one") + 1e-8), rel=1e-6)
    assert alpha < 100.0
    assert orthogonality_error(opt.state[p]["master"]) < 1e-12
    with pytest.raises(ConfigError, match="step_norm"):
        cls([p], lr=1.0, step_norm="two")


def _windows(n=8, seqlen=16):
    return torch.randint(0, 96, (n, seqlen), generator=torch.Generator().manual_seed(0))


def test_config_flag_reaches_the_optimizer():
    cfg = OptimizeConfig(a_bits=4, cayley_step_norm="one")
    p = torch.nn.Parameter(torch.eye(4))
    assert make_optimizer(cfg, [p]).param_groups[0]["step_norm"] == "one"
    assert OptimizeConfig(a_bits=4).cayley_step_norm == "frobenius"
    with pytest.raises(ValueError):
        OptimizeConfig(a_bits=4, cayley_step_norm="two")


def test_learn_with_the_deployed_recipe_then_ptq(tmp_path):
    """optimize's deployed recipe end to end: per-head o_proj quantizer during learning, the learned
    file loaded by PTQ with the same recipe; the learned rotation lowers the learning loss."""
    cfg = OptimizeConfig(**DEPLOYED, nsamples=8, seqlen=16, iterations=6, batch_size=4, lr=1.0, device="cpu",
                         cayley_step_norm="one")
    model = tiny_model("llama", seed=0)
    spec = resolve_spec(model, "auto")
    tm = make_trainable(model, spec, RotationStore(spec, model.config, seed=0), cfg)
    stages = {type(m).__name__ for m in model.modules()}
    assert "ActQuantizer" in stages
    heads = [m for n, m in model.named_modules() if n.endswith("o_proj.rq_input.stages.a_quant")]
    assert heads and heads[0].spec.group_size == model.config.head_dim and not heads[0].spec.symmetric
    res = learn(tm, _windows(), cfg, progress=False)
    assert res.orthogonality_error < 1e-6 and all(torch.isfinite(torch.tensor(res.losses)))
    path = write_rotation_file(tmp_path / "R.safetensors", res.matrices)
    fresh = tiny_model("llama", seed=0)
    state = rotaquant.quantize(fresh, {"preset": "spinquant", **DEPLOYED, "w_method": "rtn", "rotation_path": str(path)},
                               progress=False)
    assert state.act_quantizers > 0 and state.kv_modules > 0
    with torch.no_grad():
        assert torch.isfinite(fresh(_windows(2)).logits).all()
