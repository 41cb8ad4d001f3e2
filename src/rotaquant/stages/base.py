"""Stages: the transforms and quantizers that act on a tensor while the model runs.

A *site* is a place in the model where a tensor flows: a module's input, or the query, key or
value inside an attention module. Each site holds one :class:`StagePipeline`, an ``nn.Module``
child of the model, whose stages run in a fixed order by kind (rotations before quantizers),
whatever order they were added in. Because stages are modules they show in ``repr``, move with
``.to()``, survive ``copy.deepcopy`` and pickling, and their buffers are in ``state_dict``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError


class StageError(ConfigError):
    """A stage cannot be added or removed as asked (duplicate name, wrong type, bad order)."""


class Stage(nn.Module):
    """Base class of everything that runs at a site. Subclasses set ``kind`` and ``order``.

    ``order`` fixes where a stage runs in its pipeline: lower first. Rotations are 0 and
    quantizers 100, so a quantizer always sees the rotated tensor, as a deployed kernel would.
    """

    kind: ClassVar[str] = "transform"
    order: ClassVar[int] = 50

    def fused_forward(self, x: torch.Tensor, following: Stage) -> torch.Tensor | None:
        """``following(self(x))`` computed in one step, or None where this stage has no fused
        form for ``following`` (then the pipeline calls both). Overridden where a kernel fuses
        two stages with the same result (the online Hadamard and a quantizer)."""
        return None


class StagePipeline(nn.Module):
    """An ordered, named set of stages applied one after the other to a tensor."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleDict()

    def add(self, name: str, stage: Stage, replace: bool = False) -> None:
        """Insert ``stage`` under ``name`` at the place its ``order`` gives (mutates self).

        Raises:
            StageError: ``stage`` is not a :class:`Stage`, or ``name`` exists and not ``replace``.
        """
        if not isinstance(stage, Stage):
            raise StageError(f"stage {name!r} must be a rotaquant Stage, got {type(stage).__name__}")
        if name in self.stages and not replace:
            raise StageError(f"a stage named {name!r} is already here; remove it first or pass replace=True")
        items = [(n, s) for n, s in self.stages.items() if n != name] + [(name, stage)]
        items.sort(key=lambda item: item[1].order)  # stable: same order keeps insertion order
        self.stages = nn.ModuleDict(items)

    def remove(self, name: str) -> bool:
        """Remove the stage ``name``; returns whether it was there."""
        if name not in self.stages:
            return False
        del self.stages[name]
        return True

    def names(self) -> list[str]:
        """Stage names in the order they run."""
        return list(self.stages.keys())

    def __len__(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stages = list(self.stages.values())
        i = 0
        while i < len(stages):
            if i + 1 < len(stages):  # a stage may compute itself and the next one in one step
                fused = stages[i].fused_forward(x, stages[i + 1])
                if fused is not None:
                    x, i = fused, i + 2
                    continue
            x, i = stages[i](x), i + 1
        return x
