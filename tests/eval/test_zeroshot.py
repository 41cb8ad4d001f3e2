"""Zero-shot scoring: lm-eval's tokenization split, acc vs acc_norm, partial scoring, greedy checks.

A bigram "model" whose logits depend only on the current token gives log-likelihoods we can
write down by hand; a character tokenizer makes token counts equal character counts.
"""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.eval.loglikelihood import PairEncoder, Score, score_requests
from rotaquant.eval.tasks import Doc, build_lambada, build_winogrande
from rotaquant.eval.zeroshot import (
    ZeroShotResult,
    evaluate_tasks,
    mean_stderr,
    predictions,
    score_docs,
)
from tests.conftest import requires_default_model, tiny_model

V = 128


class CharTokenizer:
    """One token per ASCII character; optional BOS id 1 added as a special token."""

    bos_token_id, bos_token, eos_token_id = 1, "\x01", 2

    def __init__(self, adds_bos: bool = False):
        self.adds_bos = adds_bos

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(c) % V for c in text]
        return SimpleNamespace(input_ids=([1] if add_special_tokens and self.adds_bos else []) + ids)


class WordTokenizer:
    """GPT-style pre-tokenization: a space belongs to the word after it (``" yes"`` is one token)."""

    bos_token_id = bos_token = None
    eos_token_id = 0

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        pieces = re.findall(r" ?[^\s]+|\s+", text)
        return SimpleNamespace(input_ids=[self.vocab.setdefault(p, len(self.vocab) + 1) for p in pieces])


