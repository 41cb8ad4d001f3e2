"""Optimizers on the Stiefel manifold through the Cayley transform (Li, Fuxin & Todorovic, 2020).

Each parameter is a matrix ``X [n, p]`` with orthonormal columns (``p == n``: a rotation). A
step moves along the skew-symmetric direction ``W`` built from the (momentum-averaged)
Euclidean gradient and retracts with the Cayley transform

    X <- (I - a/2 W)^{-1} (I + a/2 W) X,

which is orthogonal for any step ``a`` because ``W`` is skew-symmetric. rotaquant solves it
exactly, in float64, on a float64 master copy kept in the optimizer state, and writes the
result back into the parameter's dtype, so orthogonality does not drift over thousands of
steps. (The paper's fixed-point approximation of the inverse is not offered: it is orthogonal
only up to its truncation error, and the solve costs nothing at rotation sizes.)

``CayleySGD`` follows the paper's Algorithm 1 (momentum projected on the tangent space, step
capped at ``2 q / ||W||``); ``CayleyAdam`` its Algorithm 2 (one scalar second moment per
matrix, as the paper does, so the direction stays on the tangent space).

Which norm caps the step (``step_norm``): ``"frobenius"`` (default) or ``"one"``, the induced
1-norm ``max_j sum_i |W_ij|`` (largest column sum), which is what SpinQuant's Cayley SGD uses.
With ``q = 1/2`` it keeps ``a ||W||_1 <= 1``, which bounds the spectral norm of ``a W`` by 1
(``W`` is skew, so its 1- and infinity-norms agree), where the fixed-point form of the
retraction converges. For dense directions the two norms are of the same order (a random
skew matrix: the 1-norm is about 0.9 of the Frobenius norm); when ``W`` concentrates on a few
rows and columns (an outlier channel) the 1-norm is the larger one and caps the step harder.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def skew_direction(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The skew-symmetric ``W = Ŵ - Ŵ^T`` with ``Ŵ = M X^T - 1/2 X (X^T M X^T)``."""
    w_hat = m @ x.T - 0.5 * x @ (x.T @ m @ x.T)
    return w_hat - w_hat.T


