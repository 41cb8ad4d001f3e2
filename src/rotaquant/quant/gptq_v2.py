"""GPTQv2 / GPTAQ (asymmetric calibration): match the full-precision layer on full-precision inputs.

Plain GPTQ minimises ``||(W - Q) X~||^2`` on the inputs ``X~`` the *quantized* model feeds the
layer. GPTAQ minimises ``||Q X~ - W X||^2`` instead, where ``X`` are the inputs the
*full-precision* model feeds it: the quantized layer must also undo the error its input already
carries. Per output row ``w`` that objective is a quadratic in ``q`` with Hessian
``H = X~ X~^T`` centred at

    ``w* = w X X~^T H^-1 = w + w (X - X~) X~^T H^-1 = w + w C H^-1``,

since ``(q X~ - w X) X~^T = 0`` at ``q = w*``. So ``||q X~ - w X||^2 = (q - w*) H (q - w*)^T +
const``, and running GPTQ's column-by-column procedure on the target ``W* = W + W C H^-1``
with the same ``H`` optimises exactly the GPTAQ objective (``H`` damped as GPTQ damps it).
``C = 2/N sum_n (x_n - x~_n) x~_n^T`` is accumulated alongside ``H`` (same scaling).
"""

from __future__ import annotations

import torch

from .gptq import GPTQError, NonFiniteActivationError


class CrossAccumulator:
    """Running ``C = 2/N sum (x - x~)^T x~`` over token rows of FP inputs ``x`` and quantized-model
    inputs ``x~`` (the GPTAQ cross term), float32 by default. With ``check_each=False`` the NaN/Inf
    check runs once, on ``C``, when :attr:`cross` is read (a non-finite input makes ``C`` non-finite),
    instead of a host sync per batch."""

    def __init__(self, in_features: int, device=None, dtype: torch.dtype = torch.float32, name: str | None = None,
                 check_each: bool = True):
        self.in_features, self.name = in_features, name
        self._cross = torch.zeros(in_features, in_features, device=device, dtype=dtype)
        self._nsamples = 0
        self.check_each = check_each

    def add(self, x_fp: torch.Tensor, x_q: torch.Tensor) -> None:
        """Accumulate one batch of paired inputs (same shape ``[..., in_features]``)."""
        if x_fp.shape != x_q.shape or x_q.shape[-1] != self.in_features:
            raise GPTQError(f"GPTQv2{' of ' + self.name if self.name else ''}: paired inputs of shapes "
                            f"{tuple(x_fp.shape)} and {tuple(x_q.shape)}; expected equal [..., {self.in_features}]")
        a = x_fp.detach().reshape(-1, self.in_features).to(self._cross.device, self._cross.dtype)
        b = x_q.detach().reshape(-1, self.in_features).to(self._cross.device, self._cross.dtype)
        if self.check_each and not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise NonFiniteActivationError(f"GPTQv2 calibration inputs of {self.name or 'a layer'} are not finite")
        n = b.shape[0]
        total = self._nsamples + n
        self._cross.mul_(self._nsamples / total)
        self._cross.addmm_((a - b).T, b, alpha=2.0 / total)
        self._nsamples = total

    @property
    def cross(self) -> torch.Tensor:
        if self._nsamples == 0:
            raise GPTQError(f"no paired calibration inputs were added for {self.name or 'a layer'}")
        if not self.check_each and not bool(torch.isfinite(self._cross).all()):
            raise NonFiniteActivationError(f"GPTQv2 calibration inputs of {self.name or 'a layer'} are not finite")
        return self._cross


def gptaq_target(w: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``W* = W + W C (H + lam I)^-1`` (``lam = damp * mean diag H``), in ``w``'s dtype; the weight
    GPTQ should be run on (with ``hessian``) to minimise ``||Q X~ - W X||^2``. Float64 inside."""
    h = hessian.detach().to(torch.float64).clone()
    h.diagonal().add_(damp * float(torch.diagonal(h).mean()))
    wc = w.detach().to(torch.float64) @ cross.detach().to(device=h.device, dtype=torch.float64)
    # H is symmetric: (W C) H^-1 = solve(H, (W C)^T)^T
    delta = torch.linalg.solve(h, wc.T).T
    return (w.detach().to(torch.float64) + delta).to(w.dtype)


def asymmetric_objective(w: torch.Tensor, q: torch.Tensor, x_fp: torch.Tensor, x_q: torch.Tensor) -> float:
    """``||q X~ - w X||^2`` summed over token rows (x: ``[tokens, in]``), in float64."""
    w, q = w.double(), q.double()
    return float(((x_q.double() @ q.T - x_fp.double() @ w.T) ** 2).sum())
