"""The ``rotaquant ptq`` job: load, rotate, quantize, evaluate; one result dict (and JSON)."""

from __future__ import annotations

import logging
import os
import time

from ..eval.api import evaluate
from ..io import atomic_write_json
from ..models.loading import load_model
from ..preflight import check_ptq
from ..quant.pipeline import check_group_sizes, load_recipe, quantize, rotate_for_recipe
from ..quant.recipe import PTQRecipe
from ..rotation.rotate import resolve_spec

logger = logging.getLogger(__name__)


def run_ptq(recipe: PTQRecipe | dict | str | os.PathLike | None = None, json_path: str | None = None,
            progress: bool = True, preloaded: tuple | None = None, **overrides) -> dict:
    """Run one PTQ recipe end to end and return ``{"ppl": ..., "recipe": ..., ...}``.

    ``preloaded=(model, tokenizer)`` skips loading (that model is mutated). The result
    holds the quantized model's perplexity under ``ppl``, the full recipe, and the seconds of
    each stage; with ``json_path`` it is also written there (atomically, only on success).
    """
    rec = load_recipe(recipe, **overrides)
    check_ptq(rec, json_path)  # settings, data and the JSON path before the model is loaded
    if rec.output:
        from ..io import check_writable_output

        check_writable_output(rec.output, "dir", overwrite=rec.overwrite)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if preloaded is None:
        model, tokenizer = load_model(rec.model, dtype=rec.dtype, device=rec.device)
    else:
        model, tokenizer = preloaded
    times["load"] = time.perf_counter() - t0
    check_group_sizes(model, rec, resolve_spec(model, rec.rotation_config).architecture)  # before rotating
    rotation = None
    if rec.rotate:
        t = time.perf_counter()
        state = rotate_for_recipe(model, rec, progress)
        times["rotate"] = time.perf_counter() - t
        rotation = {"fused_modules": state.fused_modules, "online_stages": state.online_stages,
                    "folded_norms": state.folded_norms}
    t = time.perf_counter()
    qstate = quantize(model, rec, tokenizer=tokenizer, progress=progress)
    times["quantize"] = time.perf_counter() - t
    measured = evaluate(model, tokenizer, rec.section("eval"), progress=progress)
    ppl, zeroshot = measured["perplexity"], measured["zeroshot"]
    times["eval"] = ppl["seconds"]
    if zeroshot:
        times["zeroshot"] = zeroshot["seconds"]
    times["total"] = time.perf_counter() - t0
    result = {
        "label": rec.label(),
        "ppl": ppl["ppl"],
        "eval": ppl,
        "recipe": rec.to_dict(),
        "rotation": rotation,
        "weights": qstate.weight_stats,
        "seconds": times,
        "zeroshot": zeroshot,
    }
    if rec.output:
        from .. import export

        t = time.perf_counter()
        result["export"] = export(model, tokenizer, rec.section("output"),
                                  metadata={"recipe": rec.to_dict(), "ppl": ppl["ppl"]})
        times["export"] = time.perf_counter() - t
    if json_path:
        atomic_write_json(json_path, result)
    return result
