"""The ``rotaquant analyze`` job: load the model and the calibration windows, run
:func:`rotaquant.eval.analyze.analyze`, and write the CSV, the summary, the side-by-side table and
the PNGs into one folder, atomically."""

from __future__ import annotations

import math
import os
import platform
import time

import torch

from ..eval.analyze import AnalysisResult, AnalyzeConfig, analyze, bits_label
from ..eval.layerwise import LAYER, LOGITS
from ..eval.layerwise_report import method_summary, rows_to_csv, side_by_side, summary_text
from ..io import atomic_directory, atomic_write_json, atomic_write_text, check_writable_output


def machine() -> dict:
    """Where the analysis ran (for the results' README and JSON)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "processor": platform.processor()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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
