"""A run that diverges: weights whose validation loss is not finite are never kept as a
checkpoint, so the command the NaN guard advises does not start from them and fail again."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import lmtrain
from conftest import invoke, write_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.training.loop import Trainer

REPO = Path(lmtrain.__file__).resolve().parents[1]
GUARD = ("train.max_steps=12", "train.eval_every=1", "train.max_nonfinite_steps=2")


def _checkpoints(tmp_path: Path) -> list[str]:
    directory = tmp_path / "run" / "checkpoints"
    return sorted(p.name for p in directory.glob("*.pt")) if directory.is_dir() else []


def _advice(stderr: str) -> str:
    message = " ".join(stderr.split())
    found = re.search(
        r"(?:start the run again|continue) with `(lmtrain fit CONFIG [^`]*)`", message
    )
    assert found is not None, message
    return found.group(1)


def test_weights_diverged_at_step_1_are_not_kept_and_the_advice_works(
    tmp_path, tiny_files, cli, monkeypatch
):
    """Step 1 blows the weights up (validation loss inf, every later step NaN); the advised
    command, once the cause is gone (here the injected blow-up), trains to the end."""
    config = write_config(tmp_path, tiny_files, *GUARD)
    real_step = Trainer.train_step

    def blow_up(trainer: Trainer, batch: Any) -> Any:
        out = real_step(trainer, batch)
        if trainer.progress.step == 0:  # the counters advance after the step
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.mul_(1e37)
        return out

    monkeypatch.setattr(Trainer, "train_step", blow_up)
    result = invoke(cli, "fit", config, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 3, result.output
    assert _checkpoints(tmp_path) == []
    advice = _advice(result.stderr)
    assert advice == "lmtrain fit CONFIG train.lr=0.005"
    assert "step 1 | no checkpoint written: the validation loss is inf" in result.stderr
    assert "stopped at step 3: 2 consecutive steps had a NaN" in result.stderr
    again = invoke(cli, *shlex.split(advice.replace("CONFIG", str(config)))[1:], "--quiet")
    assert again.exit_code == 0, again.output
    assert "resuming" not in again.stderr
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last.progress.step == 12 and last.progress.nonfinite_steps == 0
    assert torch.isfinite(torch.tensor(last.progress.best_val_loss))


def _lmtrain(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "lmtrain", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_a_huge_learning_rate_keeps_no_diverged_checkpoint_and_the_advice_runs_as_written(
    tmp_path, tiny_files
):
    """A real divergence (train.lr=1e36: validation loss inf after step 1), run as a user
    would. The advised command is run as printed: it must not resume the diverged step-1
    weights (which stopped at once, 'no checkpoint was written in this session', again and
    again), nor be refused; it trains a fresh run from step 0 at the halved rate."""
    config = write_config(tmp_path, tiny_files, *GUARD, "train.lr=1e36", "train.optimizer=adam")
    first = _lmtrain("fit", str(config), "--quiet")
    assert first.returncode == 3, first.stderr
    assert _checkpoints(tmp_path) == []
    advice = _advice(first.stderr)
    assert advice == "lmtrain fit CONFIG train.lr=5e+35"
    assert "step 1 | no checkpoint written: the validation loss is inf" in first.stderr
    assert "no checkpoint was ever saved, so there is nothing to resume" in first.stderr
    again = _lmtrain(*shlex.split(advice.replace("CONFIG", str(config)))[1:], "--quiet")
    assert "Traceback" not in again.stderr
    assert "already holds a run" not in again.stderr and "resuming" not in again.stderr
    assert "stopped before its first checkpoint" in again.stderr  # the old run's logs go
    assert "unigram baseline on validation" in again.stderr  # what only a new run prints
    assert "no checkpoint was written in this session" not in again.stderr
    # 5e+35 is still far too high: the fresh run diverges on its own account, and says so.
    assert again.returncode == 3, again.stderr
    assert "stopped at step 3: 2 consecutive steps had a NaN" in again.stderr
