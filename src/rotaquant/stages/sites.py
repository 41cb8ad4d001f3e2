"""Where stages live: module inputs and attention's query/key/value.

* A module's input: a :class:`StagePipeline` child named ``rq_input``, called by a forward
  pre-hook that is a module-level function (so ``deepcopy`` and pickling keep it working).
* Attention: an :class:`AttentionStages` child named ``rq_attention`` holding the ``query``,
  ``key`` and ``value`` pipelines, called by the registered attention function.

Nothing else is stored: the model itself holds every stage.
"""

from __future__ import annotations

from torch import nn

from . import attention as attn
from .base import Stage, StageError, StagePipeline

INPUT_CHILD = "rq_input"
ATTENTION_SITES = ("query", "key", "value")


def run_input_stages(module: nn.Module, args: tuple):
    """Forward pre-hook: the module's input through its ``rq_input`` pipeline."""
    pipe = module._modules.get(INPUT_CHILD)
    if pipe is None or not args:
        return None
    return (pipe(args[0]), *args[1:])


def _has_hook(module: nn.Module) -> bool:
    return any(fn is run_input_stages for fn in module._forward_pre_hooks.values())


def add_input_stage(module: nn.Module, name: str, stage: Stage, replace: bool = False) -> None:
    """Add ``stage`` to the input pipeline of ``module`` (created on first use). Mutates it."""
    pipe = module._modules.get(INPUT_CHILD)
    if pipe is None:
        pipe = StagePipeline()
        module.add_module(INPUT_CHILD, pipe)
    pipe.add(name, stage, replace=replace)
    if not _has_hook(module):
        module.register_forward_pre_hook(run_input_stages)


def add_attention_stage(model: nn.Module, attention: nn.Module, site: str, name: str, stage: Stage,
                        replace: bool = False) -> None:
    """Add ``stage`` at ``site`` (query, key or value) of ``attention`` and route ``model``'s
    attention through rotaquant's function. Mutates both."""
    if site not in ATTENTION_SITES:
        raise StageError(f"unknown attention site {site!r}; use one of {ATTENTION_SITES}")
    stages = attention._modules.get(attn.ATTENTION_CHILD)
    if stages is None:
        stages = attn.AttentionStages()
        attention.add_module(attn.ATTENTION_CHILD, stages)
    getattr(stages, site).add(name, stage, replace=replace)
    attn.route(model)


def _pipelines(model: nn.Module):
    """(owner name, owner, child key, pipeline) for every pipeline in ``model``."""
    for owner_name, owner in list(model.named_modules()):
        pipe = owner._modules.get(INPUT_CHILD)
        if isinstance(pipe, StagePipeline):
            yield owner_name, owner, INPUT_CHILD, pipe
        stages = owner._modules.get(attn.ATTENTION_CHILD)
        if isinstance(stages, attn.AttentionStages):
            for site in ATTENTION_SITES:
                yield owner_name, owner, site, getattr(stages, site)


def remove_stages(model: nn.Module, names: str | list[str] | None = None) -> int:
    """Remove the stages called ``names`` (all stages if None) everywhere in ``model``.

    Empty pipelines and their hooks are removed, and the attention implementation goes back
    to its base when no attention stage is left. Returns how many stages were removed.
    """
    wanted = None if names is None else ({names} if isinstance(names, str) else set(names))
    count = 0
    for *_, pipe in list(_pipelines(model)):
        for n in pipe.names():
            if wanted is None or n in wanted:
                count += pipe.remove(n)
    for owner in list(model.modules()):
        pipe = owner._modules.get(INPUT_CHILD)
        if isinstance(pipe, StagePipeline) and not len(pipe):
            del owner._modules[INPUT_CHILD]
            for key, fn in list(owner._forward_pre_hooks.items()):
                if fn is run_input_stages:
                    del owner._forward_pre_hooks[key]
        stages = owner._modules.get(attn.ATTENTION_CHILD)
        if isinstance(stages, attn.AttentionStages) and stages.empty():
            del owner._modules[attn.ATTENTION_CHILD]
    if not any(isinstance(m, attn.AttentionStages) for m in model.modules()):
        attn.unroute(model)
    return count


def stage_map(model: nn.Module) -> dict[str, list[str]]:
    """``{"<module>:<site>": [stage names in run order]}`` for every non-empty pipeline."""
    out = {}
    for owner_name, _, site, pipe in _pipelines(model):
        if len(pipe):
            out[f"{owner_name}:{'input' if site == INPUT_CHILD else site}"] = pipe.names()
    return out


def has_stage(model: nn.Module, name: str) -> bool:
    """Whether any pipeline of ``model`` holds a stage called ``name``."""
    return any(name in pipe.stages for *_, pipe in _pipelines(model))
