"""Structural check: does a rotation config cover every reader and writer of the residual stream?

R1 preserves a model's function only if *every* module that reads the residual stream reads it
through a folded RMS norm (or directly) with R1 on the input of the linears behind it, and
*every* module that writes to the stream has R1 on its output (embeddings and head included).
A config written for other module names leaves gaps silently (a Mamba block's ``norm``, Bamba's
``pre_ff_layernorm``), so :func:`check_rotation_structure` looks for them before any weight is
touched and :class:`RotationStructureError` names each gap and the config key that closes it.

How readers and writers are found (a probe, not name rules): one forward of a few random tokens
with a hook on every module records, in call order, each leaf module's input and output (only
hidden-sized tensors are kept). The residual states are the decoder layers' inputs and outputs
(layers are the modules matching the config's ``layers_pattern``). Within a layer the residual
update ``h_out - h_in`` is fitted by least squares, with scalar coefficients, on the outputs of
the modules the config rotates on their output with R1 (scalars commute with R1: residual
multipliers are fine); if the fit leaves a remainder, the leaf modules whose outputs explain it
are the writers the config misses. The intermediate states (``h_in`` plus the writers so far)
are then matched, up to a scalar, against every leaf's input: matches are the readers. A reader
must be a linear with R1 on its input, or a norm-like module (a 1-D weight of the hidden size)
that ``norm_fuse_config`` folds into exactly the linears reading its output, each with R1 on its
input. Parameter-free leaves (dropout, rotary embeddings) are not refused.

Limits: values are compared with a tolerance set by the model's dtype (1e-5 in float64, 3e-2 in
half precision), so in half precision a writer contributing under ~3% of a layer's update could
go unnoticed; a parameter-free function of the residual that is not rotation invariant (a
LayerNorm without affine weights, an activation applied to the stream) is not detected; and R2
(V/O per head) is not checked. Only what a plain ``model(input_ids=...)`` runs is seen (a forward
that needs more, e.g. images, must pass ``rotate(check=False)``), and a module shared by several
layers is judged by its first call. ``rotate(..., verify=True)`` compares logits and catches what
this check cannot see. Cost: one forward of 6 tokens; only hidden-sized tensors are kept.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from .probe import Call, fit, flat, norm_like, own_params, probe_calls, scaled_err
from .spec import RotationConfigError, RotationSpec

logger = logging.getLogger(__name__)
DTYPE_TOL = {torch.float64: 1e-5, torch.float32: 1e-4}
HALF_TOL = 3e-2


class RotationStructureError(RotationConfigError):
    """A rotation config leaves a reader or writer of the residual stream unrotated or a norm
    unfolded; rotating would change the model's function. ``gaps`` lists what is wrong."""

    def __init__(self, message: str, gaps: list[Gap]):
        super().__init__(message)
        self.gaps = gaps


@dataclass(frozen=True)
class Gap:
    """One hole in a rotation config: what is wrong, where, and the config key that fixes it."""

    kind: str      # unrotated_embedding, unfolded_norm, fold_incomplete, reader_without_r1,
    #                writer_without_r1, unknown_reader, unknown_writer, stray_input_rotation
    module: str    # full module name (or a layer name for a layer-wide gap)
    detail: str
    fix: str


@dataclass
class _Plan:
    """What the config would do: rotations per module, norm folds, the residual matrix."""

    rot: dict[str, tuple[str | None, str | None]]
    folds: dict[str, list[str]]           # norm full name -> linear full names
    r1: str | None = None


def _tol(dtype: torch.dtype) -> float:
    return DTYPE_TOL.get(dtype, HALF_TOL)


