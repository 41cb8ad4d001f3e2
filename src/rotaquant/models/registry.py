"""Architectures as data: model class name -> how to rotate it.

Each entry is either a rotation config (a built-in name, a YAML path, a dict or a
:class:`~rotaquant.rotation.spec.RotationSpec`), or two functions, as AIMET allows:

* ``norm_linear_pairs(model) -> [(norm, [linear, ...]), ...]``: norms to fold;
* ``residual_linears(model) -> [(module, rotate_input, rotate_output), ...]``: which weights
  read (input) or write (output) the residual stream and so take R1.

Register your own with :func:`register_model`; :func:`lookup` raises a clear error listing the
registered architectures for anything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

logger = logging.getLogger(__name__)


class UnknownArchitectureError(ConfigError):
    """No rotation config is registered for this model class."""


@dataclass(frozen=True)
class ModelEntry:
    """How to rotate one model class: a config, or a pair of functions."""

    class_name: str
    config: object | None = None
    norm_linear_pairs: Callable | None = None
    residual_linears: Callable | None = None

    @property
    def functional(self) -> bool:
        return self.config is None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    class_name: str,
    config: str | os.PathLike | dict | object | None = None,
    *,
    norm_linear_pairs: Callable | None = None,
    residual_linears: Callable | None = None,
    overwrite: bool = False,
) -> ModelEntry:
    """Register how to rotate models of class ``class_name`` (e.g. ``"LlamaForCausalLM"``).

    Give either ``config`` (built-in config name, YAML path, dict or RotationSpec) or both
    functions. Raises ConfigError for an ambiguous call, or if the class is already registered
    and ``overwrite`` is false.
    """
    if (config is None) == (norm_linear_pairs is None and residual_linears is None):
        raise ConfigError("register_model needs either config=... or norm_linear_pairs= and residual_linears=")
    if config is None and (norm_linear_pairs is None or residual_linears is None):
        raise ConfigError("register_model with functions needs both norm_linear_pairs and residual_linears")
    if class_name in _REGISTRY and not overwrite:
        raise ConfigError(f"{class_name} is already registered; pass overwrite=True to replace it")
    if config is not None:
        from ..rotation.spec import load_spec

        config = load_spec(config)  # validate now, not at the first rotate()
    entry = ModelEntry(class_name, config, norm_linear_pairs, residual_linears)
    _REGISTRY[class_name] = entry
    logger.debug("registered %s", class_name)
    return entry


def unregister_model(class_name: str) -> None:
    """Remove a registration (no error if absent)."""
    _REGISTRY.pop(class_name, None)


def registered_models() -> list[str]:
    """The class names that :func:`lookup` knows."""
    return sorted(_REGISTRY)


def lookup(model_or_class) -> ModelEntry:
    """The entry for a model instance or class name; a clear error if none is registered."""
    name = model_or_class if isinstance(model_or_class, str) else type(model_or_class).__name__
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"no rotation config is registered for {name}. Registered: {', '.join(registered_models())}. "
            "Pass config='transformer_universal' (or your own YAML) to rotate(), or register it: "
            f"rotaquant.register_model({name!r}, config='path/to/rotation.yaml')"
        ) from None


for _cls, _spec in {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MistralForCausalLM": "mistral",
}.items():
    register_model(_cls, _spec)
