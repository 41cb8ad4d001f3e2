"""Validated, serializable configs, one per job; each loads from YAML, a dict or kwargs.

Unknown keys are errors (a typo must not be silently ignored), and every config carries a
``version`` so saved files can be migrated later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError


class StrictModel(BaseModel):
    """Base for configs: unknown keys are refused, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @classmethod
    def load(cls, source: str | os.PathLike | dict | None = None, **overrides: Any):
        """Build from a YAML file path, a dict, or nothing, then apply keyword overrides."""
        data: dict[str, Any] = {}
        if isinstance(source, dict):
            data.update(source)
        elif source is not None:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            try:
                loaded = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); a config is a YAML text file") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path} is not valid YAML: {exc}") from None
            except RecursionError:
                raise ConfigError(f"{path} is nested too deeply to be a config") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path} must hold a mapping of settings, not {type(loaded).__name__}")
            data.update(loaded)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid {cls.__name__}:\n{_explain(exc)}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def check_rotation_mode(value: str | None, what: str = "mode") -> str | None:
    """A pydantic validator body: ``value`` must be a rotation mode (or None)."""
    from .rotation.hadamard import ROTATION_MODES

    if value is not None and value not in ROTATION_MODES:
        raise ValueError(f"unknown {what} {value!r}; use one of {list(ROTATION_MODES)}")
    return value


def check_device_dtype(device: str | None, dtype: str | None) -> None:
    """Raise :class:`ConfigError` for an unknown dtype, or a device this host does not have."""
    from .models.loading import resolve_device, resolve_dtype

    if dtype is not None:
        resolve_dtype(dtype)
    if device is not None:
        resolve_device(device)


class DeviceSettings(StrictModel):
    """``device`` and ``dtype`` of a job, checked when the config is built (before any load)."""

    device: str = "auto"
    dtype: str = "float32"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        check_device_dtype(value, None)
        return value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        check_device_dtype(None, value)
        return value


class EvalConfig(DeviceSettings):
    """Settings of ``rotaquant eval``: which model, which data, how to cut windows."""

    version: int = 1
    model: str = "smollm2-135m"
    data: str = "wikitext2"
    split: str = "test"
    data_dir: str | None = None
    seqlen: int = Field(2048, ge=2)
    max_windows: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)


class RotateConfig(DeviceSettings):
    """Settings of ``rotaquant rotate``: which model, which rotation config, where to write."""

    version: int = 1
    model: str = "smollm2-135m"
    config: str = "auto"
    mode: str | None = None
    seed: int = 0
    rotation_path: str | None = None
    output: str
    overwrite: bool = False
    allow_partial_rotation: bool = False  # a rotation file may lack matrices (random ones fill in)
    verify: bool = True  # compare a few tokens' logits before/after rotating; refuse a changed model

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str | None) -> str | None:
        return check_rotation_mode(value)
