"""Evaluation is never a silent freeze: a bar on a terminal, lines off one, in fit and in eval."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.evaluation import evaluate_text
from lmtrain.models import build_model
from lmtrain.training import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("progress")
    fit(tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=4"), quiet=True, echo=print)
    return tmp / "run"


def test_fit_off_a_terminal_says_when_each_validation_starts_and_ends(cli, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    cfg = tiny_config(
        tmp_path, write_tiny_files(tmp_path), "train.max_steps=6", "train.eval_every=3"
    )
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    r = invoke(cli, "fit", config)
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    for step in (3, 6):
        start = lines.index(next(x for x in lines if x.startswith(f"step {step} | validation: ")))
        assert re.fullmatch(rf"step {step} \| validation: [\d,]+ tokens to read", lines[start])
        assert re.fullmatch(
            rf"step {step} \| validation: done in \d+\.\ds \([\d,]+ tokens per second\)",
            lines[start + 1],
        )
        assert lines[start + 2].startswith(f"step {step} | epoch 1 | ")  # then its figures
        assert "val loss" in lines[start + 2]


def test_fit_quiet_prints_no_progress_of_the_validation(cli, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    cfg = tiny_config(
        tmp_path, write_tiny_files(tmp_path), "train.max_steps=3", "train.eval_every=3"
    )
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    r = invoke(cli, "fit", config, "--quiet")
    assert r.exit_code == 0, r.output
    assert "| validation:" not in r.stderr
    assert "val loss" in r.stderr


def test_eval_off_a_terminal_says_when_it_starts_and_ends_and_stdout_stays_json(cli, run) -> None:
    r = invoke(cli, "eval", run, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # nothing but the report on stdout
    err = r.stderr.splitlines()
    assert err[0] == f"evaluation: {report['tokens']:,} tokens to read"
    assert re.fullmatch(r"evaluation: done in \d+\.\ds \([\d,]+ tokens per second\)", err[1])


def test_eval_with_adaptation_shows_both_passes(cli, run) -> None:
    r = invoke(cli, "eval", run, "--cache-size", "10")
    assert r.exit_code == 0, r.output
    starts = [x for x in r.stderr.splitlines() if x.endswith("tokens to read")]
    assert starts[0].startswith("evaluation: ")
    assert starts[1].startswith("adapted evaluation, cache (10 states")
    assert sum("done in" in x for x in r.stderr.splitlines()) == 2


def _model() -> torch.nn.Module:
    from lmtrain.config import ModelConfig

    torch.manual_seed(0)
    return build_model(ModelConfig(embedding_dim=8, hidden_size=8, num_layers=1), 20)


@pytest.mark.parametrize("sentences", [False, True])
def test_progress_counts_every_predicted_token_once_in_order(sentences: bool) -> None:
    ids = torch.randint(1, 20, (10000,))  # windows of 4096: three
    sequences = [ids[i : i + 30] for i in range(0, 10000, 30)] if sentences else None
    heard: list[tuple[int, int]] = []
    result = evaluate_text(
        _model(), "word", ids, sequences=sequences, batch_size=4,
        progress=lambda done, total: heard.append((done, total)),
    )  # fmt: skip
    assert heard[0] == (0, result.tokens)
    assert heard[-1] == (result.tokens, result.tokens)
    assert len(heard) > 2  # more than one window: progress in between
    assert all(b[0] > a[0] for a, b in zip(heard, heard[1:], strict=False))


def test_meter_lines_every_interval_and_an_end_line() -> None:
    from lmtrain.metrics.console import Meter

    said: list[str] = []
    progress = Meter(said.append, bar=False, lines=True, every=0.0).track("validation")
    for done in (0, 500, 1000):
        progress(done, 1000)
    assert said[0] == "validation: 1,000 tokens to read"
    assert re.fullmatch(
        r"validation: 500/1,000 tokens \(50%\) \| [\d,]+ tokens per second \| .+ left", said[1]
    )
    assert said[2].startswith("validation: done in ")
    assert len(said) == 3


def test_meter_on_a_terminal_draws_a_bar_and_writes_no_lines(monkeypatch) -> None:
    import sys

    from lmtrain.metrics.console import Meter

    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    said: list[str] = []
    progress = Meter(said.append, bar=True, lines=True).track("validation")
    for done in (0, 400, 1000):
        progress(done, 1000)
    assert said == []
    assert "validation" in screen.getvalue() and "token" in screen.getvalue()


def test_meter_quiet_says_nothing() -> None:
    from lmtrain.metrics.console import Meter

    said: list[str] = []
    progress = Meter(said.append, bar=False, lines=False, every=0.0).track("validation")
    for done in (0, 5, 10):
        progress(done, 10)
    assert said == []


def test_validation_lines_are_not_read_as_training_progress_lines(cli, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    cfg = tiny_config(
        tmp_path, write_tiny_files(tmp_path), "train.max_steps=4", "train.log_every=2",
        "train.eval_every=2",
    )  # fmt: skip
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    r = invoke(cli, "fit", config)
    assert r.exit_code == 0, r.output
    progress = [x for x in r.stderr.splitlines() if x.startswith("step ") and "tokens/s" in x]
    assert [x.split(" | ")[0] for x in progress] == ["step 2/4", "step 4/4"]
