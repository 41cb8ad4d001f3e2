"""The ``rotaquant analyze`` job: process a model several ways, quantize, compare layer by layer.

For each method a fresh copy of the full-precision model is processed (``none``: nothing;
``quarot``: random Hadamard R1-R4; ``spinquant``: R1/R2 from ``rotation_path`` (else random
Hadamard) with R3/R4, and asymmetric activations and KV cache; ``smoothquant``: SmoothQuant
scales) and a second copy is processed the same way (a copy of the first where the processing
leaves no online transforms) and quantized. The processed copy is the reference (same basis,
same function as the FP model; see :mod:`rotaquant.eval.layerwise`); the quantized one is
compared with it on the calibration windows. The statistics of the processed
model's linear inputs (kurtosis, outlier share, per-channel max) are captured before quantizing.
:func:`run_analyze` loads the model, runs :func:`analyze` and writes the CSV, the summary, the
side-by-side table and the PNGs into one folder, atomically.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..config import StrictModel
from ..io import atomic_directory, atomic_write_json, atomic_write_text, check_writable_output
from .capture import capture
from .layerwise import (
    LAYER,
    LOGITS,
    MODES,
    Row,
    compare_layers,
    compare_logits,
    compare_weights,
    decoder_layers,
)
from .layerwise_report import method_summary, rows_to_csv, side_by_side, summary_text

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
    # quantization (any other quantize() key goes in `recipe`)
    w_bits: int = 4
    a_bits: int = 4
    k_bits: int = 4
    v_bits: int = 4
    w_method: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
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
        symmetric, no clipping) unless ``recipe`` says otherwise.
        """
        from ..quant.recipe import PTQRecipe

        base: dict[str, Any] = {"rotate": False}
        if "preset" in PTQRecipe.model_fields:
            base["preset"] = "none"
        out = {**base, **self.recipe, "w_bits": self.w_bits, "a_bits": self.a_bits, "k_bits": self.k_bits,
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
        from ..models.registry import lookup

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


def machine() -> dict:
    """Where the analysis ran (for the results' README and JSON)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "processor": platform.processor()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def bits_label(cfg: AnalyzeConfig) -> str:
    """``W4A4KV4 RTN``-style name of the quantization."""
    from ..quant.recipe import PTQRecipe

    rec = PTQRecipe(**cfg.quant_overrides())
    return f"{rec.bits_label() or 'FP'} {rec.w_method.upper()}"


def _finite(obj):
    """NaN (a summary entry that has no value, e.g. no processing check for ``none``) -> None."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def write_analysis(result: AnalysisResult, cfg: AnalyzeConfig, output: str | os.PathLike,
                   overwrite: bool = False, extra: dict | None = None) -> dict[str, str]:
    """Write ``analysis.csv``, ``summary.txt``, ``side_by_side.md``, ``analysis.json`` and the
    PNGs into ``output``, all or nothing (a temporary folder renamed at the end)."""
    header = (f"rotaquant analyze: {cfg.model}, {bits_label(cfg)}, {cfg.nsamples} windows x {cfg.seqlen} "
              f"tokens ({cfg.cal_data} {cfg.cal_split}), threshold {cfg.threshold}")
    texts = {
        "summary.txt": summary_text(result.rows, cfg.methods, cfg.threshold, header),
        "side_by_side.md": (f"# {header}\n\nOutput cosine vs the full-precision reference, every layer and module "
                            "(weights: quantized vs unquantized weight).\n\n"
                            + side_by_side(result.rows, cfg.methods)
                            + "\n## MSE\n\n" + side_by_side(result.rows, cfg.methods, metric="mse", fmt="{:.4g}")
                            + "\n## Linear inputs of the processed FP model: kurtosis\n\n"
                            + side_by_side(result.rows, cfg.methods, metric="kurtosis", fmt="{:.2f}")),
        "analysis.csv": rows_to_csv(result.rows),
    }
    meta = _finite({"config": cfg.to_dict(), "seconds": result.seconds, "machine": machine(),
                    "summary": {m: method_summary(result.rows, m, cfg.threshold) for m in cfg.methods},
                    **(extra or {})})
    with atomic_directory(output, overwrite=overwrite) as tmp:
        for name, text in texts.items():
            atomic_write_text(tmp / name, text)
        atomic_write_json(tmp / "analysis.json", meta)
        if cfg.plots:
            from .analysis_plots import write_plots

            pngs = write_plots(result, cfg, tmp)
        else:
            pngs = []
    return {"summary": texts["summary.txt"], "files": sorted([*texts, "analysis.json", *pngs]),
            "layers_table": side_by_side(result.rows, cfg.methods, modules=[LAYER, LOGITS])}


def run_analyze(config: AnalyzeConfig | dict | str | os.PathLike | None = None, output: str | os.PathLike = "analysis",
                overwrite: bool = False, progress: bool = True, preloaded: tuple | None = None,
                **overrides) -> dict:
    """Load the model and calibration windows, :func:`analyze`, and :func:`write_analysis`.

    ``preloaded=(model, tokenizer)`` skips loading (that model is not mutated). Returns the
    summary text, the side-by-side table of layer outputs, the files written and the seconds.
    """
    from ..data import calibration_windows
    from ..models.loading import load_model

    cfg = config if isinstance(config, AnalyzeConfig) and not overrides else AnalyzeConfig.load(
        config.to_dict() if isinstance(config, AnalyzeConfig) else config, **overrides)
    check_writable_output(output, "dir", overwrite)  # a bad output fails now, not after minutes of work
    if cfg.plots:
        from .plots import _pyplot

        _pyplot()
    started = time.perf_counter()
    model, tokenizer = preloaded if preloaded is not None else load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    windows = calibration_windows(tokenizer, cfg.nsamples, cfg.seqlen, cfg.cal_data, cfg.cal_split,
                                  cfg.seed, cfg.data_dir)
    result = analyze(model, windows, cfg, tokenizer, progress)
    total = time.perf_counter() - started
    out = write_analysis(result, cfg, output, overwrite, extra={"total_seconds": total})
    return {**out, "seconds": {**result.seconds, "total": total}, "output": str(output)}
