"""The ``rotaquant analyze`` job: process a model several ways, quantize, compare layer by layer.

For each method a fresh copy of the full-precision model is processed (``none``: nothing;
``quarot``: random Hadamard R1-R4; ``spinquant``: R1/R2 from ``rotation_path`` (else random
Hadamard) with R3/R4, and asymmetric activations and KV cache; ``smoothquant``: SmoothQuant
scales) and a second copy is processed the same way (a copy of the first where the processing
leaves no online transforms) and quantized. The processed copy is the reference (same basis,
same function as the FP model; see :mod:`rotaquant.eval.layerwise`); the quantized one is
compared with it on the calibration windows. The statistics of the processed
model's linear inputs (kurtosis, outlier share, per-channel max) are captured before quantizing.
The job that loads the model and writes the CSV, the summary, the side-by-side table and the
PNGs is :func:`rotaquant.jobs.analyze.run_analyze`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config import StrictModel
from .capture import capture
from .layerwise import (
    MODES,
    Row,
    compare_layers,
    compare_logits,
    compare_weights,
    decoder_layers,
)

logger = logging.getLogger(__name__)

METHODS = {
    "none": "no processing",
    "quarot": "random Hadamard R1/R2 fused, R3/R4 online",
    "spinquant": "R1/R2 from rotation_path (else random Hadamard), R3/R4 online; asymmetric A/K/V",
    "smoothquant": "SmoothQuant scales (alpha) folded into the norms and the QKV / gate-up linears",
}


class AnalyzeConfig(StrictModel):
    """Everything that defines one ``rotaquant analyze`` run."""

    version: int = 1
    model: str = "smollm2-135m"
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    rotation_path: str | None = None
    seed: int = 0
    smoothquant_alpha: float = Field(0.5, ge=0, le=1)
    # quantization (any other quantize() key goes in `quant`, as in a recipe's quant section)
    w_bits: int = 4
    a_bits: int = 4
    k_bits: int = 4
    v_bits: int = 4
    w_method: str | None = None
    quant: dict[str, Any] = Field(default_factory=dict)
    # calibration windows: used for SmoothQuant, GPTQ and the comparison
    nsamples: int = Field(4, ge=1)
    seqlen: int = Field(512, ge=2)
    cal_data: str = "wikitext2"
    cal_split: str = "validation"
    data_dir: str | None = None
    # report
    modes: list[str] = Field(default_factory=lambda: list(MODES))
    threshold: float = 0.95
    outlier_k: float = Field(6.0, gt=0)
    plots: bool = True
    plot_layers: list[int] | None = None
    device: str = "auto"
    dtype: str = "float32"

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        # version 1 files said `recipe:`; `--recipe` is now the job's own YAML in every command
        if isinstance(data, dict) and "recipe" in data:
            data = dict(data)
            if data.get("quant") is not None:
                raise ValueError("'recipe' and 'quant' are the same setting; give only 'quant'")
            data["quant"] = data.pop("recipe")
        return data

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if m not in METHODS]
        if bad or not value:
            raise ValueError(f"unknown methods {bad}; choose from {list(METHODS)}")
        return list(dict.fromkeys(value))

    @field_validator("modes")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if not value or set(value) - set(MODES):
            raise ValueError(f"modes must be some of {list(MODES)}")
        return value

    @model_validator(mode="after")
    def _recipe_valid(self) -> AnalyzeConfig:
        from ..quant.recipe import PTQRecipe

        PTQRecipe(**self.quant_overrides())  # a typo'd or invalid key fails here, before any work
        return self

    def quant_overrides(self) -> dict[str, Any]:
        """The keyword arguments of :func:`rotaquant.quantize` (before per-method changes).

        The analysis does each method's processing itself, so ``rotate`` is false, and the
        recipe's own defaults apply (``preset: none`` where recipes have presets: plain RTN,
        symmetric, no clipping) unless ``quant`` says otherwise.
        """
        from ..quant.recipe import PTQRecipe

        base: dict[str, Any] = {"rotate": False}
        if "preset" in PTQRecipe.model_fields:
            base["preset"] = "none"
        out = {**base, **self.quant, "w_bits": self.w_bits, "a_bits": self.a_bits, "k_bits": self.k_bits,
               "v_bits": self.v_bits}
        if self.w_method is not None:
            out["w_method"] = self.w_method
        return out


@dataclass
class AnalysisResult:
    """Rows of every method, the captured input statistics and the seconds per method."""

    rows: list[Row] = field(default_factory=list)
    absmax: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> module -> channels
    seconds: dict[str, float] = field(default_factory=dict)
    layers: int = 0
    sites: list[str] = field(default_factory=list)


def _process(method: str, model: nn.Module, cfg: AnalyzeConfig, windows: torch.Tensor, progress: bool) -> dict:
    """Process ``model`` IN PLACE for ``method``; returns the method's quantize() overrides."""
    from ..quant.smoothquant import smooth
    from ..rotation.rotate import rotate

    if method == "quarot":
        rotate(model, mode="hadamard", seed=cfg.seed, progress=progress)
    elif method == "spinquant":
        mode = None if cfg.rotation_path else "hadamard"
        rotate(model, mode=mode, seed=cfg.seed, rotation_path=cfg.rotation_path, progress=progress)
        return {"a_asym": True, "k_asym": True, "v_asym": True}
    elif method == "smoothquant":
        smooth(model, windows, alpha=cfg.smoothquant_alpha, progress=progress)
    return {}