def cayley_retract(x: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(I - a/2 W)^{-1} (I + a/2 W) X``, solved exactly (orthogonal for any ``a``)."""
    eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return torch.linalg.solve(eye - 0.5 * alpha * w, x + 0.5 * alpha * (w @ x))


def orthogonality_error(x: torch.Tensor) -> float:
    """``max |X^T X - I|``."""
    x = x.detach().double()
    return (x.T @ x - torch.eye(x.shape[1], dtype=x.dtype, device=x.device)).abs().max().item()


def nearest_orthonormal(x: torch.Tensor) -> torch.Tensor:
    """The float64 matrix with orthonormal columns nearest to ``x`` (``U V^T`` of its SVD).

    A float32 rotation is orthogonal only to ~1e-7; projecting the starting point once makes
    the float64 iterates orthogonal to rounding error.
    """
    u, _, vh = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
    return u @ vh


def _check_params(params) -> list:
    groups = list(params)
    for group in groups:
        for p in (group["params"] if isinstance(group, dict) else [group]):
            if p.dim() != 2 or p.shape[0] < p.shape[1]:
                raise ConfigError(f"Cayley optimizers need matrices [n, p] with n >= p, got shape {tuple(p.shape)}")
    return groups


STEP_NORMS = ("frobenius", "one")


def step_cap_norm(w: torch.Tensor, kind: str) -> float:
    """The norm of the direction ``W`` that caps the step: Frobenius, or the induced 1-norm
    (largest absolute column sum)."""
    if kind == "one":
        return w.abs().sum(dim=0).max().item()
    return w.norm().item()


def _check_step_norm(kind: str) -> None:
    if kind not in STEP_NORMS:
        raise ConfigError(f"step_norm must be one of {STEP_NORMS}, got {kind!r}")


class _CayleyBase(torch.optim.Optimizer):
    """The shared step: float64 master, a skew direction ``W`` from the subclass, the step cap
    ``min(lr, 2q / ||W||)`` (norm chosen by ``step_norm``) and the Cayley retraction, written
    back into the parameter."""

    def _direction(self, x: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """The skew-symmetric descent direction (updating the moments in ``state``)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "master" not in state:
                    state["master"] = nearest_orthonormal(p.detach())
                x = state["master"]
                w = self._direction(x, p.grad.detach().to(torch.float64), state, group)
                alpha = min(group["lr"], 2 * group["q"] / (step_cap_norm(w, group.get("step_norm", "frobenius")) + group["eps"]))
                state["master"] = cayley_retract(x, w, alpha)
                state["last_alpha"] = alpha
                p.copy_(state["master"].to(p.dtype))
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the float64 master copies and moments stay float64 (torch would cast
        them to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            p = params[int(index)]
            for key, value in saved.items():
                if torch.is_tensor(value) and key != "step":
                    self.state[p][key] = value.detach().to(device=p.device, dtype=torch.float64, copy=True)


class CayleySGD(_CayleyBase):
    """Cayley SGD with momentum: every parameter stays (numerically exactly) orthogonal.

    Args:
        params: matrices ``[n, p]`` with orthonormal columns (e.g. rotations).
        lr: the step size ``l``; the effective step is ``min(l, 2 q / (||W|| + eps))``.
        momentum: ``beta`` of the momentum, 0 for none.
        q: the step cap of the paper (0.5).
        step_norm: ``"frobenius"`` or ``"one"`` (SpinQuant's): the norm of ``W`` in the cap.

    ``step()`` mutates the parameters in place (and they must have gradients).
    """

    def __init__(self, params, lr: float = 1.5, momentum: float = 0.0, q: float = 0.5, eps: float = 1e-8,
                 step_norm: str = "frobenius"):
        if lr <= 0 or not 0 <= momentum < 1 or q <= 0:
            raise ConfigError(f"CayleySGD needs lr > 0, 0 <= momentum < 1 and q > 0 (got {lr}, {momentum}, {q})")
        _check_step_norm(step_norm)
        defaults = dict(lr=lr, momentum=momentum, q=q, eps=eps, step_norm=step_norm)
        super().__init__(_check_params(params), defaults)

    def _direction(self, x, g, state, group):
        m = state.get("momentum_buffer")
        m = -g if m is None else group["momentum"] * m - g
        w = skew_direction(m, x)
        state["momentum_buffer"] = w @ x  # momentum lives on the tangent space
        return w


class CayleyAdam(_CayleyBase):
    """Cayley Adam (Algorithm 2 of the paper): Adam's moments on the Stiefel manifold.

    The first moment is a matrix on the tangent space, the second a scalar per parameter (the
    squared gradient norm), which keeps the update direction skew-symmetric. Same arguments as
    :class:`CayleySGD` plus ``betas``.
    """

    def __init__(self, params, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.999), q: float = 0.5,
                 eps: float = 1e-8, step_norm: str = "frobenius"):
        if lr <= 0 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"CayleyAdam needs lr > 0 and betas in [0, 1) (got {lr}, {betas})")
        _check_step_norm(step_norm)
        defaults = dict(lr=lr, betas=tuple(betas), q=q, eps=eps, step_norm=step_norm)
        super().__init__(_check_params(params), defaults)

    def _direction(self, x, g, state, group):
        b1, b2 = group["betas"]
        t = state["step"] = state.get("step", 0) + 1
        m = b1 * state.get("exp_avg", torch.zeros_like(x)) + (1 - b1) * g
        v = b2 * state.get("exp_avg_sq", 0.0) + (1 - b2) * g.square().sum().item()
        r = (1 - b1**t) * math.sqrt(v / (1 - b2**t) + group["eps"])
        w = -skew_direction(m, x) / r  # descent: m estimates the gradient
        state["exp_avg"] = -r * (w @ x)  # first moment projected on the tangent space
        state["exp_avg_sq"] = v
        return w
