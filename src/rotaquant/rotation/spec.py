"""Rotation configs: NVIDIA ModelOpt's YAML format, validated, plus rotaquant's online rotations.

A config names rotation matrices (``rotation_matrices``), says which modules get which
rotation on their input and output (``rotation_config``, glob patterns with ``|`` for
alternatives), which norms fold into which linears (``norm_fuse_config``), and whether fusion
runs in float64 (``use_float64``). rotaquant adds ``online_rotation_config`` (pattern -> the
name of an online rotation), ``architecture`` (where layers, attention, projections and norms
are: :class:`~rotaquant.models.architecture.ArchitectureSpec`) and ``strict_patterns`` (opt-in:
a pattern that matches nothing is an error). ModelOpt's own files load verbatim: their
``transformer_universal`` is meant for any model, so by default a pattern that matches nothing
(e.g. Mamba's ``*in_proj`` on a Llama) is skipped and logged at debug level.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import StrictModel, explain_validation_error, read_yaml
from ..errors import ConfigError
from ..models.architecture import ArchitectureSpec
from .hadamard import ROTATION_MODES

SPECS_DIR = Path(__file__).resolve().parent / "specs"


class RotationConfigError(ConfigError):
    """A rotation config is malformed or does not fit the model it is applied to."""


class MatrixSpec(StrictModel):
    """One rotation matrix: its size, how it is made, and how it is shared across layers.

    ``dim`` is an int, a key of the model config (``hidden_size``, ``head_dim``, ...) or a
    product of keys (``num_attention_heads*head_dim``).
    ``per_layer``: false = one matrix for the whole model; true = one per decoder layer; a
    regular expression = one per distinct match in the module name (group 1 if it has one).
    ``online``: applied at run time as a fast Hadamard transform (modes ``hadamard`` or
    ``base_hadamard`` only) instead of being fused.
    """

    dim: int | str
    mode: str = "hadamard"
    per_layer: bool | str = False
    online: bool = False

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        value = {"random_hadamard": "hadamard", "random": "orthogonal"}.get(value, value)
        if value not in ROTATION_MODES:
            raise ValueError(f"unknown mode {value!r}; use one of {list(ROTATION_MODES)}")
        return value

    @field_validator("per_layer")
    @classmethod
    def _pattern(cls, value: bool | str) -> bool | str:
        if isinstance(value, str):
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"per_layer pattern {value!r} is not a valid regex: {exc}") from None
        return value

    @model_validator(mode="after")
    def _online_mode(self) -> MatrixSpec:
        if self.online and self.mode == "orthogonal":
            raise ValueError("an online rotation must be a Hadamard mode (hadamard or base_hadamard)")
        return self


class NormFuseConfig(StrictModel):
    """Norms folded into the linears that read them (``[norm, [linear, ...]]`` pairs)."""

    decoder_layer_fuse: list[tuple[str, list[str]]] = Field(default_factory=list)
    lm_head_fuse: list[tuple[str, str]] = Field(default_factory=list)


class RotationSpec(StrictModel):
    """A whole rotation config (see the module docstring)."""

    rotation_matrices: dict[str, MatrixSpec]
    rotation_config: dict[str, tuple[str | None, str | None]] = Field(default_factory=dict)
    online_rotation_config: dict[str, str] = Field(default_factory=dict)
    norm_fuse_config: NormFuseConfig | None = None
    use_float64: bool = True
    strict_patterns: bool = False
    layers_pattern: str = r"(?:^|\.)layers\.\d+$"
    architecture: ArchitectureSpec = Field(default_factory=ArchitectureSpec)
    version: Literal[1] = 1

    @model_validator(mode="after")
    def _names_defined(self) -> RotationSpec:
        known = set(self.rotation_matrices)
        for pattern, pair in self.rotation_config.items():
            for name in pair:
                if name is not None and name not in known:
                    raise ValueError(f"rotation_config[{pattern!r}] names {name!r}, not in rotation_matrices {sorted(known)}")
                if name is not None and self.rotation_matrices[name].online:
                    raise ValueError(f"{name!r} is online: use it in online_rotation_config, not rotation_config")
        for pattern, name in self.online_rotation_config.items():
            if name not in known:
                raise ValueError(f"online_rotation_config[{pattern!r}] names {name!r}, not in rotation_matrices {sorted(known)}")
            if not self.rotation_matrices[name].online:
                raise ValueError(f"{name!r} is used online but its spec lacks 'online: true'")
        return self

    def with_head_mixing(self) -> RotationSpec:
        """The same config plus QuaRot's online Hadamard at the input of each per-head-input
        linear (``o_proj``): it mixes the heads before the activation quantizer. A family
        without per-head inputs (Mamba2) is returned unchanged."""
        if not self.architecture.per_head_inputs:
            return self
        data = self.model_dump()
        data["rotation_matrices"]["rh"] = {"dim": "num_attention_heads*head_dim", "mode": "base_hadamard",
                                           "per_layer": False, "online": True}
        for path in self.architecture.per_head_inputs:
            data["online_rotation_config"] = {f"*{path}": "rh", **data["online_rotation_config"]}
        return RotationSpec(**data)

    def without_online(self) -> RotationSpec:
        """The same config with its online rotations removed (R1/R2 only)."""
        data = self.model_dump()
        data["online_rotation_config"] = {}
        data["rotation_matrices"] = {k: v for k, v in data["rotation_matrices"].items() if not v["online"]}
        return RotationSpec(**data)


def pattern_matches(pattern: str, name: str) -> bool:
    """Glob match of a module name, ``|`` separating alternatives."""
    return any(fnmatch.fnmatchcase(name, alt.strip()) for alt in pattern.split("|"))


def builtin_specs() -> list[str]:
    """Names of the rotation configs shipped with rotaquant."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def load_spec(source: str | os.PathLike | dict | RotationSpec) -> RotationSpec:
    """A :class:`RotationSpec` from a built-in name, a YAML path, a dict or a spec.

    Raises:
        RotationConfigError: unknown name, missing file, invalid YAML or an invalid config
            (a typo'd key included: unknown keys are refused).
    """
    if isinstance(source, RotationSpec):
        return source
    origin = "dict"
    if not isinstance(source, dict):
        text = str(source)
        path = SPECS_DIR / f"{text}.yaml" if text in builtin_specs() else Path(text)
        if not path.is_file():
            raise RotationConfigError(
                f"rotation config {text!r} is neither a built-in config ({', '.join(builtin_specs())}) "
                "nor an existing YAML file"
            )
        source = read_yaml(path, RotationConfigError)
        origin = str(path)
        if not isinstance(source, dict):
            raise RotationConfigError(f"{path} must hold a mapping, not {type(source).__name__}")
    try:
        return RotationSpec(**source)
    except ValidationError as exc:
        raise RotationConfigError(f"invalid rotation config ({origin}):\n{explain_validation_error(exc)}") from None
