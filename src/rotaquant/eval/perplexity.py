"""WikiText-2 style perplexity: exp(mean token NLL over non-overlapping windows)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import PROTOCOL, TextData, cut_windows, load_text, tokenize
from ..errors import NonFiniteError
from ..io import to_json

logger = logging.getLogger(__name__)


@dataclass
class PerplexityResult:
    """The outcome of one perplexity evaluation; ``to_dict``/``to_json`` serialize it."""

    ppl: float
    nll: float
    windows: int
    tokens: int
    seqlen: int
    dtype: str
    device: str
    seconds: float
    data: str = ""
    split: str = ""
    protocol: str = PROTOCOL
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return to_json(self.to_dict(), indent=indent)

    def summary(self) -> str:
        return (
            f"ppl={self.ppl:.4f} windows={self.windows} tokens={self.tokens} seqlen={self.seqlen} "
            f"dtype={self.dtype} device={self.device} seconds={self.seconds:.1f} "
            f"data={self.data}/{self.split}"
        )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def window_nll(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL (float64) of each window of ``batch`` ``[B, L]``."""
    logits = model(input_ids=batch, use_cache=False).logits
    logits = logits[:, :-1].float()
    targets = batch[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return nll.view(batch.size(0), -1).double().sum(dim=1)


@torch.no_grad()
def first_non_finite_module(model: torch.nn.Module, batch: torch.Tensor) -> str | None:
    """Re-run ``batch`` with forward hooks; the first module (in execution order) whose output
    holds a NaN or infinity, as ``"name (Class)"``, else None. The hooks are removed afterwards."""
    found: list[str] = []

    def check(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple | list) else getattr(output, "logits", output)
            if not found and isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
                found.append(f"{name} ({type(module).__name__})")
        return hook

    handles = [m.register_forward_hook(check(n)) for n, m in model.named_modules() if n]
    try:
        model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _raise_non_finite(model: torch.nn.Module, batch: torch.Tensor, first_window: int) -> None:
    where = first_non_finite_module(model, batch)
    culprit = f"the first module with a non-finite output is {where}" if where else \
        "no module output is non-finite on a re-run (the loss itself overflowed)"
    raise NonFiniteError(
        f"non-finite logits (NaN/inf) in windows {first_window}..{first_window + len(batch) - 1}: {culprit}. "
        "Check that module's weights (NaN/inf after a transform or quantization?), the quantization "
        "settings, and the dtype (fp16 overflows; try float32 or bf16)")


GRAPH_ENV = "ROTAQUANT_CUDA_GRAPH"  # "1" / "0": CUDA graphs on / off when the call does not say


@contextlib.contextmanager
def causal_mask_skip_in_capture():
    """Let transformers call SDPA with ``is_causal`` and no mask while a CUDA graph is captured.

    transformers (5.17 and 5.24 alike) counts a stream capture as tracing. It then keeps the
    packed-sequence mask it derives from the position ids (deciding that it is not needed would
    read the GPU, which a capture forbids) and, in 5.17, refuses the causal skip outright, so the
    graph builds the full ``[B, 1, L, L]`` mask: attention took 295 us a layer instead of 108
    (cuDNN with a mask), plus the mask's conversions and the grouped keys and values expanded,
    ~170 ms of the evaluation's ~0.7 s of GPU time (H200, smollm2-135m, full WikiText-2 test,
    batch 8; benchmarks/results/h200_stop22.md). Perplexity windows are one unpadded sequence a
    row, passed without a mask, so for the duration of the capture (1) its position-id check
    answers "not packed" and (2) its ``is_tracing`` answers a call without a tensor (the padding
    mask check) as outside the capture; calls about a tensor, compilation and jit tracing are
    answered as before. A transformers without these helpers is left as it is."""
    try:
        from transformers import masking_utils
    except ImportError:
        masking_utils = None
    originals = {name: getattr(masking_utils, name, None) for name in ("is_tracing", "find_packed_sequence_indices")}
    patches = {}
    if originals["is_tracing"] is not None:
        traced = originals["is_tracing"]

        def is_tracing(tensor=None):
            if tensor is None:
                return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())
            return traced(tensor)

        patches["is_tracing"] = is_tracing
    if originals["find_packed_sequence_indices"] is not None:
        patches["find_packed_sequence_indices"] = lambda position_ids: None
    for name, fn in patches.items():
        setattr(masking_utils, name, fn)
    try:
        yield
    finally:
        for name in patches:
            setattr(masking_utils, name, originals[name])


