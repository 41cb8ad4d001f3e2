"""The rotation matrices of one model: generated from a spec or loaded from a file.

Each matrix of a :class:`~rotaquant.rotation.spec.RotationSpec` is shared model-wise or per
group of modules (per decoder layer, or per match of a regex). :class:`RotationStore` resolves
the group of a module name, makes each matrix once (seeded, float64) and keeps it, so a saved
store can be reloaded and applied again. File formats:

* rotaquant safetensors: key ``name`` for a shared matrix, ``name@group`` for a grouped one;
* SpinQuant's torch file: ``R1`` and ``model.layers.{i}.self_attn.R2`` (loaded with
  ``weights_only=True``).
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io import load_torch_file
from .hadamard import make_rotation
from .spec import MatrixSpec, RotationConfigError, RotationSpec

logger = logging.getLogger(__name__)
_LAYER = re.compile(r"(?:^|\.)(layers\.\d+)(?:\.|$)")
_SPINQUANT_R2 = re.compile(r"^(.*layers\.\d+)\.self_attn\.R2$")


class RotationFileError(ConfigError):
    """A rotation file is unreadable, or a matrix in it has the wrong shape or dtype."""


def config_dim(config, key: int | str) -> int:
    """Resolve a matrix ``dim`` (an int, a model-config key, or a product ``a*b`` of them)."""
    if isinstance(key, int):
        return key
    if "*" in key:
        out = 1
        for part in key.split("*"):
            part = part.strip()
            out *= int(part) if part.isdigit() else config_dim(config, part)
        return out
    if key == "head_dim" and getattr(config, "head_dim", None) is None:
        return config.hidden_size // config.num_attention_heads
    value = getattr(config, key, None)
    if not isinstance(value, int):
        keys = sorted(k for k, v in config.to_dict().items() if isinstance(v, int) and not isinstance(v, bool))
        raise RotationConfigError(
            f"rotation dim {key!r} is not an integer key of the model config ({type(config).__name__}); "
            f"integer keys are: {', '.join(keys)}"
        )
    return value


class RotationStore:
    """Matrices by (name, group), created on first use and cached.

    Args:
        spec: the rotation config.
        model_config: the model's config (resolves ``dim`` keys).
        seed: base seed; each (name, group) gets its own derived seed, so matrices are
            reproducible and independent of the order in which they are requested.
        mode: overrides the mode of the fused (non-online) matrices when given: one mode for
            all, or ``{matrix name: mode}`` for some (QuaRot: ``{"r1": "hadamard", "r2":
            "base_hadamard"}``). Default: each matrix's own ``mode`` in the spec.
    """

    def __init__(self, spec: RotationSpec, model_config, seed: int = 0, mode: str | dict | None = None):
        if isinstance(mode, dict):
            unknown = sorted(set(mode) - set(spec.rotation_matrices))
            if unknown:
                raise RotationConfigError(f"rotation modes given for {unknown}, which the config does not define "
                                          f"(its matrices: {sorted(spec.rotation_matrices)})")
        self.spec, self.seed, self.mode = spec, int(seed), mode
        self.dims = {n: config_dim(model_config, m.dim) for n, m in spec.rotation_matrices.items()}
        self.matrices: dict[tuple[str, str], torch.Tensor] = {}
        self.num_layers: int | None = getattr(model_config, "num_hidden_layers", None)

    def group_of(self, name: str, module_name: str) -> str:
        """The sharing group of matrix ``name`` for the module ``module_name`` ('' = shared)."""
        per_layer = self.spec.rotation_matrices[name].per_layer
        if per_layer is False:
            return ""
        regex = _LAYER if per_layer is True else re.compile(per_layer)
        found = regex.search(module_name)
        if not found:
            return ""
        return found.group(1) if found.groups() else found.group(0)

    def mode_of(self, name: str) -> str:
        spec: MatrixSpec = self.spec.rotation_matrices[name]
        if self.mode is None or spec.online:
            return spec.mode
        if isinstance(self.mode, dict):
            return self.mode.get(name, spec.mode)
        return self.mode

    def get(self, name: str, module_name: str = "") -> torch.Tensor:
        """The float64 matrix ``name`` for the module ``module_name`` (made on first use)."""
        key = (name, self.group_of(name, module_name))
        if key not in self.matrices:
            derived = (self.seed * 1_000_003 + zlib.crc32(f"{key[0]}@{key[1]}".encode())) % (2**63)
            self.matrices[key] = make_rotation(self.dims[name], self.mode_of(name), seed=derived)
        return self.matrices[key]

    # -- files ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The matrices made so far, keyed ``name`` / ``name@group`` (what a rotation file holds;
        the jobs write it: :func:`rotaquant.jobs.files.write_rotation_file`)."""
        return {(n if not g else f"{n}@{g}"): m.contiguous() for (n, g), m in self.matrices.items()}

    def load(self, path: str | os.PathLike, allow_partial: bool | None = None) -> None:
        """Load matrices from a rotaquant safetensors file or a SpinQuant torch file.

        Every loaded matrix must be square of its spec's size, floating point and orthogonal;
        anything else raises :class:`RotationFileError` naming the key. The file must hold every
        fused matrix of the config (R1, and R2 for each of the model's layers) and nothing for
        layers the model does not have; with ``allow_partial`` (or a :class:`RotationFile` that
        says so) the missing ones are generated as usual, the extra ones skipped, both with a
        warning that names them.
        """
        if allow_partial is None:
            allow_partial = bool(getattr(path, "allow_partial", False))
        loaded = {}
        for (name, group), tensor in read_rotation_file(path).items():
            if name not in self.dims:
                raise RotationFileError(f"{path}: key {name!r} names no matrix of the config ({sorted(self.dims)})")
            loaded[(name, group)] = check_rotation(tensor, self.dims[name], f"{path}:{name}@{group}")
        missing, extra = self._coverage(set(loaded))
        if missing or extra:
            what = "; ".join(part for part in (
                f"missing {_keys(missing)}" if missing else "",
                f"keys for layers this {self.num_layers}-layer model does not have: {_keys(extra)}" if extra else "",
            ) if part)
            if not allow_partial:
                raise RotationFileError(f"{path} does not fit this model: {what}. Use a complete file for this "
                                        "model, or pass --allow-partial-rotation (allow_partial=True) to generate "
                                        "the missing matrices and skip the extra ones")
            logger.warning("partial rotation file %s (allowed): %s; missing matrices are generated (mode %s), "
                           "extra ones skipped", path, what, self.mode or "of the config")
        self.matrices.update((key, mat) for key, mat in loaded.items() if key not in extra)

    def _coverage(self, keys: set[tuple[str, str]]) -> tuple[list, list]:
        """(missing, extra) keys of a file against the fused matrices this model needs."""
        missing, extra = [], []
        layers = range(self.num_layers) if self.num_layers is not None else None
        for name, spec in self.spec.rotation_matrices.items():
            if spec.per_layer is False:
                expected = {(name, "")}
            elif spec.per_layer is True and layers is not None:
                expected = {(name, f"layers.{i}") for i in layers}
            else:
                continue  # groups of a custom regex are known only from module names
            if not spec.online:
                missing += sorted(expected - keys, key=_natural)
            extra += sorted((k for k in keys - expected if k[0] == name), key=_natural)
        return missing, extra


