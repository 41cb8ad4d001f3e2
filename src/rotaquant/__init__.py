"""rotaquant: rotation-based post-training quantization of large language models.

Public API (each verb takes one validated config or plain keyword arguments):

* :func:`load_model` - a causal LM and its tokenizer from local files (alias, GGUF, HF folder).
* :mod:`rotaquant.evaluate` - ``evaluate.perplexity(model, tokenizer, data, seqlen, ...)``.
"""

from __future__ import annotations

from . import evaluate
from .errors import RotaquantError
from .models.loading import load_model

__version__ = "0.1.0"
__all__ = ["RotaquantError", "__version__", "evaluate", "load_model"]
