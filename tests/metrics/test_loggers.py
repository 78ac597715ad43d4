"""Loggers by name from one table, and a run logger that reports the figures it is given."""

from __future__ import annotations

import math
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

from conftest import tiny_config
from lmtrain.config.checks import check_ranges
from lmtrain.evaluation import EvalResult, Unit
from lmtrain.metrics import LOGGERS, SINKS, RunLogger, TrainPoint, read_metrics
from lmtrain.metrics.config import logger_problems

POINT = TrainPoint(
    step=2, epoch=0, loss=2.0, lr=0.1, grad_norm=1.0, grad_norm_max=2.0, tokens_per_sec=100.0,
    tokens=64, train_seconds=1.0,
)  # fmt: skip


class Toy:
    """A logger registered by name alone: what it is built with and every call it gets."""

    name = "toy"
    package = "lmtrain_toy_logger"
    built: list[Toy] = []

    def __init__(self, module: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.module, self.run_dir, self.config = module, run_dir, config
        self.points: list[tuple[int, dict[str, float]]] = []
        self.results: dict[str, Any] | None = None
        Toy.built.append(self)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.points.append((step, dict(values)))

    def finish(self, results: dict[str, Any]) -> None:
        self.results = results


def test_a_logger_registered_in_the_table_gets_every_figure(tmp_path: Path, monkeypatch) -> None:
    module = types.ModuleType(Toy.package)
    monkeypatch.setitem(sys.modules, Toy.package, module)
    monkeypatch.setitem(LOGGERS, "toy", Toy.package)
    monkeypatch.setitem(SINKS, "toy", Toy)
    monkeypatch.setattr(Toy, "built", [])
    logger = RunLogger(
        tmp_path, False, 10, 0, True, lambda _: None, unit=Unit.of("char"), config_yaml="a: 1\n",
        loggers=["toy"],
    )  # fmt: skip
    result = EvalResult(nll=10.0, tokens=4, kind="char", text_bytes=5)
    logger.train_point(POINT)
    logger.evaluation(2, 0, 1.0, result, best=True)
    logger.finish(logger.results("completed", 2, 64, 1.0, 0))
    [toy] = Toy.built
    assert toy.module is module and toy.run_dir == tmp_path and toy.config == {"a": 1}
    assert toy.points == [
        (2, {
            "train/loss": 2.0, "train/ppl": math.exp(2.0), "train/bpc": 2.0 / math.log(2),
            "watch/lr": 0.1, "watch/grad_norm": 1.0, "watch/grad_norm_max": 2.0,
            "watch/tokens_per_sec": 100.0,
        }),
        (2, {"val/loss": 2.5, "val/ppl": result.ppl, "val/bpc": result.bpc, "val/bpb": result.bpb}),
    ]  # fmt: skip
    assert toy.results is not None and toy.results["status"] == "completed"


class _Figures:
    """An evaluation's result whose figures no formula gives: the logger must copy them."""

    tokens = 7

    def figures(self) -> dict[str, float]:
        return {"loss": 1.0, "ppl": 123.0, "bpc": 9.0}

    def summary(self) -> str:
        return "the evaluation's own words"


class _Unit:
    headline = "ppl"

    def figures(self, loss: float) -> dict[str, float]:
        return {"ppl": 42.0}

    def show(self, figures: dict[str, float]) -> str:
        return f"ppl shown as {figures['ppl']}"


def test_the_run_logger_reports_the_figures_it_is_given(tmp_path: Path) -> None:
    lines: list[str] = []
    logger = RunLogger(tmp_path, False, 10, 0, False, lines.append, unit=_Unit(), write_files=True)
    logger.train_point(POINT)
    logger.evaluation(2, 0, 1.0, _Figures(), best=True)
    results = logger.results("completed", 2, 64, 1.0, 0)
    logger.close()
    train, evaluation = read_metrics(tmp_path)
    assert train["loss"] == 2.0 and train["ppl"] == 42.0 and "bpc" not in train
    assert {k: evaluation[k] for k in ("loss", "ppl", "bpc", "tokens")} == {
        "loss": 1.0, "ppl": 123.0, "bpc": 9.0, "tokens": 7,
    }  # fmt: skip
    assert results["best_val"] == {"step": 2, "loss": 1.0, "ppl": 123.0, "bpc": 9.0}
    assert "| loss 2.0000 | ppl shown as 42.0 | lr 0.1 |" in lines[-2]
    assert lines[-1].endswith("| val the evaluation's own words | new best")


def test_the_table_words_run_loggers_problems_as_the_config_does(tmp_path: Path) -> None:
    names = ["neptune", "wandb", "wandb"]
    cfg = tiny_config(tmp_path, {"train": tmp_path, "valid": tmp_path, "test": tmp_path})
    cfg = replace(cfg, run=replace(cfg.run, loggers=names))
    from_config = [p for p in check_ranges(cfg) if p.startswith("run.loggers")]
    assert logger_problems(names) == from_config
    assert len(from_config) == 2 and logger_problems(["mlflow", "wandb"]) == []


def test_every_name_the_config_takes_has_its_logger() -> None:
    assert list(SINKS) == list(LOGGERS) == ["wandb", "mlflow"]
    assert all(SINKS[name].name == name for name in SINKS)