class RotationFile(os.PathLike):
    """A rotation file's path plus how strictly to read it; accepted wherever a rotation path is.

    ``RotationFile("R.bin", allow_partial=True)`` loads a file that lacks some matrices (they
    are generated) or has extra layers (skipped), with a warning naming them.
    """

    def __init__(self, path: str | os.PathLike, allow_partial: bool = False):
        self.path, self.allow_partial = os.fspath(path), bool(allow_partial)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"RotationFile({self.path!r}, allow_partial={self.allow_partial})"


def _natural(key: tuple[str, str]) -> tuple:
    return key[0], [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key[1])]


def _keys(keys: list[tuple[str, str]], limit: int = 8) -> str:
    names = [f"{n}@{g}" if g else n for n, g in keys]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} ({', '.join(names[:limit])}{more})" if len(names) > 1 else names[0]


FILE_FORMAT = "rotaquant-rotations-v1"


def rotation_file_bytes(matrices: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a rotaquant safetensors file of ``matrices`` (keys ``name`` / ``name@group``)."""
    from safetensors.torch import save

    meta = {"format": FILE_FORMAT, **(metadata or {})}
    return save({k: v.contiguous() for k, v in matrices.items()}, metadata=meta)


def check_rotation(tensor: torch.Tensor, dim: int, where: str) -> torch.Tensor:
    """Validate a loaded rotation: float, ``dim x dim``, orthogonal; returned as float64."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise RotationFileError(f"{where}: expected a floating-point matrix, got {getattr(tensor, 'dtype', type(tensor))}")
    if tuple(tensor.shape) != (dim, dim):
        raise RotationFileError(f"{where}: shape {tuple(tensor.shape)}, expected ({dim}, {dim}) for this model")
    mat = tensor.detach().to(torch.float64, copy=True)
    err = (mat @ mat.T - torch.eye(dim, dtype=torch.float64)).abs().max().item()
    tol = 1e-2 if tensor.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if not err <= tol:  # NaN fails too
        raise RotationFileError(f"{where}: not orthogonal (max |R R^T - I| = {err:.2e} > {tol})")
    return mat


def read_rotation_file(path: str | os.PathLike) -> dict[tuple[str, str], torch.Tensor]:
    """(name, group) -> tensor, from a rotaquant safetensors or a SpinQuant torch file."""
    path = Path(path)
    if not path.is_file():
        raise RotationFileError(f"rotation file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise RotationFileError(f"{path} is not a readable safetensors file: {exc}") from None
        return {tuple(k.split("@", 1)) if "@" in k else (k, ""): v for k, v in raw.items()}
    raw = load_torch_file(path, "torch rotation file", RotationFileError)
    if not isinstance(raw, dict):
        raise RotationFileError(f"{path} must hold a dict of matrices (SpinQuant format: R1, model.layers.i.self_attn.R2)")
    out: dict[tuple[str, str], torch.Tensor] = {}
    for key, value in raw.items():
        if key == "R1":
            out[("r1", "")] = value
        elif m := _SPINQUANT_R2.match(key):
            out[("r2", m.group(1).removeprefix("model."))] = value
        else:
            raise RotationFileError(f"{path}: unexpected key {key!r} (SpinQuant files hold R1 and *.self_attn.R2)")
    return out
