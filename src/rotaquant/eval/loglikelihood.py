"""Log-likelihood of continuations given contexts, batched, as lm-evaluation-harness scores them.

Tokenization (:class:`PairEncoder`): trailing spaces of the context move to the continuation;
the continuation's tokens are ``tok(context + continuation)[len(tok(context)):]``, so they are
the tokens the model sees when the text is read in one piece.

Scoring (:func:`score_requests`): the model reads ``(context + continuation)[:-1]`` (left
truncated to ``max_length + 1`` tokens first), and a request's log-likelihood is the sum of
the log-probabilities of its continuation tokens; it is *greedy* when every continuation token
is the argmax. Requests are scored without a KV cache, padded on the right with token 0 and no
attention mask (a causal model never looks right), longest first, ``batch_size`` rows per
forward (or as many rows as fit a token budget, ``batch_tokens``). One forward serves every
request whose input is a prefix of that row's input: exact duplicates, and the choices of a
question whose continuations are a single token (their inputs are all just the context), which
is how lm-eval shares a context between choices. This relies on logits at a position depending
only on earlier tokens of the same row, which holds for causal LMs with per-token activation and
KV quantizers. Per-token results stay on the device until every batch has run, so the host
never waits for the GPU between batches.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

BOS_POLICIES = ("tokenizer", "never", "always")


@dataclass(frozen=True)
class Score:
    """The log-likelihood (float64 sum) of one continuation and whether greedy decoding gives it."""

    loglik: float
    greedy: bool


class PairEncoder:
    """Tokenizes ``(context, continuation)`` pairs the way lm-eval's HF model does.

    Args:
        tokenizer: a Hugging Face tokenizer (called as ``tokenizer(text, add_special_tokens=...)``).
        bos: ``"tokenizer"`` (default): the tokenizer's own special tokens, as lm-eval >= 0.4.10
            does when ``add_bos_token`` is unset (a text that already starts with the BOS string
            gets none added); ``"never"``: no special tokens, as lm-eval <= 0.4.9.1 did for causal
            models; ``"always"``: the BOS id prepended to every context.
    """

    def __init__(self, tokenizer, bos: str = "tokenizer"):
        if bos not in BOS_POLICIES:
            raise ConfigError(f"unknown BOS policy {bos!r}; use one of {', '.join(BOS_POLICIES)}")
        self.tokenizer, self.bos = tokenizer, bos
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        self.bos_text = getattr(tokenizer, "bos_token", None)
        if bos == "always" and self.bos_id is None:
            raise ConfigError("BOS policy 'always' needs a tokenizer with a bos_token_id; use 'tokenizer' or 'never'")
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str, special: bool) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=special).input_ids
        return list(ids.tolist() if hasattr(ids, "tolist") else ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` under the BOS policy (memoised: contexts repeat across choices)."""
        if text not in self._cache:
            if self.bos == "tokenizer":
                special = not (self.bos_text and text.startswith(self.bos_text))
                ids = self._ids(text, special)
            else:
                ids = self._ids(text, False)
                if self.bos == "always" and ids[:1] != [self.bos_id]:
                    ids = [self.bos_id, *ids]
            self._cache[text] = ids
        return list(self._cache[text])

    @property
    def prefix_id(self) -> int:
        """What an empty context becomes: BOS, else EOS (as lm-eval's ``prefix_token_id``)."""
        tid = self.bos_id if self.bos_id is not None else getattr(self.tokenizer, "eos_token_id", None)
        if tid is None:
            raise ConfigError("an empty context needs a tokenizer with a BOS or EOS token")
        return tid

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``(context_ids, continuation_ids)``; raises DataError if the continuation has no token."""
        if context == "":
            cont = self._ids(continuation, False)
            ctx, cont = ([self.prefix_id], cont) if cont[:1] != [self.prefix_id] else (cont[:1], cont[1:])
        else:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            ctx = self.encode(context)
            cont = self.encode(context + continuation)[len(ctx):]
        if not cont:
            raise DataError(f"continuation {continuation!r} after {context[-40:]!r} tokenized to no token")
        return ctx, cont


def _hosts(inputs: list[tuple[int, ...]], share: bool) -> list[int]:
    """For each unique input, the index of the input whose forward serves it (itself or an extension).

    In lexicographic order a sequence that is a prefix of another is a prefix of its successor,
    so one backward pass over the sorted list finds the longest extension of each.
    """
    host = list(range(len(inputs)))
    if not share:
        return host
    order = sorted(range(len(inputs)), key=lambda i: inputs[i])
    for a, b in zip(reversed(order[:-1]), reversed(order[1:]), strict=True):
        if inputs[host[b]][: len(inputs[a])] == inputs[a]:
            host[a] = host[b]
    return host


def _batches(rows: list[int], lengths: list[int], batch_size: int, batch_tokens: int | None) -> list[list[int]]:
    """Consecutive slices of ``rows`` (longest first): ``batch_size`` rows each, or with
    ``batch_tokens`` as many rows as keep ``rows x width`` (the first row's length) within it."""
    if batch_tokens is None:
        return [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]
    out, start = [], 0
    while start < len(rows):
        take = max(1, min(len(rows) - start, batch_tokens // lengths[rows[start]]))
        out.append(rows[start:start + take])
        start += take
    return out


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; to CUDA through pinned memory without waiting for the GPU, so the
    host builds the next batch while the current one runs."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def score_requests(
    model: torch.nn.Module,
    encoded: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 32,
    batch_tokens: int | None = None,
    max_length: int | None = None,
    share_prefixes: bool = True,
    progress: bool = True,
    desc: str = "loglikelihood",
) -> tuple[list[Score], dict]:
    """Score ``(context_ids, continuation_ids)`` requests; returns the scores and run statistics.

    Args:
        model: a causal LM; put in eval mode for the call and restored afterwards (not modified).
        encoded: token ids per request (see :class:`PairEncoder`); contexts must be non-empty.
        batch_size: rows per forward pass (when ``batch_tokens`` is None).
        batch_tokens: instead of a fixed row count, fill each forward pass with as many rows
            as fit ``rows x padded length <= batch_tokens`` (rows are sorted longest first, so
            short requests come in large batches and the GPU stays busy; at least one row).
            Scores are the same up to the rounding of differently shaped matrix products.
        max_length: the model's window (default: ``config.max_position_embeddings`` or 2048);
            longer requests are truncated on the left like lm-eval does.
        share_prefixes: let one forward serve every request whose input is a prefix of its row.
        progress: show a tqdm bar over requests.

    The statistics are ``requests``, ``forward_rows`` (rows actually run), ``batches`` and
    ``tokens`` (non-padding tokens run).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if batch_tokens is not None and batch_tokens < 1:
        raise ConfigError(f"batch_tokens must be >= 1 (or None for batch_size rows), got {batch_tokens}")
    if max_length is None:
        max_length = int(getattr(model.config, "max_position_embeddings", None) or 2048)
    inputs, targets = [], []
    for ctx, cont in encoded:
        if not ctx or not cont:
            raise DataError("every request needs at least one context and one continuation token")
        full = (list(ctx) + list(cont))[-(max_length + 1):]
        inputs.append(tuple(full[:-1]))
        targets.append(list(cont))
    unique = list(dict.fromkeys(inputs))
    index_of = {seq: i for i, seq in enumerate(unique)}
    host = _hosts(unique, share_prefixes)
    rows = sorted(set(host), key=lambda i: (-len(unique[i]), unique[i]))
    served: dict[int, list[int]] = {r: [] for r in rows}
    for req, seq in enumerate(inputs):
        served[host[index_of[seq]]].append(req)

    device = next(model.parameters()).device
    keep_arg = _accepts_logits_to_keep(model)
    batches = _batches(rows, [len(u) for u in unique], batch_size, batch_tokens)
    # per batch: the requests of each scored token (host) and their log-probs and hits (device),
    # read back once at the end so no batch waits for the GPU
    owners: list[list[int]] = []
    token_lps: list[torch.Tensor] = []
    hits: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(inputs), desc=desc, unit="req", disable=not progress)
    try:
        for chunk in batches:
            width = len(unique[chunk[0]])
            batch = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, r in enumerate(chunk):
                batch[j, : len(unique[r])] = torch.tensor(unique[r])
            # the earliest position any served request needs decides how many logits to keep
            first = min(len(inputs[q]) - len(targets[q]) for r in chunk for q in served[r])
            keep = width - first
            kwargs = {"logits_to_keep": keep} if keep_arg else {}
            rows_i, pos_i, tgt_i, owner = [], [], [], []
            for j, r in enumerate(chunk):
                for q in served[r]:
                    end = len(inputs[q]) - first
                    n = len(targets[q])
                    rows_i += [j] * n
                    pos_i += range(end - n, end)
                    tgt_i += targets[q]
                    owner += [q] * n
            rows_t, pos_t, tgt_t = _to_device(torch.tensor([rows_i, pos_i, tgt_i]), device)
            logits = model(input_ids=_to_device(batch, device), use_cache=False, **kwargs).logits
            # normalise only the positions that are scored: [tokens, vocab] instead of [B, keep, vocab]
            picked = logits[:, -keep:][rows_t, pos_t].float().log_softmax(dim=-1)
            token_lps.append(picked.gather(-1, tgt_t[:, None]).squeeze(-1).double())
            hits.append(picked.argmax(dim=-1) == tgt_t)
            owners.append(owner)
            del logits, picked
            bar.update(sum(len(served[r]) for r in chunk))
        token_lp = torch.cat(token_lps).cpu().tolist() if token_lps else []
        hit = torch.cat(hits).cpu().tolist() if hits else []
    finally:
        bar.close()
        model.train(was_training)
    scores: list[Score | None] = [None] * len(inputs)
    totals: dict[int, float] = {}
    greedy: dict[int, bool] = {}
    flat = [q for owner in owners for q in owner]
    for q, lp, h in zip(flat, token_lp, hit, strict=True):  # per request, its tokens in order
        totals[q] = totals.get(q, 0.0) + lp
        greedy[q] = greedy.get(q, True) and h
    for q in totals:
        scores[q] = Score(totals[q], greedy[q])
    stats = {"requests": len(inputs), "forward_rows": len(rows), "batches": len(batches),
             "tokens": sum(len(unique[r]) for r in rows)}
    logger.debug("%s: %s", desc, stats)
    return scores, stats  # type: ignore[return-value]
