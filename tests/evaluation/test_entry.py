"""The evaluation entry point: one set of rules for training, `lmtrain eval` and the API."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import lmtrain.evaluation as evaluation
from conftest import TINY_TEXT, tiny_config, write_tiny_files
from lmtrain.api import Model
from lmtrain.config import AdaptOptions, Config, EvalOptions
from lmtrain.data.sentences import split_sequences
from lmtrain.data.tokenizers import Settings, build
from lmtrain.errors import LmtrainError
from lmtrain.evaluation import evaluate_file, evaluate_string
from lmtrain.evaluation.sentences import evaluate_sentences
from lmtrain.evaluation.stream import evaluate_ids
from lmtrain.models import build_model


def _untrained(tmp_path: Path, *overrides: str) -> tuple[Model, Config]:
    """An untrained tiny model: its figures are as exact as a trained one's, and cheaper."""
    cfg = tiny_config(tmp_path, write_tiny_files(tmp_path), *overrides)
    vocab = build(cfg.data.tokenizer, TINY_TEXT, Settings())
    torch.manual_seed(0)
    module = build_model(cfg.model, len(vocab)).eval()
    return Model(module, vocab, cfg, tmp_path), cfg


def test_the_package_exports_the_entry_point_and_its_result() -> None:
    assert {"EvalResult", "EvaluationInterrupted", "evaluate_text", "unigram_baseline"} <= set(
        evaluation.__all__
    )


@pytest.mark.parametrize("mode", ["stream", "sentences"])
def test_evaluate_text_gives_the_figure_of_its_mode(tmp_path: Path, mode: str) -> None:
    m, cfg = _untrained(tmp_path, f"data.mode={mode}")
    enc = m.vocab.encode(TINY_TEXT[400:800])
    if mode == "sentences":
        sequences = split_sequences(enc.ids, m.vocab, cfg.data.documents)
        got = evaluation.evaluate_text(
            m.module, "word", enc.ids, sequences=sequences, oov=enc.oov, batch_size=3,
            text_bytes=400,
        )  # fmt: skip
        want = evaluate_sentences(
            m.module, sequences, "word", enc.oov, 1, text_tokens=enc.ids.numel(), text_bytes=400
        )
    else:
        got = evaluation.evaluate_text(m.module, "word", enc.ids, oov=enc.oov, text_bytes=400)
        want = evaluate_ids(m.module, enc.ids, "word", enc.oov, text_bytes=400)
    assert got.nll == pytest.approx(want.nll, rel=1e-12) and got.tokens == want.tokens
    assert got.text_tokens == enc.ids.numel() and got.oov == enc.oov
    assert got.bpb == pytest.approx(got.nll / 400 / math.log(2), rel=1e-12)
    assert not got.to_dict()["approximate"]


def test_streams_are_refused_for_sentences(tmp_path: Path) -> None:
    m, cfg = _untrained(tmp_path, "data.mode=sentences")
    ids = m.vocab.encode(TINY_TEXT[:200]).ids
    sequences = split_sequences(ids, m.vocab, cfg.data.documents)
    with pytest.raises(LmtrainError, match=r"^--streams applies to stream-mode models only"):
        evaluation.evaluate_text(m.module, "word", ids, sequences=sequences, streams=2)
    # The API names the keyword argument, not the command-line option.
    with pytest.raises(LmtrainError, match=r"^streams applies .* exact at any batch_size$"):
        m.evaluate(TINY_TEXT[:200], streams=2)


def test_every_option_problem_is_refused_at_once_before_reading(tmp_path: Path) -> None:
    m, cfg = _untrained(tmp_path)
    bad = EvalOptions(batch_size=0, streams=0)
    with pytest.raises(LmtrainError) as e:
        evaluate_file(m.module, m.vocab, cfg.data, "missing.txt", bad, AdaptOptions(cache_size=-1))
    assert str(e.value) == (
        "--batch-size must be >= 1, got 0; --streams must be >= 1 (1 = exact), got 0; "
        "--cache-size must be >= 0 (0 = off), got -1"
    )
    with pytest.raises(LmtrainError, match=r"^batch_size must be >= 1, got 0; streams must"):
        m.evaluate(TINY_TEXT, batch_size=0, streams=0)
    with pytest.raises(LmtrainError, match="read the text as one stream; drop --streams"):
        evaluate_file(
            m.module, m.vocab, cfg.data, None, EvalOptions(streams=2), AdaptOptions(cache_size=5)
        )


def test_a_report_prints_the_plain_then_the_adapted_figure(tmp_path: Path) -> None:
    m, cfg = _untrained(tmp_path)
    adapt = AdaptOptions(cache_size=10)
    report = evaluate_file(m.module, m.vocab, cfg.data, None, EvalOptions(), adapt)
    assert report.source == str(tmp_path / "test.txt") and report.adapted is not None
    lines = report.lines()
    assert lines[0] == f"{report.source}: {report.result.summary()}"
    assert lines[1].startswith("OOV rate ") and lines[2].startswith(f"adapted, {adapt.describe()}")
    d = report.to_dict()
    assert d["data"] == report.source and d["loss"] == report.result.loss
    assert d["adapted"] == {"method": adapt.describe(), **report.adapted.to_dict()}
    assert report.adapted.bpb == pytest.approx(
        report.adapted.nll / len(TINY_TEXT[400:800].encode()) / math.log(2)
    )
    # Without adaptation: no adapted figure, and the API returns the same plain result.
    plain = evaluate_string(m.module, m.vocab, cfg.data, TINY_TEXT[400:800], "t", EvalOptions())
    assert plain.adapted is None and "adapted" not in plain.to_dict() and len(plain.lines()) == 2
    assert plain.result == report.result == m.evaluate(TINY_TEXT[400:800])


def test_sentences_mode_refuses_adaptation(tmp_path: Path) -> None:
    m, cfg = _untrained(tmp_path, "data.mode=sentences")
    with pytest.raises(LmtrainError, match="trained in sentences mode"):
        evaluate_file(m.module, m.vocab, cfg.data, None, EvalOptions(), AdaptOptions(dynamic_lr=1))