class BigramLM(torch.nn.Module):
    """``logits[t] = table[input_ids[t]]``: the next-token distribution depends on one token only."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=64)
        self.calls = 0

    def forward(self, input_ids, use_cache=False, logits_to_keep=0):
        self.calls += 1
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def successor_lm(strength: float = 10.0) -> BigramLM:
    """Predicts character ``c + 1`` after ``c`` (so "abcd" is greedy and "abd" is not)."""
    table = torch.zeros(V, V)
    table[torch.arange(V), (torch.arange(V) + 1) % V] = strength
    return BigramLM(table)


def test_continuation_tokens_take_the_trailing_context_spaces():
    enc = PairEncoder(WordTokenizer(), bos="never")
    ctx, cont = enc.encode_pair("Answer: ", "yes")
    assert (ctx, cont) == enc.encode_pair("Answer:", " yes")
    assert cont == enc.encode(" yes") and len(cont) == 1
    whole = enc.encode("Question: is it?\nAnswer: no")
    ctx, cont = enc.encode_pair("Question: is it?\nAnswer:", " no")
    assert ctx + cont == whole and cont == whole[len(ctx):]


@requires_default_model
def test_continuation_split_with_the_real_tokenizer(default_model):
    _, tok = default_model
    enc = PairEncoder(tok)
    ctx, cont = enc.encode_pair("Question: Is water wet?\nAnswer: ", "yes")
    assert (ctx, cont) == enc.encode_pair("Question: Is water wet?\nAnswer:", " yes")
    assert ctx + cont == tok("Question: Is water wet?\nAnswer: yes").input_ids
    naive = tok("Question: Is water wet?\nAnswer: ").input_ids + tok("yes").input_ids
    assert naive != ctx + cont  # tokenizing the parts apart would score a stray space token
    assert cont == tok(" yes", add_special_tokens=False).input_ids


def test_bos_policies():
    tok = CharTokenizer(adds_bos=True)
    assert PairEncoder(tok, "tokenizer").encode("ab") == [1, 97, 98]
    assert PairEncoder(tok, "never").encode("ab") == [97, 98]
    assert PairEncoder(CharTokenizer(), "always").encode("ab") == [1, 97, 98]
    ctx, cont = PairEncoder(tok, "tokenizer").encode_pair("ab", " c")
    assert ctx == [1, 97, 98] and cont == [32, 99]  # BOS stays with the context only
    ctx, cont = PairEncoder(tok, "never").encode_pair("", "cd")
    assert ctx == [1] and cont == [99, 100]  # an empty context becomes the prefix token
    with pytest.raises(Exception, match="BOS policy"):
        PairEncoder(tok, "sometimes")


def test_acc_norm_divides_by_characters_and_can_disagree_with_acc():
    assert predictions([-3.0, -4.0], ("ab", "abcdefgh")) == (0, 1)
    assert predictions([-2.0, -2.0], ("a", "b")) == (0, 0)  # ties: first index, like numpy.argmax
    # end to end: uniform logits give loglik = -(len(choice) + 1) * log V with a char tokenizer,
    # so acc prefers the short choice and acc_norm the long one
    model, enc = BigramLM(torch.zeros(V, V)), PairEncoder(CharTokenizer(), "never")
    doc = Doc((("Q:", " ab"), ("Q:", " abcdef")), 1, ("ab", "abcdef"))
    scores, _ = score_requests(model, [enc.encode_pair(*r) for r in doc.requests], progress=False)
    assert scores[0].loglik == pytest.approx(-3 * math.log(V)) and scores[1].loglik == pytest.approx(-7 * math.log(V))
    metrics, samples = score_docs([doc], "choice", scores)
    assert metrics["acc"] == 0.0 and metrics["acc_norm"] == 1.0 and samples[0]["pred"] == 0
    assert "acc_norm" not in score_docs([doc], "choice", scores, has_norm=False)[0]


def test_winogrande_partial_scoring_contexts_and_shared_continuation():
    doc = build_winogrande({"sentence": "The trophy did not fit in the case because _ was  too big. ",
                            "option1": "the trophy", "option2": "the case", "answer": "1"})
    assert doc.requests == (("The trophy did not fit in the case because the trophy", " was  too big."),
                            ("The trophy did not fit in the case because the case", " was  too big."))
    assert doc.gold == 0 and doc.choices == tuple(r[0] for r in doc.requests)


def test_lambada_greedy_check_and_split():
    doc = build_lambada({"text": "one two  three four"})
    assert doc.requests == (("one two  three", " four"),) and doc.gold == 0
    model = successor_lm()
    greedy, not_greedy, one_off = [97, 98], [99, 100, 101], [99, 100, 102]  # "ab|cde" / "ab|cdf"
    scores, _ = score_requests(model, [(greedy, not_greedy), (greedy, one_off)], progress=False)
    assert scores[0].greedy and not scores[1].greedy
    assert scores[1].loglik < scores[0].loglik < 0
    metrics, _ = score_docs([Doc((("", ""),), 0, ("x",))] * 2, "cloze", scores)
    assert metrics["acc"] == 0.5
    assert metrics["perplexity"] == pytest.approx(math.exp(-(scores[0].loglik + scores[1].loglik) / 2))


def _naive(model, ctx, cont):
    ids = torch.tensor([ctx + cont])
    logp = model(input_ids=ids, use_cache=False).logits[0, :-1].double().log_softmax(-1)
    tail = logp[len(ctx) - 1 :]
    return tail.gather(-1, torch.tensor(cont)[:, None]).sum().item(), bool((tail.argmax(-1) == torch.tensor(cont)).all())


@pytest.mark.parametrize("batch_size,share", [(1, False), (3, True), (64, True)])
def test_batched_scores_match_one_by_one(batch_size, share):
    model = tiny_model()
    gen = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(3, 96, (n,), generator=gen).tolist()  # noqa: E731
    reqs = [(rand(int(n)), rand(int(m))) for n, m in torch.randint(1, 20, (12, 2), generator=gen)]
    shared = rand(9)
    reqs += [(shared, [5]), (shared, [6]), (shared, [7, 8]), reqs[0], (shared + [7], [8, 9])]
    scores, stats = score_requests(model, reqs, batch_size=batch_size, share_prefixes=share, progress=False)
    for (ctx, cont), got in zip(reqs, scores, strict=True):
        ll, greedy = _naive(model, ctx, cont)
        assert got.loglik == pytest.approx(ll, abs=1e-4) and got.greedy == greedy
    assert stats["requests"] == len(reqs)
    # identical inputs (the duplicate, one-token choices of one context) always share a row;
    # prefix sharing also lets the longest extension of ``shared`` serve the shorter inputs
    assert stats["forward_rows"] == (len(reqs) - 4 if share else len(reqs) - 2)


def test_left_truncation_keeps_the_continuation():
    model = successor_lm()
    long_ctx = list(range(10, 100))  # longer than the model's 64 positions
    scores, stats = score_requests(model, [(long_ctx, [100, 101])], progress=False)
    assert stats["tokens"] == 64  # (context + continuation)[-65:][:-1]
    per_token = -math.log1p((V - 1) * math.exp(-10.0))
    assert scores[0].greedy and scores[0].loglik == pytest.approx(2 * per_token)


def test_stderr_is_the_sample_stderr_of_the_mean():
    vals = [1.0, 0.0, 1.0, 1.0]
    mu = 0.75
    assert mean_stderr(vals) == pytest.approx(math.sqrt(sum((v - mu) ** 2 for v in vals) / 3 / 4))
    assert mean_stderr([1.0]) is None


def test_result_dict_is_json_safe_and_summary_lists_tasks():
    scores = [Score(-1.0, True)]
    metrics, _ = score_docs([Doc((("a", " b"),), 0, ("b",))], "cloze", scores)
    from rotaquant.eval.zeroshot import TaskResult

    res = ZeroShotResult({"lambada_openai": TaskResult("lambada_openai", 1, metrics, "acc", "test", 1, 1, 0.1)})
    blob = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert blob["tasks"]["lambada_openai"]["metrics"]["acc_stderr"] is None and blob["average"] == 1.0
    assert "lambada_openai" in res.summary() and "average" in res.summary()


def test_evaluate_tasks_end_to_end_on_files(tmp_path):
    folder = tmp_path / "zeroshot" / "winogrande"
    folder.mkdir(parents=True)
    recs = [{"sentence": "ab _ cd", "option1": "x", "option2": "y", "answer": "2"}] * 3
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    model, tok = BigramLM(torch.zeros(V, V)), CharTokenizer()
    res = evaluate_tasks(model, tok, "winogrande", data_dir=tmp_path, limit=2, progress=False)
    task = res.tasks["winogrande"]
    assert task.n == 2 and task.requests == 4 and task.metrics["acc"] == 0.0  # equal ll: first option wins
    assert task.forward_rows == 2  # the identical requests of the repeated item were run once
    assert res.average == 0.0 and res.settings["bos"] == "tokenizer"


def test_limit_must_be_positive(tmp_path):
    from rotaquant.errors import ConfigError

    with pytest.raises(ConfigError, match="limit"):
        evaluate_tasks(BigramLM(torch.zeros(V, V)), CharTokenizer(), "boolq", limit=0, data_dir=tmp_path)


@pytest.mark.parametrize("budget", [1, 40, 100_000])
def test_token_budgeted_batches_give_the_same_scores(budget):
    """Batches filled up to a token budget (one row each at budget 1, everything at once at
    100k) score every request as fixed-size batches do; the row count follows the budget."""
    model = tiny_model()
    gen = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(3, 96, (n,), generator=gen).tolist()  # noqa: E731
    reqs = [(rand(int(n)), rand(int(m))) for n, m in torch.randint(1, 20, (15, 2), generator=gen)]
    fixed, fixed_stats = score_requests(model, reqs, batch_size=4, progress=False)
    scores, stats = score_requests(model, reqs, batch_tokens=budget, progress=False)
    for a, b in zip(fixed, scores, strict=True):
        assert b.loglik == pytest.approx(a.loglik, abs=1e-5) and b.greedy == a.greedy
    assert stats["forward_rows"] == fixed_stats["forward_rows"]
    expected = {1: stats["forward_rows"], 100_000: 1}.get(budget)
    if expected is not None:
        assert stats["batches"] == expected
    else:
        assert 1 < stats["batches"] < stats["forward_rows"]
    with pytest.raises(ConfigError, match="batch_tokens"):
        score_requests(model, reqs, batch_tokens=0, progress=False)
