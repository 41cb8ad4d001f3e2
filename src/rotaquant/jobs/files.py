"""Files the jobs write for the algorithm packages: rotation files and learning checkpoints.

``rotation/`` and ``learn/`` compute and serialize (bytes, state dicts) but write no files; the
jobs write them here, atomically (a temp file, then a rename), so a failed run leaves no half file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io import atomic_write_bytes, load_torch_file
from ..rotation.matrices import rotation_file_bytes


def write_rotation_file(path: str | os.PathLike, matrices: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> Path:
    """Write matrices keyed ``name`` / ``name@group`` as a rotaquant safetensors file, atomically.

    Args:
        path: the file to write (its parents are created).
        matrices: e.g. ``RotationStore.state_dict()`` or ``LearnResult.matrices``.
        metadata: extra string metadata (the file format tag is always added).

    Returns:
        ``path`` as a Path.
    """
    return atomic_write_bytes(path, rotation_file_bytes(matrices, metadata))


class CheckpointFile:
    """A learning checkpoint kept in one file: what the optimize job hands the training loop.

    :func:`rotaquant.learn.train.learn` calls :meth:`write` every ``checkpoint_every`` steps and
    :meth:`read` once when resuming; the file is replaced atomically, so a run killed while
    writing keeps the previous checkpoint.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def read(self) -> Any | None:
        """The saved state, or None when there is no checkpoint file yet.

        Raises:
            ConfigError: the file exists but cannot be read as a torch file (never suggesting
                ``weights_only=False``).
        """
        if not self.path.is_file():
            return None
        return load_torch_file(self.path, "checkpoint", ConfigError)

    def write(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint file with ``state`` (atomically)."""
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue())
