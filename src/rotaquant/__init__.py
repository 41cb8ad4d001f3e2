"""rotaquant: rotation-based post-training quantization of large language models.

Public API (each verb takes one validated config or plain keyword arguments):

* :func:`load_model` - a causal LM and its tokenizer from local files (alias, GGUF, HF folder).
* :func:`rotate` - fold norms, fuse R1/R2, insert online R3/R4 (mutates the model).
* :func:`register_model` - teach rotaquant a new architecture (a config or two functions).
* :func:`quantize` - fake-quantize weights (RTN/GPTQ), activations and KV cache (mutates).
* :func:`learn_rotations` - learn R1/R2 of a loaded model with Cayley SGD (mutates the model).
* :func:`export_hf` - write a rotated model as a standard Hugging Face folder.
* :func:`export` - write a quantized model as a compressed-tensors checkpoint (``load_model`` reloads it).
* :func:`evaluate` - perplexity and zero-shot accuracy of a model in memory.
* :func:`optimize` - the ``rotaquant optimize`` job: load, :func:`learn_rotations`, write a rotation file.

Their configs (pydantic, unknown keys refused): :class:`ModelConfig`, :class:`RotationConfig`,
:class:`QuantConfig` (+ :class:`CalibrationConfig`), :class:`LearnConfig`, :class:`EvaluateConfig`,
:class:`OutputConfig`; :class:`PTQRecipe` composes them as the sections ``model``, ``rotation``,
``quant``, ``calibration``, ``eval`` and ``output`` (flat keys load too).

The jobs behind the command line (load, run the verbs, write results) are in :mod:`rotaquant.jobs`.
"""

from __future__ import annotations

from . import (
    errors,
    export,  # callable: rotaquant.export(model, tokenizer, output) (see export/__init__.py)
)
from .config import CalibrationConfig, EvaluateConfig, ModelConfig, OutputConfig, RotationConfig
from .errors import RotaquantError
from .eval.api import evaluate
from .export.hf import export_hf
from .jobs.learn import optimize
from .learn.api import learn_rotations
from .learn.config import OptimizeConfig as LearnConfig
from .models.loading import load_model
from .quant.pipeline import quantize
from .quant.recipe import PTQRecipe, QuantConfig
from .rotation.registry import register_model
from .rotation.rotate import rotate, rotation_record

__version__ = "0.1.0"
__all__ = [
    "CalibrationConfig",
    "EvaluateConfig",
    "LearnConfig",
    "ModelConfig",
    "OutputConfig",
    "PTQRecipe",
    "QuantConfig",
    "RotaquantError",
    "RotationConfig",
    "__version__",
    "errors",
    "evaluate",
    "export",
    "export_hf",
    "learn_rotations",
    "load_model",
    "optimize",
    "quantize",
    "register_model",
    "rotate",
    "rotation_record",
]