class _GraphedNLL:
    """:func:`window_nll` of one batch shape, captured once as a CUDA graph and replayed.

    The host work of a forward pass (Python, module hooks, kernel launches) then happens once at
    capture instead of once per batch. It pays only where that host work, not the GPU, bounds the
    evaluation: on an H200 (smollm2-135m, full WikiText-2 test, batch 8) the FP16 model's eager
    loop is GPU-bound (0.855 s eager, 0.892 s graphed) while the W4A4KV4 fake-quantized one, with
    ~10 stage launches per layer, is not (1.857 s eager, 1.223 s graphed; stop 21), hence the
    default of :func:`_graph_wanted`. (In stop 19, with a sync per batch still in the loop, the
    capture made both slower.) Those graphed figures still paid for a causal mask transformers
    builds during a capture (:func:`causal_mask_skip_in_capture` since stop 22). The first batch
    runs eagerly on the capture stream (its result is used: it is the warm-up Triton autotuning
    and cuBLAS need), the others replay the graph on a static copy of their tokens; the same
    kernels run, so the values are the eager ones (tested on the GPU).
    """

    def __init__(self, model: torch.nn.Module, first: torch.Tensor):
        self.stream = torch.cuda.Stream(first.device)
        self.stream.wait_stream(torch.cuda.current_stream(first.device))
        with torch.cuda.stream(self.stream):
            self.first = window_nll(model, first)  # warm-up, on the stream the capture uses
        torch.cuda.current_stream(first.device).wait_stream(self.stream)
        self.static_in = first.clone()
        self.graph = torch.cuda.CUDAGraph()
        with causal_mask_skip_in_capture(), torch.cuda.graph(self.graph, stream=self.stream):
            self.static_out = window_nll(model, self.static_in)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(batch)
        self.graph.replay()
        return self.static_out.clone()  # the next replay overwrites static_out


def _graph_wanted(cuda_graph: bool | None, device: torch.device, full_batches: int, model: torch.nn.Module) -> bool:
    """Whether to replay the full batches as a CUDA graph: as asked, else as ``ROTAQUANT_CUDA_GRAPH``
    says, else when the model runs rotaquant stages (online rotations, quantizers): their many
    small launches make the eager forward host-bound (H200, smollm2 W4A4KV4: 1.857 s eager, 1.223 s
    graphed; FP16 without stages 0.855 / 0.892 s; benchmarks/results/h200_stop21.md)."""
    if device.type != "cuda" or full_batches < 2:
        return False
    if cuda_graph is not None:
        return cuda_graph
    env = os.environ.get(GRAPH_ENV, "")
    if env in ("0", "1"):
        return env == "1"
    from ..stages.base import Stage

    return any(isinstance(m, Stage) for m in model.modules())


