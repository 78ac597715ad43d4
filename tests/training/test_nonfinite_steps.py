"""Non-finite loss or gradients: a NaN or infinite step is skipped with the weights unchanged,
and too many in a row stop the run with exit 3, keeping the finite checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import invoke, tiny_config, write_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.models.output import SoftmaxOutput
from lmtrain.training import fit
from lmtrain.training.loop import Trainer


def _ckpts(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


def _poison(monkeypatch: pytest.MonkeyPatch, steps: set[int], where: str) -> None:
    """Make the training loss (where='loss') or its gradient ('grad') NaN at the given steps."""
    real = SoftmaxOutput.nll
    count = {"step": 0}

    def nll(self: SoftmaxOutput, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return real(self, hidden, targets)  # evaluation stays clean
        count["step"] += 1
        if count["step"] in steps:
            if where == "loss":
                return real(self, hidden, targets) * float("nan")
            hidden.register_hook(lambda g: g * float("inf"))
        return real(self, hidden, targets)

    monkeypatch.setattr(SoftmaxOutput, "nll", nll)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_step_is_skipped_with_weights_unchanged(
    where, tmp_path, tiny_files, monkeypatch
):
    _poison(monkeypatch, {4, 5}, where)
    real_step = Trainer.train_step
    skipped_unchanged: list[int] = []

    def step(trainer: Trainer, batch: Any) -> Any:
        before = [p.detach().clone() for p in trainer.model.parameters()]
        out = real_step(trainer, batch)
        after = list(trainer.model.parameters())
        if out.skipped and all(torch.equal(a, b) for a, b in zip(before, after, strict=True)):
            skipped_unchanged.append(trainer.progress.step + 1)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    lines: list[str] = []
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=10")
    result = fit(cfg, quiet=True, echo=lines.append)
    assert skipped_unchanged == [4, 5]
    assert result.progress.step == 10 and result.progress.nonfinite_steps == 2
    assert result.progress.nonfinite_run == 0
    assert any("step 5 | non-finite loss or gradient: step skipped" in x for x in lines)
    assert all(
        torch.isfinite(p).all()
        for p in load_checkpoint(_ckpts(tmp_path) / "last.pt")["model"].values()
    )


def test_too_many_non_finite_steps_stop_with_exit_3_and_keep_checkpoints(
    tmp_path, tiny_files, cli, monkeypatch
):
    config = write_config(
        tmp_path,
        tiny_files,
        "train.max_steps=30",
        "train.eval_every=4",
        "train.max_nonfinite_steps=3",
    )
    _poison(monkeypatch, set(range(6, 100)), "loss")
    result = invoke(cli, "fit", config, "--quiet")
    assert result.exit_code == 3, result.output
    assert "stopped at step 8: 3 consecutive steps had a NaN or infinite loss" in result.stderr
    assert "newest from step 4" in result.stderr
    for name in ("last.pt", "best.pt"):
        saved = load_checkpoint(_ckpts(tmp_path) / name)
        assert saved["progress"]["step"] == 4
        assert all(torch.isfinite(p).all() for p in saved["model"].values())
