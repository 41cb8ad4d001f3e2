"""Validated, serializable configs, one per job; each loads from YAML, a dict or kwargs.

Unknown keys are errors (a typo must not be silently ignored), and every config carries a
``version`` so saved files can be migrated later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
            loaded = read_yaml(path) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path} must hold a mapping of settings, not {type(loaded).__name__}")
            data.update(loaded)
        try:
            data = cls.normalize(data)
            data.update({k: v for k, v in overrides.items() if v is not None})
            return cls(**data)
        except (ValidationError, ValueError) as exc:
            detail = explain_validation_error(exc) if isinstance(exc, ValidationError) else f"  {exc}"
            raise ConfigError(f"invalid {cls.__name__}:\n{detail}") from None

    @classmethod
    def normalize(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` in the flat form the fields use (identity here; a nested recipe flattens)."""
        return data

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def read_yaml(path: Path, error: type[ConfigError] = ConfigError) -> Any:
    """The YAML document in file ``path``; ``error`` (named) if it is not UTF-8 or not YAML."""
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start}); a config is a YAML text file") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a config") from None


def explain_validation_error(exc: ValidationError) -> str:
    """One indented line per error of ``exc``: the dotted key, then what is wrong with it.

    An unknown key says to check the spelling (configs forbid unknown keys, so a typo is an
    error). Every StrictModel config (job configs, rotation specs, architecture specs) reports
    through this one function.
    """
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


class ModelConfig(DeviceSettings):
    """Which model :func:`rotaquant.load_model` loads, where and in which dtype (recipe section ``model``)."""

    model: str = "smollm2-135m"


class RotationConfig(StrictModel):
    """How :func:`rotaquant.rotate` rotates a model (recipe section ``rotation``).

    ``rotation_config`` is the architecture's rotation spec (``auto``: the registry's config for
    the model class; a built-in name or a YAML path); ``rotation_mode`` overrides the mode of the
    fused matrices (one of :data:`~rotaquant.rotation.hadamard.ROTATION_MODES` or ``{name:
    mode}``); ``rotation_path`` loads R1/R2 from a file instead of generating them.
    """

    rotate: bool = True
    rotation_config: str = "auto"
    rotation_mode: str | dict[str, str] | None = None
    rotation_path: str | None = None
    allow_partial_rotation: bool = False  # rotation_path may lack matrices (generated) or have extra ones (skipped)
    online_rotations: bool = True
    seed: int = 0

    @field_validator("rotation_mode")
    @classmethod
    def _mode(cls, value: str | dict | None) -> str | dict | None:
        if isinstance(value, dict):
            for name, mode in value.items():
                check_rotation_mode(mode, f"rotation mode of {name}")
            return value
        return check_rotation_mode(value, "rotation mode")


class CalibrationConfig(StrictModel):
    """The calibration windows of GPTQ and SmoothQuant (recipe section ``calibration``)."""

    nsamples: int = Field(128, ge=1)
    cal_seqlen: int = Field(2048, ge=2)  # default: seqlen
    cal_data: str = "wikitext2"
    cal_split: str = "validation"
    allow_test_calibration: bool = False  # explicit opt-in to calibrate on the WikiText-2 test set


class EvaluateConfig(StrictModel):
    """What :func:`rotaquant.evaluate` measures (recipe section ``eval``): perplexity over
    ``max_windows`` windows of ``seqlen`` tokens of ``data``/``split`` and, with ``tasks``,
    zero-shot accuracy (lm-evaluation-harness definitions, 0-shot)."""

    data: str = "wikitext2"
    split: str = "test"
    data_dir: str | None = None
    seqlen: int = Field(2048, ge=2)
    max_windows: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    tasks: str | None = None  # zero-shot tasks after the perplexity: "piqa,arc_easy" or "all"
    task_limit: int | None = Field(None, ge=1)  # first N items of each task
    task_batch_size: int = Field(32, ge=1)  # sequences per forward pass of the tasks
    bos: str = "tokenizer"  # BOS policy of the tasks: tokenizer, never or always

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from .eval.tasks import TASKS

        names = [t.strip() for t in value.split(",") if t.strip()]
        unknown = [t for t in names if t != "all" and t not in TASKS]
        if unknown or not names:
            what = ", ".join(repr(t) for t in unknown) or repr(value)
            raise ValueError(f"unknown zero-shot task {what}; use 'all' or some of {', '.join(TASKS)}")
        return ",".join(names)

    @field_validator("bos")
    @classmethod
    def _bos(cls, value: str) -> str:
        from .eval.loglikelihood import BOS_POLICIES

        if value not in BOS_POLICIES:
            raise ValueError(f"bos must be one of {list(BOS_POLICIES)}, not {value!r}")
        return value


class OutputConfig(StrictModel):
    """Where :func:`rotaquant.export` writes (recipe section ``output``): a folder, replaced only
    with ``overwrite`` and only if rotaquant wrote it."""

    output: str | None = None
    overwrite: bool = False


class EvalConfig(ModelConfig, EvaluateConfig):
    """Settings of ``rotaquant eval``: the model, and what to measure (``ppl``: the perplexity too)."""

    version: int = 1
    ppl: bool = True


class RotateConfig(ModelConfig):
    """Settings of ``rotaquant rotate``: which model, which rotation config, where to write."""

    version: int = 1
    rotation_config: str = "auto"
    rotation_mode: str | None = None
    seed: int = 0
    rotation_path: str | None = None
    output: str
    overwrite: bool = False
    allow_partial_rotation: bool = False  # a rotation file may lack matrices (random ones fill in)
    verify: bool = True  # compare a few tokens' logits before/after rotating; refuse a changed model

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        # version 1 files said config/mode; the keys are now those of the recipe and every command
        if isinstance(data, dict):
            data = dict(data)
            for old, new in (("config", "rotation_config"), ("mode", "rotation_mode")):
                if old in data:
                    if data.get(new) is not None:
                        raise ValueError(f"{old!r} and {new!r} are the same setting; give only {new!r}")
                    data[new] = data.pop(old)
        return data

    @field_validator("rotation_mode")
    @classmethod
    def _known_mode(cls, value: str | None) -> str | None:
        return check_rotation_mode(value)
