"""Signals: SIGINT/SIGTERM during training, a second one during a checkpoint save, kill -9 in the
middle of a save, and a signal during evaluation.

What a user must see: the conventional exit code (130 for SIGINT, 143 for SIGTERM), a message
and no traceback, the checkpoints directory byte-identical to what it was before the interrupted
save (no temporary file left), after kill -9 a resume that removes the unfinished write, and,
after a signal during evaluation, a run that stops at once and resumes to exactly the run it
would have been."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import lmtrain
from conftest import TINY_TEXT, invoke, tiny_config, write_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.checkpoint import storage as ckpt_mod
from lmtrain.errors import TrainingStopped
from lmtrain.metrics import read_metrics
from lmtrain.models import LanguageModel
from lmtrain.runtime.signals import ImmediateStop, graceful_stop
from lmtrain.training import fit

pytestmark = pytest.mark.slow

REPO = Path(lmtrain.__file__).resolve().parents[1]

CODES = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


def _hashes(directory: Path) -> dict[str, str]:
    """Every finished file under `directory` (temporary files excluded) with its SHA-256."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def _ckpts(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


# Runs `lmtrain fit` with three injected faults: each step sleeps a little (so signals land
# mid-run), READY is written once step 3 is done, and a save can be made to hang after its
# temporary file is fully written (SAVING marks that moment), so the test can signal or kill the
# process in the middle of a checkpoint write.
_DRIVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from lmtrain.training import loop as train
    mode, marks = sys.argv[1], Path(sys.argv[2])
    hang = False
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if hang:
            f.flush()
            (marks / "SAVING").write_text("")
            time.sleep(120)

    torch.save = save
    real_trainer_save = train.Trainer.save

    def trainer_save(self, best):
        global hang
        stopping = self.stop is not None and self.stop.requested
        hang = (mode == "hang-late-save" and self.progress.step >= 4) or (
            mode == "hang-stop-save" and stopping
        )
        real_trainer_save(self, best)

    train.Trainer.save = trainer_save
    real_step = train.Trainer.train_step

    def step(self, batch):
        out = real_step(self, batch)
        if self.progress.step + 1 == 3:
            (marks / "READY").write_text("")
        time.sleep(0.05)
        return out

    train.Trainer.train_step = step
    sys.argv = ["lmtrain", "fit", *sys.argv[3:]]
    from lmtrain.cli import main
    main()
    """
)


class _Run:
    def __init__(self, tmp_path: Path, files: dict[str, Path], mode: str, *overrides: str):
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        driver = tmp_path / "driver.py"
        driver.write_text(_DRIVER, encoding="utf-8")
        config = write_config(tmp_path, files, "train.epochs=50", "train.eval_every=2", *overrides)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(driver), mode, str(self.marks), str(config), "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def wait_for(self, mark: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.marks / mark).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                out, err = self.proc.communicate()
                pytest.fail(f"{mark} never appeared; exit {self.proc.returncode}\n{err}")
            time.sleep(0.05)

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


# ---------------------------------------------------------------------------------------------
# A signal, and kill -9, in a real subprocess


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_at_the_next_step_and_exits_with_its_code(
    signum, code, tmp_path, tiny_files
):
    run = _Run(tmp_path, tiny_files, "plain")
    run.wait_for("READY")
    run.proc.send_signal(signum)
    rc, err = run.finish()
    assert rc == code, err
    name = signal.Signals(signum).name
    assert f"{name} received: stopped after step" in err
    assert "--resume auto" in err and "Traceback" not in err
    saved = load_checkpoint(_ckpts(tmp_path) / "last.pt")
    assert saved["progress"]["step"] >= 3
    assert not list(_ckpts(tmp_path).glob(".*.tmp"))


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path, tiny_files):
    run = _Run(tmp_path, tiny_files, "hang-stop-save")
    run.wait_for("READY")
    before = (_ckpts(tmp_path) / "last.pt").read_bytes()  # written at step 2
    run.proc.send_signal(signal.SIGINT)
    run.wait_for("SAVING")  # the stop checkpoint is being written, and hangs there
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    rc, err = run.finish()
    assert time.monotonic() - sent < 20  # not the 120 s the hung save would take
    assert rc == 130, err
    assert "stopped at once" in err and "Traceback" not in err
    # The interrupted write left nothing behind and last.pt is the old, complete checkpoint.
    assert not list(_ckpts(tmp_path).glob(".*.tmp"))
    assert (_ckpts(tmp_path) / "last.pt").read_bytes() == before
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt")["progress"]["step"] == 2


@pytest.mark.slow
def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, tiny_files, cli):
    run = _Run(tmp_path, tiny_files, "hang-late-save")
    run.wait_for("SAVING")  # writing the step-4 checkpoint's temporary file
    run.proc.kill()
    run.finish()
    leftovers = list(_ckpts(tmp_path).glob(".*.tmp"))
    assert leftovers, "the kill should have interrupted a write"
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt")["progress"]["step"] == 2

    config = tmp_path / "config.yaml"
    result = invoke(cli, "fit", config, "train.max_steps=6", "--resume", "auto", "--quiet")
    assert result.exit_code == 0, result.output
    assert "removed" in result.stderr and "unfinished checkpoint write" in result.stderr
    assert "resuming at step 2" in result.stderr
    assert not list(_ckpts(tmp_path).glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# A second signal while a checkpoint is being written


@pytest.mark.parametrize(("signum", "code"), CODES)
def test_second_signal_during_the_stop_save_exits_with_its_code_and_damages_nothing(
    signum, code, tmp_path, tiny_files
):
    checkpoints = tmp_path / "run" / "checkpoints"
    run = _Run(tmp_path, tiny_files, "hang-stop-save")
    run.wait_for("READY")
    run.proc.send_signal(signum)
    run.wait_for("SAVING")  # the stop checkpoint's temporary file is written; the save hangs
    assert _leftovers(checkpoints), "the save should be in progress"
    before = _hashes(checkpoints)
    sent = time.monotonic()
    run.proc.send_signal(signum)
    rc, err = run.finish()
    assert time.monotonic() - sent < 20  # not the 120 s the hung save would take
    assert rc == code, err
    assert "stopped at once (checkpoints on disk are intact)" in err
    assert "Traceback" not in err
    assert _hashes(checkpoints) == before
    assert not _leftovers(checkpoints)


@pytest.mark.parametrize("where", ["mid-write", "fsync", "rename", "link"])
def test_immediate_stop_inside_a_save_leaves_the_checkpoints_as_they_were(
    where, tmp_path, tiny_files, cli, monkeypatch
):
    """ImmediateStop (what the second signal raises) at each stage of the second save."""
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=8", "train.eval_every=4")
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    checkpoints = tmp_path / "run" / "checkpoints"
    snapshot: dict[str, dict[str, str]] = {}
    saves = {"n": 0}
    real_save, real_fsync, real_replace = torch.save, ckpt_mod.os.fsync, ckpt_mod.os.replace

    def interrupt() -> None:
        snapshot["before"] = _hashes(checkpoints)
        raise ImmediateStop(signal.SIGTERM)

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        saves["n"] += 1
        if where == "mid-write" and saves["n"] == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            interrupt()
        real_save(obj, f, *args, **kwargs)

    def fsync(fd: int) -> None:
        if where == "fsync" and saves["n"] == 2:
            interrupt()
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        if where == "rename" and saves["n"] == 2 and str(dst).endswith(".pt"):
            interrupt()
        if where == "link" and saves["n"] == 2 and os.stat(src).st_nlink > 1:
            interrupt()  # step-8.pt is written; last.pt is being pointed at it
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.torch, "save", save)
    monkeypatch.setattr(ckpt_mod.os, "fdatasync", fsync)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    result = invoke(cli, "fit", config, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 143, result.output
    assert "stopped at once (checkpoints on disk are intact)" in result.stderr
    assert "Traceback" not in result.output
    assert snapshot["before"]["last.pt"] and _hashes(checkpoints) == snapshot["before"]
    assert not _leftovers(checkpoints)
    assert load_checkpoint(checkpoints / "last.pt").progress.step == 4


def test_a_third_signal_does_not_interrupt_the_clean_up():
    with graceful_stop() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and stop.exit_code == 130
        with pytest.raises(ImmediateStop) as second:
            signal.raise_signal(signal.SIGTERM)
        assert second.value.exit_code == 143
        signal.raise_signal(signal.SIGINT)  # ignored: the clean-up of the second one runs on
        assert stop.immediate


# ---------------------------------------------------------------------------------------------
# A signal during evaluation


def _eval_config(tmp_path: Path, files: dict[str, Path], mode: str, name: str):
    # A validation text of many evaluation windows (stream) or batches (sentences), so that a
    # signal lands with most of the evaluation still to do.
    valid = tmp_path / "long-valid.txt"
    valid.write_text(TINY_TEXT * 30, encoding="utf-8")
    return tiny_config(
        tmp_path,
        files,
        f"data.valid={valid}",
        f"data.mode={mode}",
        "model.dropout=0.3",
        "train.max_steps=8",
        "train.eval_every=4",
        "train.optimizer=adam",
        f"run.dir={tmp_path / name}",
    )


def _timeless(progress: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in progress.items() if k != "train_seconds"}


@pytest.mark.parametrize("mode", ["stream", "sentences"])
def test_signal_during_evaluation_stops_at_once_and_resumes_exactly(
    mode, tmp_path, tiny_files, monkeypatch
):
    reference = fit(_eval_config(tmp_path, tiny_files, mode, "reference"), quiet=True)
    assert reference.progress.step == 8
    ref_last = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")

    cfg = _eval_config(tmp_path, tiny_files, mode, "run")
    real_forward = LanguageModel.forward
    seen = {"eval_calls": 0, "after_signal": 0, "signalled": False}

    def forward(self: LanguageModel, *args: Any, **kwargs: Any) -> Any:
        if not self.training:
            seen["eval_calls"] += 1
            if seen["signalled"]:
                seen["after_signal"] += 1
            if seen["eval_calls"] == 2:  # inside the first evaluation (step 4)
                seen["signalled"] = True
                signal.raise_signal(signal.SIGTERM)
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(LanguageModel, "forward", forward)
    with pytest.raises(TrainingStopped) as stopped:
        fit(cfg, quiet=True)
    monkeypatch.undo()
    assert stopped.value.exit_code == 143
    assert "stopped after step 4" in str(stopped.value)
    assert seen["signalled"] and seen["after_signal"] == 0  # not one more window or batch

    checkpoints = tmp_path / "run" / "checkpoints"
    saved = load_checkpoint(checkpoints / "last.pt")
    # The training state of step 4, with its evaluation still due and nothing of it recorded.
    assert saved.progress.step == 4 and saved.progress.eval_pending
    assert saved.progress.last_eval_step == -1 and math.isnan(saved.progress.last_val_loss)
    assert saved.progress.best_val_loss == math.inf
    assert not (checkpoints / "best.pt").exists()
    assert not [r for r in read_metrics(tmp_path / "run") if r["type"] == "eval"]

    result = fit(cfg, resume="auto", quiet=True)
    assert result.progress.step == 8
    last = load_checkpoint(checkpoints / "last.pt")
    assert _timeless(last["progress"]) == _timeless(ref_last["progress"])
    for k, v in ref_last.model.items():
        assert torch.equal(v, last.model[k]), k
    assert [r["step"] for r in read_metrics(tmp_path / "run") if r["type"] == "eval"] == [4, 8]
    best = load_checkpoint(checkpoints / "best.pt").progress.best_val_loss
    assert best == ref_last.progress.best_val_loss