def input_sites(model: nn.Module) -> list[str]:
    """Linears (relative to a decoder layer) whose inputs differ: the first linear of each
    norm-fused group of the rotation config, and every linear outside those groups."""
    layer = decoder_layers(model)[0][1]
    linears = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    try:
        from ..rotation.registry import lookup

        groups = lookup(model).config.norm_fuse_config.decoder_layer_fuse
    except Exception:
        return linears
    shared = {t for _, targets in groups for t in targets[1:]}
    return [n for n in linears if n not in shared]


def _stat_rows(method: str, stats: dict, layer_index: dict[str, tuple[int, str]]) -> list[Row]:
    rows = []
    for name, per in stats.items():
        st = per["input"]
        i, rel = layer_index[name]
        rows += [Row(method, i, rel, "activation", "kurtosis", st.kurtosis),
                 Row(method, i, rel, "activation", "outlier_share", st.outlier_share),
                 Row(method, i, rel, "activation", "max_abs", float(st.absmax.max()))]
    return rows


def analyze(model: nn.Module, windows: torch.Tensor, config: AnalyzeConfig | dict | None = None,
            tokenizer=None, progress: bool = True) -> AnalysisResult:
    """Run every method of ``config`` on copies of ``model`` (not mutated) and compare.

    ``windows``: token ids ``[N, L]`` used for SmoothQuant, GPTQ, the captured statistics and
    the comparison. Returns an :class:`AnalysisResult`.
    """
    cfg = config if isinstance(config, AnalyzeConfig) else AnalyzeConfig.load(config)
    layers = decoder_layers(model)
    sites = input_sites(model)
    layer_index = {f"{lname}.{s}": (i, s) for i, (lname, _) in enumerate(layers) for s in sites}
    result = AnalysisResult(layers=len(layers), sites=sites)
    for method in cfg.methods:
        started = time.perf_counter()
        logger.info("analyze: %s", method)
        ref = model if method == "none" else copy.deepcopy(model)
        extra = _process(method, ref, cfg, windows, progress)
        stats = capture(ref, list(layer_index), windows, what=("input",), outlier_k=cfg.outlier_k)
        result.rows += _stat_rows(method, stats, layer_index)
        result.absmax[method] = {n: s["input"].absmax.tolist() for n, s in stats.items()}
        if ref is not model:  # the processed FP model must compute the original function
            check = compare_logits(model, ref, windows[:1])
            result.rows += [Row(method, len(layers), "logits", "processed_fp", k, v) for k, v in check.items()]
        if method in ("none", "smoothquant"):  # no online transforms: a copy is the same processing
            cand = copy.deepcopy(ref)
        else:
            cand = copy.deepcopy(model)
            _process(method, cand, cfg, windows, progress=False)
        from ..quant.pipeline import quantize

        quantize(cand, None, tokenizer=tokenizer, calibration=windows, progress=progress,
                 **{**cfg.quant_overrides(), **extra})
        result.rows += compare_weights(ref, cand, method)
        result.rows += compare_layers(ref, cand, windows, method, tuple(cfg.modes), progress=progress)
        del cand, ref
        result.seconds[method] = time.perf_counter() - started
        logger.info("analyze: %s done in %.1f s", method, result.seconds[method])
    return result


def bits_label(cfg: AnalyzeConfig) -> str:
    """``W4A4KV4 RTN``-style name of the quantization."""
    from ..quant.recipe import PTQRecipe

    rec = PTQRecipe(**cfg.quant_overrides())
    return f"{rec.bits_label() or 'FP'} {rec.w_method.upper()}"
