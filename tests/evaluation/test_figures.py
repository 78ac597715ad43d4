"""The figures of an evaluation, decided once in EvalResult and Unit: names, order, wording."""

from __future__ import annotations

import math

import pytest
import torch

from lmtrain.data.tokenizers import Encoded
from lmtrain.evaluation import EvalReport, EvalResult, SentenceScore, Unit
from lmtrain.evaluation.stream import perplexity


@pytest.mark.parametrize(
    ("kind", "name", "open_vocabulary"),
    [("char", "char", False), ("word", "token", True), ("byte", "token", False),
     ("bpe", "token", False)],
)  # fmt: skip
def test_a_tokenizers_kind_gives_its_unit(kind: str, name: str, open_vocabulary: bool) -> None:
    assert Unit.of(kind) == Unit(name, open_vocabulary)
    assert EvalResult(nll=1.0, tokens=1, kind=kind).unit == Unit.of(kind)


def test_a_loss_gives_ppl_and_for_characters_bpc() -> None:
    assert Unit.of("word").figures(2.0) == {"ppl": math.exp(2.0)}
    assert Unit.of("char").figures(2.0) == {"ppl": math.exp(2.0), "bpc": 2.0 / math.log(2)}
    assert Unit.of("char").headline == "bpc" and Unit.of("bpe").headline == "ppl"
    assert Unit.of("char").show({"ppl": 7.389, "bpc": 2.88539}) == "bpc 2.885"
    assert Unit.of("word").show({"ppl": 7.38906}) == "ppl 7.39"


def test_perplexity_of_extreme_losses() -> None:
    assert perplexity(800.0) == math.exp(700.0)  # a float would overflow
    assert perplexity(math.inf) == math.inf  # no probability at all: not 1e304
    assert math.isnan(perplexity(math.nan))
    assert SentenceScore("a", logprob=-math.inf, tokens=2, oov=0).ppl == math.inf


def test_every_figure_of_a_result_in_the_order_reports_give_them() -> None:
    char = EvalResult(nll=10.0, tokens=4, kind="char", text_bytes=5)
    assert char.figures() == {
        "loss": 2.5, "ppl": math.exp(2.5), "bpc": 2.5 / math.log(2), "bpb": 2.0 / math.log(2),
    }  # fmt: skip
    assert list(char.figures()) == ["loss", "ppl", "bpc", "bpb"]
    assert char.summary() == "loss 2.5000 | ppl 12.18 | bpc 3.6067 | bpb 2.8854 | 4 tokens"
    assert list(char.to_dict()) == [
        "loss", "ppl", "tokens", "bpc", "bpb", "approximate", "streams", "nll",
    ]  # fmt: skip
    word = EvalResult(nll=10.0, tokens=4, kind="word", oov=1, streams=2, text_tokens=8)
    assert list(word.figures()) == ["loss", "ppl"]
    assert word.summary() == (
        "loss 2.5000 | ppl 12.18 | 4 tokens | APPROXIMATE (2 parallel streams)"
    )
    assert word.to_dict() == {
        "loss": 2.5, "ppl": math.exp(2.5), "tokens": 4, "oov_rate": 1 / 8,
        "approximate": True, "streams": 2, "nll": 10.0,
    }  # fmt: skip
    assert list(word.to_dict()) == [
        "loss", "ppl", "tokens", "oov_rate", "approximate", "streams", "nll",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["word", "char", "byte", "bpe"])
def test_an_oov_line_only_for_an_open_vocabulary(kind: str) -> None:
    report = EvalReport("t", EvalResult(nll=3.0, tokens=3, kind=kind), Encoded(torch.ones(4), 1))
    want = ["OOV rate 25.0000% (1 of 4 tokens)"] if kind == "word" else []
    assert report.lines() == [f"t: {report.result.summary()}", *want]
