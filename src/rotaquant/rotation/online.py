"""Online rotations: fast Hadamard transforms applied while the model runs, as stages.

* At a linear's input (R4 on ``down_proj``, head mixing on ``o_proj``): the stage rotates the
  input, ``x -> x R``, and the weight is pre-rotated, ``W -> W R``, so ``x R (W R)^T = x W^T``.
* On an attention module (R3): queries and keys are rotated per head after RoPE, so
  ``(q R)(k R)^T = q k^T``.

``R = diag(s) H^T / sqrt(n)`` with ``H = hadamard_matrix(n)`` and random signs ``s`` for mode
``hadamard`` (``s = 1`` for ``base_hadamard``): ``x R`` is ``hadamard_transform(x * s)``.
The stages are children of the model (see :mod:`rotaquant.stages`), so they are saved in
``state_dict``, kept by ``deepcopy`` and shown in ``repr``.
"""

from __future__ import annotations

import logging
import zlib

import torch
from torch import nn

from ..models.architecture import attention_modules
from ..stages import Stage, add_attention_stage, add_input_stage
from .hadamard import hadamard_factorization
from .matrices import RotationStore, config_dim
from .spec import RotationConfigError, RotationSpec
from .transform import _backend as _hadamard_backend
from .transform import hadamard_transform

logger = logging.getLogger(__name__)


class OnlineHadamard(Stage):
    """``x -> hadamard_transform(x * signs)`` along the last dim (a rotation stage).

    Args:
        n: the size of the last dim (any order the Hadamard library constructs).
        signs: optional ``[n]`` tensor of +-1 (random Hadamard); None for the plain one.
    """

    kind = "rotation"
    order = 0

    def __init__(self, n: int, signs: torch.Tensor | None = None):
        super().__init__()
        hadamard_factorization(n)  # fail early for an order with no construction
        if signs is not None and tuple(signs.shape) != (n,):
            raise RotationConfigError(f"signs of shape {tuple(signs.shape)} for an online Hadamard of size {n}")
        self.n = n
        self.register_buffer("signs", None if signs is None else signs.to(torch.float32))
        self._signs_cast = None  # (key, signs in a kernel input's dtype and device), see _signs_like

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n:
            raise RotationConfigError(f"online Hadamard of size {self.n} got a last dimension of {x.shape[-1]}")
        if self.signs is not None:
            # on the kernel without a gradient (training keeps the two differentiable steps), the
            # kernel flips the signs as it loads x: no pass of its own
            if x.is_cuda and not (x.requires_grad and torch.is_grad_enabled()) and _hadamard_backend(x, None) == "triton":
                from ..kernels.hadamard_triton import signed

                return signed(x, self._signs_like(x))
            x = x * self.signs.to(x.dtype)
        return hadamard_transform(x)

    def _signs_like(self, x: torch.Tensor) -> torch.Tensor:
        """The signs in ``x``'s dtype and device, for the kernel's sign flip: cast once per dtype
        and device, again if the buffer changes."""
        s = self.signs
        key = (x.dtype, x.device, s.device, s.data_ptr(), s._version)
        if self._signs_cast is None or self._signs_cast[0] != key:
            self._signs_cast = (key, s.to(device=x.device, dtype=x.dtype).contiguous())
        return self._signs_cast[1]

    def fused_forward(self, x: torch.Tensor, following: Stage) -> torch.Tensor | None:
        """The transform and a following quantizer stage in one Triton launch (on CUDA, without
        a gradient, where :func:`rotaquant.kernels.fused_quant.fusion_applies`): the same values
        as the two stages one after the other on the GPU. None elsewhere."""
        spec = getattr(following, "spec", None)
        if following.kind != "quantizer" or spec is None or not x.is_cuda or x.shape[-1] != self.n:
            return None
        if getattr(following, "ste", False):  # a learning quantizer: its gradient runs through the two stages
            return None
        from ..kernels.fused_quant import fusion_applies, hadamard_fake_quantize

        if not fusion_applies(x, spec):
            return None
        if self.signs is not None:  # fusion_applies: the kernel runs, no gradient
            from ..kernels.hadamard_triton import signed

            return signed(x, self._signs_like(x), spec)
        return hadamard_fake_quantize(x, spec)

    def matrix(self, dtype=torch.float64) -> torch.Tensor:
        """The dense ``R`` (for tests and fusion checks)."""
        eye = torch.eye(self.n, dtype=torch.float64)
        s = self.signs
        return hadamard_transform(eye if s is None else eye * s.double()).to(dtype)

    def extra_repr(self) -> str:
        return f"n={self.n}, random_signs={self.signs is not None}"


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
    w.copy_(op.to(w.device)(w.detach().to(work)).to(w.dtype))


def apply_online_rotations(model: nn.Module, spec: RotationSpec, store: RotationStore) -> int:
    """Insert every rotation of ``spec.online_rotation_config`` as a stage; returns how many.

    Mutates ``model``: a matched linear gets a pre-rotated weight and a rotation stage at its
    input; a matched attention module (one of the architecture's) gets the rotation at its
    query and key sites. The stage is named after the matrix (``r3``, ``r4``, ``rh``).
    """
    from .apply import match_modules

    attention = {name for name, _ in attention_modules(model, spec.architecture)}
    hits = match_modules(model, spec.online_rotation_config, spec.strict_patterns, "online_rotation_config")
    head_dim = config_dim(model.config, spec.architecture.head_dim) if attention else None
    count = 0
    for name, module, pattern in hits:
        rname = spec.online_rotation_config[pattern]
        op = make_online(store, rname, name)
        if isinstance(module, nn.Linear):
            if module.in_features != op.n:
                raise RotationConfigError(f"{name}: input size {module.in_features} != online rotation size {op.n}")
            _fuse_input(module, op, spec.use_float64)
            add_input_stage(module, rname, op.to(module.weight.device))
        elif name in attention:
            if op.n != head_dim:
                raise RotationConfigError(f"{name}: {rname} size {op.n} != head_dim {head_dim}")
            dev = next(module.parameters()).device
            add_attention_stage(model, module, "query", rname, op.to(dev))
            add_attention_stage(model, module, "key", rname, op.to(dev))
        else:
            raise RotationConfigError(
                f"online_rotation_config[{pattern!r}] matched {name} ({type(module).__name__}), which is "
                "neither a linear nor an attention module of the architecture spec"
            )
        count += 1
    return count