def perplexity(
    model: torch.nn.Module,
    tokenizer=None,
    data: str | os.PathLike | TextData | torch.Tensor = "wikitext2",
    split: str = "test",
    seqlen: int = 2048,
    batch_size: int = 1,
    max_windows: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    cuda_graph: bool | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` over non-overlapping windows of ``seqlen`` tokens.

    Args:
        model: a causal LM (not modified; run in eval mode under ``torch.no_grad``).
        tokenizer: needed unless ``data`` is already a 1-D tensor of token ids.
        data: a named set (``wikitext2``), a local ``.txt``/``.jsonl`` path, a ``TextData`` or a
            1-D tensor of token ids.
        split: the split of a named set (``test`` by default).
        seqlen: window length; the protocol joins rows with "\\n\\n" and tokenizes once.
        batch_size: windows per forward pass.
        max_windows: evaluate only the first N windows (quick runs).
        data_dir: where named sets live (see :mod:`rotaquant.data`).
        progress: show a tqdm bar.
        cuda_graph: on CUDA, replay the forward pass of the full batches as one CUDA graph
            (:class:`_GraphedNLL`; the same values, without the per-batch host work: for models
            whose evaluation is bound by the host). None (default): ``ROTAQUANT_CUDA_GRAPH=1`` /
            ``0`` if the environment sets it, else on for models with rotaquant stages (online
            rotations, activation/KV quantizers) and off for plain ones. A model whose forward
            pass cannot be captured (host synchronisation inside) runs eagerly, with a warning;
            ``extra["cuda_graph"]`` of the result says which ran.

    Without a progress bar the batches are queued with no host synchronisation (tokens moved to
    the device once, the sums kept there, finiteness checked once after the last batch), so the
    GPU does not wait for the host between batches; a bar's running PPL costs one sync per batch.
    On an H200 (smollm2-135m, full test, batch 8) that made the FP16 evaluation 0.855 s (1.795 s
    with a sync per batch in stop 19); W4A4KV4 fake-quantized takes 1.857 s eager and 1.223 s
    graphed (benchmarks/results/h200_stop21.md).
    """
    started = time.perf_counter()
    if isinstance(data, torch.Tensor):
        ids, name = data.flatten(), "tokens"
    else:
        text = data if isinstance(data, TextData) else load_text(data, split, data_dir)
        if tokenizer is None:
            raise ValueError("perplexity() needs a tokenizer unless data is a tensor of token ids")
        ids, name, split = tokenize(text, tokenizer), text.name, text.split
    windows = cut_windows(ids, seqlen, max_windows)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    windows_dev = windows.to(device)  # once (2.4 MB for WikiText-2 test), not a copy per batch
    graphed = None
    graph_state = "on" if _graph_wanted(cuda_graph, device, len(windows) // batch_size, model) else "off"
    sums: list[torch.Tensor] = []  # per batch, on the device: no host sync per batch
    running = None  # the progress bar's sum
    bar = tqdm(total=len(windows), desc=f"ppl {name}/{split}", unit="win", disable=not progress)
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows_dev[start : start + batch_size]
            if graph_state == "on" and len(batch) == batch_size and graphed is None:
                try:
                    graphed = _GraphedNLL(model, batch)
                    nll = graphed.first
                except Exception as exc:  # e.g. a host sync inside the forward pass: run eagerly
                    graphed, graph_state = None, f"failed: {type(exc).__name__}: {exc}"[:300]
                    torch.cuda.synchronize(device)
                    logger.warning("the evaluation runs without a CUDA graph (capture %s)", graph_state)
                    nll = window_nll(model, batch)
            elif graphed is not None and len(batch) == batch_size:
                nll = graphed(batch)
            else:
                nll = window_nll(model, batch)
            sums.append(nll)
            bar.update(len(batch))
            if progress:  # the bar's running PPL: the one host sync per batch, and only with a bar
                running = nll.sum() if running is None else running + nll.sum()
                bar.set_postfix(ppl=f"{math.exp(running.item() / ((start + len(batch)) * (seqlen - 1))):.3f}")
        nlls = torch.cat(sums) if sums else torch.zeros(0, dtype=torch.float64)
        # one check after the loop (a sync per batch would make the GPU wait for the host's next
        # launches): the batch of the first window with a non-finite NLL
        bad = (~torch.isfinite(nlls)).nonzero()
        if len(bad):
            start = int(bad[0]) // batch_size * batch_size
            _raise_non_finite(model, windows_dev[start : start + batch_size], start)
        total = nlls.sum().cpu()
    finally:
        bar.close()
        model.train(was_training)
    tokens = len(windows) * (seqlen - 1)
    nll = total.item() / tokens
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return PerplexityResult(
        ppl=math.exp(nll),
        nll=nll,
        windows=len(windows),
        tokens=tokens,
        seqlen=seqlen,
        dtype=str(_model_dtype(model)).replace("torch.", ""),
        device=str(device),
        seconds=time.perf_counter() - started,
        data=name,
        split=split,
        extra={"cuda_graph": graph_state},
    )
