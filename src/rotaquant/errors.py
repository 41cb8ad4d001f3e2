"""Named exceptions raised by rotaquant.

Every error derives from :class:`RotaquantError`, so callers can catch the whole family, and
each message names the thing that is wrong and what to do about it.
"""

from __future__ import annotations


class RotaquantError(Exception):
    """Base class of all errors raised by rotaquant."""


class ConfigError(RotaquantError, ValueError):
    """A configuration (recipe, rotation config, CLI flags) is invalid."""


class ModelNotFoundError(RotaquantError, FileNotFoundError):
    """A model alias, file or folder could not be found locally."""


class ModelLoadError(RotaquantError):
    """A model file exists but could not be read (corrupt GGUF, missing weights, ...)."""


class OfflineError(RotaquantError):
    """Something would have to be downloaded, but rotaquant works offline."""


class DataError(RotaquantError, ValueError):
    """A dataset is missing, empty or malformed."""


class OutputError(RotaquantError, OSError):
    """An output path cannot or must not be written (exists, protected, not writable)."""


class NonFiniteError(RotaquantError, ValueError):
    """A computation produced NaN or infinity (the message names where it first appeared)."""
