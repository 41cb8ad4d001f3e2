"""Architectures as data: model class name -> rotation config (with its ``architecture:`` sites).

The registry lives in ``rotation/`` because what it stores is a rotation spec; ``models/`` only
loads models and describes their architecture, and never imports ``rotation`` (the dependency
runs one way, rotation -> models; tests/test_import_layers.py checks it).

Each entry is a rotation config (a built-in name, a YAML path, a dict or a
:class:`~rotaquant.rotation.spec.RotationSpec`). Register your own with :func:`register_model`,
which checks on a tiny instance of the class (when transformers has it) that the config
preserves the model's function in float64. :func:`lookup` falls back to ModelOpt's
``transformer_universal`` for a class nobody registered, and says so in the log.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..models.tiny import tiny_instance
from .spec import RotationSpec, load_spec
from .structure import check_rotation_structure, format_gaps
from .verify import rotation_error

logger = logging.getLogger(__name__)
FALLBACK = "transformer_universal"


class UnknownArchitectureError(ConfigError):
    """No rotation config is registered for this model class and no fallback applies."""


class RegistrationCheckError(ConfigError):
    """A config given to :func:`register_model` does not preserve the model's function."""


@dataclass(frozen=True)
class ModelEntry:
    """How to rotate one model class: its validated rotation config."""

    class_name: str
    config: object


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(class_name: str, config: str | os.PathLike | dict | object, *, overwrite: bool = False,
                   verify: bool = True) -> ModelEntry:
    """Register the rotation config of model class ``class_name`` (e.g. ``"LlamaForCausalLM"``).

    ``config`` is a built-in config name, a YAML path, a dict or a RotationSpec; it is
    validated now. With ``verify`` and when transformers defines ``class_name``, a tiny random
    instance is rotated in float64 and must compute the same logits (1e-6 relative).

    Raises:
        ConfigError: the class is registered already (and not ``overwrite``) or the config is
            invalid; RegistrationCheckError: the check found a changed function.
    """
    if class_name in _REGISTRY and not overwrite:
        raise ConfigError(f"{class_name} is already registered; pass overwrite=True to replace it")
    spec = load_spec(config)
    if verify:
        _verify(class_name, spec)
    entry = ModelEntry(class_name, spec)
    _REGISTRY[class_name] = entry
    logger.debug("registered %s", class_name)
    return entry


def _verify(class_name: str, spec: RotationSpec) -> None:
    model = tiny_instance(class_name)
    if model is None:
        logger.debug("no tiny instance of %s could be built; skipping the function check", class_name)
        return
    gaps = check_rotation_structure(model, spec)
    err = rotation_error(model, spec)
    if gaps or not err <= 1e-6:
        found = f" Gaps found:\n{format_gaps(gaps)}" if gaps else ""
        raise RegistrationCheckError(
            f"the config registered for {class_name} changes the model's function (relative logit error "
            f"{err:.2e} on a tiny float64 instance): a norm is not folded or a residual reader/writer is "
            f"not rotated; check norm_fuse_config and rotation_config against the model's module names.{found}"
        )


def unregister_model(class_name: str) -> None:
    """Remove a registration (no error if absent)."""
    _REGISTRY.pop(class_name, None)


def registered_models() -> list[str]:
    """The class names that :func:`lookup` knows."""
    return sorted(_REGISTRY)


def lookup(model_or_class, fallback: bool = True) -> ModelEntry:
    """The entry for a model instance or class name.

    An unregistered class gets ``transformer_universal`` (logged) when ``fallback``, else
    :class:`UnknownArchitectureError` listing the registered classes and how to register.
    """
    name = model_or_class if isinstance(model_or_class, str) else type(model_or_class).__name__
    if name in _REGISTRY:
        return _REGISTRY[name]
    if not fallback:
        raise UnknownArchitectureError(
            f"no rotation config is registered for {name}. Registered: {', '.join(registered_models())}. "
            f"Pass config={FALLBACK!r} (or your own YAML) to rotate(), or register it: "
            f"rotaquant.register_model({name!r}, config='path/to/rotation.yaml')"
        )
    logger.info("no rotation config is registered for %s; using %s (register one with "
                "rotaquant.register_model(%r, config=...))", name, FALLBACK, name)
    return ModelEntry(name, load_spec(FALLBACK))


for _cls, _spec in {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
    "Mamba2ForCausalLM": "mamba2",
    "BambaForCausalLM": "bamba",
    "NemotronHForCausalLM": "nemotron_h",
}.items():
    register_model(_cls, _spec, verify=False)  # checked by tests/rotation/test_registry.py
