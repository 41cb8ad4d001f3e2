"""Exports: rotated models as standard Hugging Face folders (:mod:`.hf`) and quantized models as
compressed-tensors checkpoints (:mod:`.compressed`, reloaded by :mod:`.reload`).

This package is also the public verb: ``rotaquant.export(model, tokenizer, output, ...)`` calls
:func:`~rotaquant.export.compressed.export_quantized`. A module cannot define ``__call__``
itself, so its class is swapped for a subclass of ``ModuleType`` that can (the documented way to
customise a module's attributes); ``rotaquant.export.hf`` and friends stay importable.
"""

from __future__ import annotations

import os
import sys
import types


class _ExportModule(types.ModuleType):
    def __call__(self, model, tokenizer, output, overwrite: bool | None = None, metadata: dict | None = None,
                 dtype=None, transform_weights: bool = True, max_shard_bytes: int | None = None) -> dict:
        """Write a quantized model as a compressed-tensors checkpoint; see ``export_quantized``.

        ``output`` is the verb's config, an :class:`~rotaquant.config.OutputConfig` (or its keys as
        a dict: ``output``, ``overwrite``), or simply the folder (a str or path). ``overwrite``
        given here overrides the config's. ``max_shard_bytes``: the most tensor bytes per
        safetensors file (default 2 GiB; larger checkpoints are sharded with an index). Writes the
        folder; does not change the model.

        Raises:
            ConfigError: the config is invalid or names no output folder.
        """
        from .compressed import SHARD_BYTES, export_quantized

        cfg = output_config(output, overwrite)
        return export_quantized(model, tokenizer, cfg.output, overwrite=cfg.overwrite, metadata=metadata, dtype=dtype,
                                transform_weights=transform_weights,
                                max_shard_bytes=SHARD_BYTES if max_shard_bytes is None else max_shard_bytes)


def output_config(output, overwrite: bool | None = None):
    """An :class:`~rotaquant.config.OutputConfig` from a config, a dict or a folder path, with
    ``overwrite`` (when not None) replacing its key; it must name a folder."""
    from ..config import OutputConfig
    from ..errors import ConfigError

    if isinstance(output, OutputConfig):
        data = output.to_dict()
    elif isinstance(output, dict):
        data = dict(output)
    elif isinstance(output, (str, os.PathLike)):
        data = {"output": os.fspath(output)}
    else:
        raise ConfigError(f"export needs an OutputConfig, a dict of its keys or a folder path, not {type(output).__name__}")
    cfg = OutputConfig.load(data, overwrite=overwrite)
    if not cfg.output:
        raise ConfigError("export needs a folder to write: OutputConfig(output='path/to/folder')")
    return cfg


sys.modules[__name__].__class__ = _ExportModule
