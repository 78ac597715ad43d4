"""Every kind lives with its code: a toy cell, tokenizer, optimiser and logger, each registered
from one module of tests/toys/ through its own package's register(), are names the config
takes, and one run trains with all four; a checkpoint of that run loads back as the same
kinds. Before they are registered, each name is refused by the table it belongs to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from toys import cell, logger, optimizer, tokenizer

from conftest import tiny_config
from lmtrain.api import load
from lmtrain.config import config_from_dict
from lmtrain.errors import ConfigError
from lmtrain.training import fit

OVERRIDES = [
    f"model.cell={cell.NAME}",
    f"data.tokenizer={tokenizer.ShoutVocab.kind}",
    f"train.optimizer={optimizer.NAME}",
    f"run.loggers=[{logger.MemoryLogger.name}]",
]


@pytest.fixture
def toys() -> Iterator[None]:
    undo = [m.install() for m in (cell, tokenizer, optimizer, logger)]
    yield
    for u in undo:
        u()


def test_each_toy_name_is_refused_until_its_module_registers_it() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, OVERRIDES)
    keys = sorted(p.split(":")[0] for p in e.value.problems)
    assert keys == ["data.tokenizer", "model.cell", "run.loggers", "train.optimizer"]


def test_one_run_trains_with_a_toy_of_every_kind(toys, tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(tmp_path, tiny_files, *OVERRIDES, "train.max_steps=6", "train.lr=0.1")
    result = fit(cfg, quiet=True, echo=lambda s: None)
    assert result.progress.step == 6
    assert optimizer.CountingSGD.steps == 6  # every step went through the toy optimiser
    [sink] = logger.MemoryLogger.built
    assert sink.points and sink.results is not None and sink.results["status"] == "completed"
    assert sink.config["model"]["cell"] == cell.NAME
    model = load(result.run_dir)
    assert type(model.vocab) is tokenizer.ShoutVocab
    assert not any(c.islower() for c in model.vocab.itos[2:])
    assert isinstance(model.module.rnn.layers[0], cell.HalvingLayer)
    assert model.evaluate("the cat sat on the mat .").tokens > 0
