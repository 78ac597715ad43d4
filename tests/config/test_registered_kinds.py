"""A tokenizer and a logger registered from this module alone are names the config takes, and a
run trains with them; before they are registered, their names are refused as any unknown name
always was. (The optimiser's table: tests/training/test_optim_registry.py.)"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_config
from lmtrain.api import load
from lmtrain.config import config_from_dict
from lmtrain.data.config import TOKENIZER_CLASSES
from lmtrain.data.tokenizers import TOKENIZERS, CharVocab, Encoded, Settings, register
from lmtrain.errors import ConfigError
from lmtrain.metrics import LOGGERS, SINKS
from lmtrain.metrics.backends import register as register_logger
from lmtrain.training import fit


class UpperVocab(CharVocab):
    """Characters of the text in upper case: a kind that exists only in this test module."""

    kind = "upper"

    @classmethod
    def build(cls, text: str, settings: Settings) -> CharVocab:
        return super().build(text.upper(), settings)

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        return super().encode(text.upper(), add_eos)

    def tokenize(self, text: str) -> list[str]:
        return super().tokenize(text.upper())


class ToyLogger:
    """A logger known by its name alone, keeping what it is given."""

    name = "toy"
    package = "lmtrain_toy_logger"
    built: list[ToyLogger] = []

    def __init__(self, module: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.config = config
        self.steps: list[int] = []
        self.results: dict[str, Any] | None = None
        ToyLogger.built.append(self)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.steps.append(step)

    def finish(self, results: dict[str, Any]) -> None:
        self.results = results


@pytest.fixture
def upper() -> Iterator[type[UpperVocab]]:
    register(UpperVocab)
    yield UpperVocab
    del TOKENIZERS["upper"]


@pytest.fixture
def toy_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[ToyLogger]]:
    monkeypatch.setitem(sys.modules, ToyLogger.package, types.ModuleType(ToyLogger.package))
    monkeypatch.setattr(ToyLogger, "built", [])
    register_logger(ToyLogger)
    yield ToyLogger
    del LOGGERS["toy"], SINKS["toy"]


def _problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, list(overrides))
    return e.value.problems


def test_an_unregistered_tokenizer_or_logger_is_refused_as_before() -> None:
    assert _problems("data.tokenizer=upper", "run.loggers=[toy]") == [
        "data.tokenizer: expected one of 'char', 'word', 'byte', 'bpe', got 'upper'",
        "run.loggers: 'toy' is not one of wandb, mlflow",
    ]


def test_a_registered_tokenizer_is_a_name_of_the_data_section(upper) -> None:
    assert TOKENIZER_CLASSES["upper"] == f"{__name__}:UpperVocab"  # one table, the section's
    assert config_from_dict({}, ["data.tokenizer=upper"]).data.tokenizer == "upper"
    assert _problems("data.tokenizer=uper") == [
        "data.tokenizer: expected one of 'char', 'word', 'byte', 'bpe', 'upper', got 'uper'; "
        "did you mean 'upper'?"
    ]
    with pytest.raises(ValueError, match="'upper' is already registered"):
        register(upper)


def test_a_registered_logger_is_a_name_of_run_loggers(toy_logger) -> None:
    assert LOGGERS["toy"] == "lmtrain_toy_logger" and SINKS["toy"] is toy_logger
    assert config_from_dict({}, ["run.loggers=[toy, wandb]"]).run.loggers == ["toy", "wandb"]
    assert _problems("run.loggers=[toy, neptune]") == [
        "run.loggers: 'neptune' is not one of wandb, mlflow, toy"
    ]
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_logger(toy_logger)


def test_a_run_trains_with_a_registered_tokenizer_and_logger(
    upper, toy_logger, tmp_path: Path, tiny_files
) -> None:
    cfg = tiny_config(
        tmp_path, tiny_files, "data.tokenizer=upper", "run.loggers=[toy]", "train.max_steps=4"
    )
    result = fit(cfg, quiet=True, echo=lambda s: None)
    assert result.progress.step == 4
    [logger] = toy_logger.built
    assert logger.config["data"]["tokenizer"] == "upper" and logger.steps
    assert logger.results is not None and logger.results["status"] == "completed"
    # The checkpoint names the kind, and reading it back gives the registered class.
    model = load(result.run_dir)
    assert type(model.vocab) is upper
    assert not any(c.islower() for c in model.vocab.itos[2:])