def plan_from_spec(model: nn.Module, spec: RotationSpec) -> _Plan:
    """Rotations and folds the config would apply to ``model`` (nothing is changed)."""
    from .apply import match_modules
    from .fuse import norm_fusion_plan

    hits = match_modules(model, spec.rotation_config, False, "rotation_config")
    rot = {n: spec.rotation_config[p] for n, m, p in hits if isinstance(getattr(m, "weight", None), torch.Tensor)}
    folds = {}
    if spec.norm_fuse_config is not None:
        for norm_name, _, linears, _ in norm_fusion_plan(model, spec.norm_fuse_config, spec.layers_pattern,
                                                         strict=False):
            folds.setdefault(norm_name, []).extend(n for n, _ in linears)
    plan = _Plan(rot, folds)
    emb = model.get_input_embeddings()
    emb_name = next((n for n, m in model.named_modules() if m is emb), None)
    if emb_name in rot:
        plan.r1 = next((r for r in rot[emb_name] if r is not None), None)
    if plan.r1 is None:  # the embedding is not rotated: the residual matrix is the writers' one
        outs = Counter(r[1] for n, r in rot.items() if r[1] is not None)
        hidden = emb.embedding_dim if emb is not None else None
        from .matrices import config_dim
        for name, _ in outs.most_common():
            if config_dim(model.config, spec.rotation_matrices[name].dim) == hidden:
                plan.r1 = name
                break
    return plan


def _rel(name: str, layer: str | None) -> str:
    return name[len(layer) + 1:] if layer else name


