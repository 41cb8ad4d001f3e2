"""Exports: rotated models as standard Hugging Face folders (:mod:`.hf`) and quantized models as
compressed-tensors checkpoints (:mod:`.compressed`, reloaded by :mod:`.reload`).

This package is also the public verb: ``rotaquant.export(model, tokenizer, output, ...)`` calls
:func:`~rotaquant.export.compressed.export_quantized`. A module cannot define ``__call__``
itself, so its class is swapped for a subclass of ``ModuleType`` that can (the documented way to
customise a module's attributes); ``rotaquant.export.hf`` and friends stay importable.
"""

from __future__ import annotations

import sys
import types


class _ExportModule(types.ModuleType):
    def __call__(self, model, tokenizer, output, overwrite: bool = False, metadata: dict | None = None,
                 dtype=None, transform_weights: bool = True) -> dict:
        """Write a quantized model as a compressed-tensors checkpoint; see ``export_quantized``."""
        from .compressed import export_quantized

        return export_quantized(model, tokenizer, output, overwrite=overwrite, metadata=metadata, dtype=dtype,
                                transform_weights=transform_weights)


sys.modules[__name__].__class__ = _ExportModule
