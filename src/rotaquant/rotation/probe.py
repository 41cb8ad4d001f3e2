"""A hooked forward that records what every module of a model reads and writes.

Used by :mod:`rotaquant.rotation.structure` to find the readers and writers of the residual
stream: each call is recorded in call order with its first input and output where their last
dimension is the hidden size (other tensors are not kept, so a big model's probe is small).
Inputs are taken by a pre-hook that runs before any stage, so they are what the module's own
code passes in, not what an activation quantizer made of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Call:
    """One module call: its name, module, call index and hidden-sized input/output (or None)."""

    name: str
    module: nn.Module
    start: int
    leaf: bool
    inp: torch.Tensor | None = None
    out: torch.Tensor | None = None


def first_tensor(x):
    """``x`` if a tensor, else the first element of a tuple/list if that is one, else None."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


def is_leaf(module: nn.Module) -> bool:
    """No children besides rotaquant's own stages (``rq_*``)."""
    return all(k.startswith("rq_") for k in module._modules)


def own_params(module: nn.Module) -> list[torch.Tensor]:
    return [p for _, p in module.named_parameters(recurse=False)]


def norm_like(module: nn.Module, hidden: int) -> bool:
    """A 1-D weight of the hidden size (an RMSNorm or LayerNorm of the residual width)."""
    w = getattr(module, "weight", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == hidden
            and not isinstance(module, nn.Embedding))


def is_hidden(x, hidden: int) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0 and x.shape[-1] == hidden


def flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).double()


def scaled_err(x: torch.Tensor, s: torch.Tensor) -> float:
    """Relative error of ``x`` against its best scalar multiple of ``s``."""
    if x.numel() != s.numel():
        return float("inf")
    x, s = flat(x), flat(s)
    nx = x.norm()
    if nx == 0:
        return 0.0 if s.norm() == 0 else float("inf")
    ss = (s @ s)
    c = (x @ s) / ss if ss > 0 else 0.0
    return float((x - c * s).norm() / nx)


def fit(target: torch.Tensor, cols: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Least-squares fit of ``target`` by scalar multiples of ``cols``: (relative residual, coefs)."""
    t = flat(target)
    if not cols:
        return (0.0 if t.norm() == 0 else 1.0), torch.zeros(0, dtype=torch.float64)
    a = torch.stack([flat(c) for c in cols], dim=1)
    coef = torch.linalg.lstsq(a, t[:, None]).solution[:, 0]
    resid = (t - a @ coef).norm() / max(float(t.norm()), 1e-300)
    return float(resid), coef


@torch.no_grad()
def probe_calls(model: nn.Module, ids: torch.Tensor, hidden: int, layer_names: set[str]) -> list[Call]:
    """Run ``model`` on ``ids`` once; every module call with its hidden-sized input/output."""
    calls: list[Call] = []
    open_calls: dict[int, list[Call]] = {}
    handles, counter = [], [0]

    def pre(name, keep):
        def hook(module, args, kwargs):  # prepended: sees the input before any stage changes it
            counter[0] += 1
            call = Call(name, module, counter[0], is_leaf(module))
            x = first_tensor(args) if args else kwargs.get("hidden_states")
            if (keep or call.leaf) and is_hidden(x, hidden):
                call.inp = x.detach().clone()
            open_calls.setdefault(id(module), []).append(call)
        return hook

    def post(name, keep):
        def hook(module, args, kwargs, output):
            call = open_calls[id(module)].pop()
            y = first_tensor(output)
            if (keep or call.leaf) and is_hidden(y, hidden):
                call.out = y.detach().clone()
            calls.append(call)
        return hook

    for name, module in model.named_modules():
        if not name or ".rq_" in f".{name}":
            continue
        keep = name in layer_names
        handles.append(module.register_forward_pre_hook(pre(name, keep), with_kwargs=True, prepend=True))
        handles.append(module.register_forward_hook(post(name, keep), with_kwargs=True))
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    calls.sort(key=lambda c: c.start)
    return calls
