"""Cayley optimizers: exact orthogonality over many steps, descent on a known objective."""

from __future__ import annotations

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.learn.cayley import (
    CayleyAdam,
    CayleySGD,
    cayley_retract,
    orthogonality_error,
    skew_direction,
)
from rotaquant.rotation.hadamard import make_rotation


def _target_problem(n: int = 16, seed: int = 0):
    """min ||X - Q||^2 over rotations: the minimum is X = Q (a rotation), loss 0."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]  # same connected component as the identity start
    return q


@pytest.mark.parametrize("opt_cls,kwargs", [(CayleySGD, dict(lr=0.5, momentum=0.9)), (CayleySGD, dict(lr=1.5)),
                                             (CayleyAdam, dict(lr=0.1))])
def test_orthogonality_kept_over_1000_steps(opt_cls, kwargs):
    torch.manual_seed(0)
    x = torch.nn.Parameter(make_rotation(24, "hadamard", seed=1).float())
    opt = opt_cls([x], **kwargs)
    for _ in range(1000):
        opt.zero_grad()
        x.grad = torch.randn_like(x) * 3  # noisy, large gradients: the worst case for drift
        opt.step()
    assert orthogonality_error(x) < 1e-4
    assert orthogonality_error(opt.state[x]["master"]) < 1e-10


@pytest.mark.parametrize("opt_cls,kwargs", [(CayleySGD, dict(lr=0.2, momentum=0.5)), (CayleyAdam, dict(lr=0.15))])
def test_descends_to_target_rotation(opt_cls, kwargs):
    q = _target_problem()
    x = torch.nn.Parameter(torch.eye(16, dtype=torch.float64))
    opt = opt_cls([x], **kwargs)
    start = (x.detach() - q).square().sum().item()
    for i in range(300):
        for group in opt.param_groups:  # a decaying step, as in training, lets Adam settle
            group["lr"] = kwargs["lr"] * (1 - i / 300)
        opt.zero_grad()
        loss = (x - q).square().sum()
        loss.backward()
        opt.step()
    end = (x.detach() - q).square().sum().item()
    assert end < 1e-2 * start
    assert orthogonality_error(x) < 1e-10


def test_skew_direction_is_skew_and_retraction_orthogonal():
    x = make_rotation(8, "orthogonal", seed=3)
    m = torch.randn(8, 8, dtype=torch.float64)
    w = skew_direction(m, x)
    assert torch.allclose(w, -w.T)
    y = cayley_retract(x, w, alpha=5.0)  # any step size stays orthogonal
    assert orthogonality_error(y) < 1e-12
    # first order: a small step moves X by alpha * W X
    small = cayley_retract(x, w, alpha=1e-4)
    assert torch.allclose(small, x + 1e-4 * (w @ x), atol=1e-7)


def test_first_order_step_decreases_loss():
    """A small step goes downhill: the direction is the negative Riemannian gradient."""
    q = _target_problem(8, seed=2)
    x = torch.nn.Parameter(make_rotation(8, "orthogonal", seed=5))
    opt = CayleySGD([x], lr=1e-3)
    loss0 = (x - q).square().sum()
    loss0.backward()
    opt.step()
    assert (x.detach() - q).square().sum().item() < loss0.item()


def test_state_dict_round_trip_keeps_float64_masters():
    x = torch.nn.Parameter(make_rotation(8, "hadamard", seed=0).float())
    opt = CayleySGD([x], lr=0.5, momentum=0.9)
    x.grad = torch.randn_like(x)
    opt.step()
    saved = opt.state_dict()
    y = torch.nn.Parameter(x.detach().clone())
    opt2 = CayleySGD([y], lr=0.5, momentum=0.9)
    opt2.load_state_dict(saved)
    assert opt2.state[y]["master"].dtype == torch.float64
    assert torch.equal(opt2.state[y]["master"], opt.state[x]["master"])
    g = torch.randn_like(x)
    x.grad, y.grad = g.clone(), g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(x, y)


def test_bad_arguments_refused():
    with pytest.raises(ConfigError, match="matrices"):
        CayleySGD([torch.nn.Parameter(torch.ones(4))], lr=1.0)
    with pytest.raises(ConfigError, match="momentum"):
        CayleySGD([torch.nn.Parameter(torch.eye(4))], lr=1.0, momentum=1.0)
    with pytest.raises(ConfigError, match="lr"):
        CayleyAdam([torch.nn.Parameter(torch.eye(4))], lr=0)
