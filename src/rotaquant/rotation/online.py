"""Online rotations: fast Hadamard transforms applied while the model runs.

* On a linear (R4 on ``down_proj``): a forward pre-hook rotates the input, ``x -> x R``, and
  the weight is pre-rotated, ``W -> W R``, so ``x R (W R)^T = x W^T``.
* On an attention module (R3): queries and keys are rotated per head after RoPE, through
  :mod:`rotaquant.attention`, so ``(q R)(k R)^T = q k^T``.

``R = diag(s) H^T / sqrt(n)`` with ``H = hadamard_matrix(n)`` and random signs ``s`` for mode
``hadamard`` (``s = 1`` for ``base_hadamard``): ``x R`` is ``hadamard_transform(x * s)``.
"""

from __future__ import annotations

import logging
import zlib

import torch
from torch import nn

from .. import attention
from .hadamard import hadamard_factorization
from .matrices import RotationStore, config_dim
from .spec import RotationConfigError, RotationSpec
from .transform import hadamard_transform

logger = logging.getLogger(__name__)
TAG = "rotaquant.R3"


class OnlineHadamard:
    """``x -> hadamard_transform(x * signs)`` along the last dim; computed in x's dtype
    (float32 inside for half precision)."""

    def __init__(self, n: int, signs: torch.Tensor | None = None):
        hadamard_factorization(n)  # fail early for an order with no construction
        self.n, self.signs = n, signs
        self._cache: dict[tuple, torch.Tensor] = {}

    def _signs(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.signs is None:
            return None
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = self.signs.to(x.device, x.dtype)
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self._signs(x)
        return hadamard_transform(x if s is None else x * s)

    def matrix(self, dtype=torch.float64) -> torch.Tensor:
        """The dense ``R`` (for tests and fusion checks)."""
        return self(torch.eye(self.n, dtype=torch.float64)).to(dtype)


def make_online(store: RotationStore, name: str, module_name: str) -> OnlineHadamard:
    """The online transform for matrix ``name`` of ``store`` at ``module_name``."""
    spec = store.spec.rotation_matrices[name]
    n = store.dims[name]
    signs = None
    if spec.mode == "hadamard":
        group = store.group_of(name, module_name)
        seed = (store.seed * 1_000_003 + zlib.crc32(f"{name}@{group}".encode())) % (2**63)
        gen = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
    return OnlineHadamard(n, signs)


@torch.no_grad()
def _fuse_input(linear: nn.Linear, op: OnlineHadamard, float64: bool) -> None:
    w = linear.weight
    work = torch.float64 if float64 else torch.float32
    w.copy_(op(w.detach().to(work)).to(w.dtype))


def _is_attention(module: nn.Module) -> bool:
    return all(hasattr(module, n) for n in ("q_proj", "k_proj")) and not isinstance(module, nn.Linear)


def apply_online_rotations(model: nn.Module, spec: RotationSpec, store: RotationStore) -> list:
    """Insert every rotation of ``spec.online_rotation_config``; returns the hook handles.

    Mutates ``model``: linears get a pre-rotated weight and an input hook; attention modules get
    an R3 transform on queries and keys.
    """
    from .apply import match_modules

    handles = []
    hits = match_modules(model, spec.online_rotation_config, spec.strict_patterns, "online_rotation_config")
    head_dim = None
    for name, module, pattern in hits:
        rname = spec.online_rotation_config[pattern]
        op = make_online(store, rname, name)
        if isinstance(module, nn.Linear):
            if module.in_features != op.n:
                raise RotationConfigError(f"{name}: input size {module.in_features} != online rotation size {op.n}")
            _fuse_input(module, op, spec.use_float64)
            handles.append(module.register_forward_pre_hook(_input_hook(op)))
        elif _is_attention(module):
            head_dim = head_dim or config_dim(model.config, "head_dim")
            if op.n != head_dim:
                raise RotationConfigError(f"{name}: R3 size {op.n} != head_dim {head_dim}")
            attention.attach(model, module, TAG, query=op, key=op)
        else:
            raise RotationConfigError(
                f"online_rotation_config[{pattern!r}] matched {name} ({type(module).__name__}), which is "
                "neither a linear nor an attention module with q_proj/k_proj"
            )
    return handles


def _input_hook(op: OnlineHadamard):
    def hook(module, args):
        return (op(args[0]), *args[1:])

    return hook