class _Checker:
    def __init__(self, model: nn.Module, spec: RotationSpec, plan: _Plan, tol: float):
        self.model, self.spec, self.plan, self.tol = model, spec, plan, tol
        self.gaps: list[Gap] = []
        self.hidden = model.get_input_embeddings().embedding_dim
        self.readers: set[str] = set()
        self.reported: set[str] = set()

    def add(self, kind, module, detail, fix):
        self.gaps.append(Gap(kind, module, detail, fix))
        self.reported.add(module)

    def _rot(self, name):
        return self.plan.rot.get(name, (None, None))

    def writes_r1(self, c: Call) -> bool:
        rin, rout = self._rot(c.name)
        if isinstance(c.module, nn.Embedding):
            return self.plan.r1 in (rin, rout)
        return isinstance(c.module, nn.Linear) and rout == self.plan.r1

    def _missing_writer(self, c: Call, layer):
        r1, kind = self.plan.r1, type(c.module).__name__
        if c.name in self.reported:
            return
        if isinstance(c.module, (nn.Linear, nn.Embedding)):
            slot = f"[{r1}, null]" if isinstance(c.module, nn.Embedding) else f"[null, {r1}]"
            self.add("writer_without_r1", c.name, f"{kind} writes to the residual stream but gets no {r1} on its "
                     "output", f'rotation_config: "*{_rel(c.name, layer)}": {slot}')
        else:
            self.add("unknown_writer", c.name, f"{kind} writes to the residual stream; only a linear or an "
                     f"embedding can carry {r1} on its output", "fold it into a linear, or register a config without R1")

    def writers(self, calls, base, target, layer) -> list[torch.Tensor]:
        """Fit the residual update; report unrotated writers; return the running states."""
        cands = [c for c in calls if c.out is not None]
        chosen = [c for c in cands if self.writes_r1(c)]
        basis = [base] if base is not None else []
        err, _ = fit(target, basis + [c.out for c in chosen])
        others = [c for c in cands if c not in chosen and not (c.inp is not None and scaled_err(c.out, c.inp) <= self.tol)]
        added = []
        while err > self.tol and others:  # forward selection, then drop what is not needed
            best = min(others, key=lambda c: fit(target, basis + [x.out for x in chosen + added + [c]])[0])
            new_err = fit(target, basis + [x.out for x in chosen + added + [best]])[0]
            if new_err >= err * (1 - 1e-3):
                break
            others.remove(best)
            added.append(best)
            err = new_err
        if err <= self.tol:
            for c in list(added):
                rest = [x for x in added if x is not c]
                if fit(target, basis + [x.out for x in chosen + rest])[0] <= self.tol:
                    added = rest
            err = fit(target, basis + [x.out for x in chosen + added])[0]
            for c in added:
                self._missing_writer(c, layer)
            chosen += added
        if err > self.tol:
            self.add("unknown_writer", layer or "(model)", f"the residual update is not explained by module outputs "
                     f"(relative remainder {err:.1e}): something unhooked or non-scalar writes to the stream",
                     "a model this probe cannot read: skip R1 for it")
        _, coef = fit(target, basis + [c.out for c in chosen])
        states = []
        running = coef[0] * flat(base) if base is not None else None
        if running is not None:
            states.append(base)
        order = sorted(range(len(chosen)), key=lambda i: chosen[i].start)
        off = len(basis)
        for i in order:
            term = coef[off + i] * flat(chosen[i].out)
            running = term if running is None else running + term
            states.append(running)
        return states

    def readers_of(self, calls, states, layer):
        for c in calls:
            if c.inp is None or not any(scaled_err(c.inp, s) <= self.tol for s in states):
                continue
            self.reader(c, calls, layer)

    def reader(self, c: Call, calls, layer):
        r1, mod = self.plan.r1, c.module
        kind = type(mod).__name__
        if isinstance(mod, nn.Linear):
            self.readers.add(c.name)
            if self._rot(c.name)[0] != r1:
                self.add("reader_without_r1", c.name, f"reads the residual stream but gets no {r1} on its input",
                         f'rotation_config: "*{_rel(c.name, layer)}": [{r1}, null]')
        elif norm_like(mod, self.hidden):
            consumers = [x for x in calls if x.start > c.start and x.inp is not None and c.out is not None
                         and scaled_err(x.inp, c.out) <= self.tol and own_params(x.module)]
            linears = [x.name for x in consumers if isinstance(x.module, nn.Linear)]
            if c.name not in self.plan.folds:
                where = "decoder_layer_fuse" if layer else "lm_head_fuse"
                rel = [_rel(n, layer) for n in linears]
                pair = f"[{_rel(c.name, layer)}, [{', '.join(rel)}]]" if layer else \
                    ", ".join(f"[{c.name}, {n}]" for n in rel)
                self.add("unfolded_norm", c.name, f"{kind} reads the residual stream but norm_fuse_config does not fold "
                         "it (its gain would not commute with the rotation)", f"norm_fuse_config.{where}: {pair}")
                self.reported.update(linears)
                self.readers.update(linears)
                return
            if getattr(mod, "bias", None) is not None or isinstance(mod, nn.LayerNorm):
                self.add("unfoldable_norm", c.name, f"{kind} subtracts the mean or has a bias (LayerNorm-style); "
                         "rotaquant folds only RMS-style norms", "convert it to RMSNorm or register a config without R1")
            folded = set(self.plan.folds[c.name])
            for x in consumers:
                self.readers.add(x.name)
                if not isinstance(x.module, nn.Linear):
                    self.add("unknown_reader", x.name, f"{type(x.module).__name__} reads the output of the folded norm "
                             f"{c.name}; only linears can take R1", "register a config without R1 for this model")
                    continue
                if x.name not in folded:
                    self.add("fold_incomplete", x.name, f"reads {c.name} but is not in its fold list",
                             f"add {_rel(x.name, layer)} to the [{_rel(c.name, layer)}, [...]] pair of norm_fuse_config")
                if self._rot(x.name)[0] != r1:
                    self.add("reader_without_r1", x.name, f"reads the folded norm {c.name} but gets no {r1} on its input",
                             f'rotation_config: "*{_rel(x.name, layer)}": [{r1}, null]')
        elif own_params(mod) and not isinstance(mod, nn.Embedding):
            self.add("unknown_reader", c.name, f"{kind} (neither a linear nor an RMS norm) reads the residual stream",
                     "rotaquant cannot rotate through it: register a config without R1 for this model")

    def stray(self, calls):
        r1 = self.plan.r1
        for c in calls:
            if not c.leaf or not isinstance(c.module, nn.Linear) or c.name in self.readers or c.name in self.reported:
                continue
            if self._rot(c.name)[0] == r1:
                self.add("stray_input_rotation", c.name, f"gets {r1} on its input but reads neither the residual "
                         "stream nor a folded norm's output", f"remove it from rotation_config's {r1} inputs")


