"""Stages (online transforms and quantizers as ``nn.Module`` children) and the sites they run at."""

from .attention import AttentionStages
from .base import Stage, StageError, StagePipeline
from .sites import add_attention_stage, add_input_stage, has_stage, remove_stages, stage_map

__all__ = [
    "AttentionStages",
    "Stage",
    "StageError",
    "StagePipeline",
    "add_attention_stage",
    "add_input_stage",
    "has_stage",
    "remove_stages",
    "stage_map",
]
