"""Optimisers as a table: an optimiser registered from this module alone is a name the config
takes, that training builds, the memory estimate counts and the train checks know; an unknown
name is refused as it always was."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_config
from lmtrain.config import config_from_dict, estimate_memory
from lmtrain.errors import ConfigError
from lmtrain.models import build_model
from lmtrain.training import fit
from lmtrain.training.config import OPTIMIZERS, OptimizerSpec, TrainConfig, register
from lmtrain.training.optim import apply_config, build_optimizer

BUILTIN = "'sgd', 'adam', 'adamw', 'rmsprop', 'ntasgd'"


class Toy(torch.optim.SGD):
    """SGD under a name of its own, remembering each instance built."""

    built: list[Toy] = []

    def __init__(self, params: Any, lr: float, weight_decay: float, momentum: float) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        Toy.built.append(self)


TOY = OptimizerSpec(f"{__name__}:Toy", slots=3, momentum=True, needs_valid="watches validation")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[OptimizerSpec]:
    monkeypatch.setattr(Toy, "built", [])
    register("toy", TOY)
    yield TOY
    del OPTIMIZERS["toy"]


def _problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config_from_dict({}, list(overrides))
    return e.value.problems


def test_an_unknown_optimizer_is_refused_by_the_names_of_the_table() -> None:
    assert _problems("train.optimizer=toy") == [
        f"train.optimizer: expected one of {BUILTIN}, got 'toy'"
    ]
    assert _problems("train.optimizer=adamm") == [
        f"train.optimizer: expected one of {BUILTIN}, got 'adamm'; did you mean 'adam'?"
    ]


def test_a_registered_optimizer_is_a_name_the_config_takes(toy) -> None:
    cfg = config_from_dict({}, ["train.optimizer=toy"])
    assert cfg.train.optimizer == "toy" and cfg.train.optimizer_spec is toy
    assert _problems("train.optimizer=tyo") == [
        f"train.optimizer: expected one of {BUILTIN}, 'toy', got 'tyo'; did you mean 'toy'?"
    ]
    # Its row says it needs validation data: the section's rule words it by its name.
    assert _problems("train.optimizer=toy", "data.valid=null") == [
        "train.optimizer: 'toy' watches validation; set data.valid"
    ]
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register("toy", toy)


def test_a_registered_optimizer_is_built_with_its_options_and_follows_momentum(toy) -> None:
    cfg = config_from_dict({}, ["train.optimizer=toy", "train.momentum=0.5", "train.lr=0.1"])
    model = build_model(cfg.model, 50)
    optimizer = build_optimizer(cfg.train, model)
    assert Toy.built == [optimizer]
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.5, 0.0)
    apply_config(optimizer, dataclasses.replace(cfg.train, momentum=0.25))  # as a resume does
    assert optimizer.param_groups[0]["momentum"] == 0.25


def test_the_memory_estimate_counts_a_registered_optimizers_slots(toy) -> None:
    def state(name: str, momentum: float) -> int:
        overrides = [f"train.optimizer={name}", f"train.momentum={momentum}"]
        return estimate_memory(config_from_dict({}, overrides), 1000).state_bytes

    parameters = estimate_memory(config_from_dict({}), 1000).parameters
    # 4 bytes for the weight, its gradient and each slot: sgd keeps none, toy 3 and momentum's.
    assert state("toy", 0.5) - state("sgd", 0.0) == 4 * parameters * 4
    assert state("toy", 0.0) - state("sgd", 0.0) == 4 * parameters * 3


@pytest.mark.parametrize(
    ("name", "slots", "torch_class", "momentum"),
    [
        ("sgd", (0, 1), torch.optim.SGD, True),
        ("adam", (2, 2), torch.optim.Adam, False),
        ("adamw", (2, 2), torch.optim.AdamW, False),
        ("rmsprop", (1, 2), torch.optim.RMSprop, True),
        ("ntasgd", (1, 1), torch.optim.SGD, False),
    ],
)
def test_the_built_in_rows(name: str, slots: tuple[int, int], torch_class: type, momentum: bool):
    spec = OPTIMIZERS[name]
    assert (spec.state_slots(0.0), spec.state_slots(0.5)) == slots
    cfg = TrainConfig(optimizer=name, momentum=0.5, lr=0.1, weight_decay=0.01)
    optimizer = build_optimizer(cfg, torch.nn.Linear(2, 2))
    assert type(optimizer) is torch_class
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.1, 0.01)
    assert group.get("momentum", 0) == (0.5 if momentum else 0)


def test_a_registered_optimizer_trains(toy, tmp_path: Path, tiny_files) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "train.optimizer=toy", "train.max_steps=3")
    result = fit(cfg, quiet=True, echo=lambda s: None)
    assert result.progress.step == 3
    [optimizer] = Toy.built
    assert optimizer.param_groups[0]["lr"] == cfg.train.lr