def check_rotation_structure(model: nn.Module, spec: RotationSpec, tokens: int = 6, seed: int = 0) -> list[Gap]:
    """The gaps of ``spec`` on ``model`` (empty: the residual stream is fully covered).

    Runs one forward of ``tokens`` random tokens (seeded) with hooks; ``model`` is not changed
    (its train/eval flags are restored). A config that rotates nothing of the hidden size has
    no residual rotation and no gaps.
    """
    plan = plan_from_spec(model, spec)
    if plan.r1 is None:
        return []
    hidden = model.get_input_embeddings().embedding_dim
    regex = re.compile(spec.layers_pattern)
    layer_names = [n for n, _ in model.named_modules() if n and regex.search(n)]
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(seed))
    calls = probe_calls(model, ids.to(device), hidden, set(layer_names))
    dtype = next(model.parameters()).dtype
    chk = _Checker(model, spec, plan, _tol(dtype))
    emb = model.get_input_embeddings()
    emb_name = next(n for n, m in model.named_modules() if m is emb)
    if emb_name not in plan.rot:
        chk.add("unrotated_embedding", emb_name, f"the residual stream is rotated with {plan.r1} but the input "
                "embedding is not", f'rotation_config: "*{emb_name}": [{plan.r1}, null]')
    under = lambda c, layer: c.name.startswith(layer + ".")  # noqa: E731
    layer_calls = [c for c in calls if c.name in layer_names and c.inp is not None and c.out is not None]
    outside = [c for c in calls if c.leaf and not any(under(c, n) for n in layer_names)]
    if layer_calls:
        first, last = layer_calls[0], layer_calls[-1]
        prologue = [c for c in outside if c.start < first.start]
        states = chk.writers(prologue, None, first.inp, None)
        chk.readers_of(prologue, states, None)
        for prev, nxt in zip(layer_calls, layer_calls[1:], strict=False):
            if scaled_err(nxt.inp, prev.out) > chk.tol:
                chk.add("unknown_writer", nxt.name, f"its input is not the output of {prev.name}",
                        "a model this probe cannot read: skip R1 for it")
        for lc in layer_calls:
            inside = [c for c in calls if c.leaf and under(c, lc.name)]
            states = chk.writers(inside, lc.inp, lc.out, lc.name)
            chk.readers_of(inside, states, lc.name)
        epilogue = [c for c in outside if c.start > last.start]
        chk.readers_of(epilogue, [last.out], None)
    else:
        chk.add("unknown_writer", "(model)", f"no module matches layers_pattern {spec.layers_pattern!r}",
                "set layers_pattern to match the decoder layers")
    chk.stray([c for c in calls if c.leaf])
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    if head_name is not None and head_name not in chk.reported and plan.rot.get(head_name, (None,))[0] != plan.r1:
        chk.add("reader_without_r1", head_name, f"the head reads the residual stream but gets no {plan.r1}",
                f'rotation_config: "*{head_name}": [{plan.r1}, null]')
    return _dedupe(chk.gaps)


def _dedupe(gaps: list[Gap]) -> list[Gap]:
    seen, out = set(), []
    for g in gaps:
        key = (g.kind, g.module)
        if key not in seen:
            seen.add(key)
            out.append(g)
    return out


def format_gaps(gaps: list[Gap], max_modules: int = 4) -> str:
    """One line per (kind, fix): the modules concerned (a few, then a count) and the fix."""
    groups: dict[tuple[str, str], list[Gap]] = {}
    for g in gaps:
        groups.setdefault((g.kind, g.fix), []).append(g)
    lines = []
    for (kind, fix), items in groups.items():
        names = [g.module for g in items]
        shown = ", ".join(names[:max_modules]) + (f" and {len(names) - max_modules} more" if len(names) > max_modules else "")
        lines.append(f"  - {kind}: {shown}: {items[0].detail}. Fix: {fix}")
    return "\n".join(lines)


def require_rotation_structure(model: nn.Module, spec: RotationSpec, origin: str = "the rotation config") -> None:
    """Raise :class:`RotationStructureError` if :func:`check_rotation_structure` finds gaps."""
    gaps = check_rotation_structure(model, spec)
    if gaps:
        raise RotationStructureError(
            f"{origin} does not cover the residual stream of {type(model).__name__}; rotating would change the "
            f"model's function, so nothing was changed. Gaps:\n{format_gaps(gaps)}\n"
            "Add the keys above to the config (or register one for this class: rotaquant.register_model), or use a "
            f"built-in config for it (see rotaquant.rotation.registry.registered_models()).", gaps)
