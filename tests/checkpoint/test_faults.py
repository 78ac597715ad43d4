"""Fault injection for checkpoints: damaged, untrusted and mismatched checkpoints, and a full
disk during a save. Each test checks what the user sees (exit code, message) and what is kept
on disk. Signals and kill -9 in the middle of a save are in tests/runtime/test_signals.py."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import invoke, tiny_config, write_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.checkpoint import storage as ckpt_mod
from lmtrain.training import fit


def _ckpts(tmp_path: Path) -> Path:
    return tmp_path / "run" / "checkpoints"


# ---------------------------------------------------------------------------------------------
# Damaged, untrusted and mismatched checkpoints


@pytest.fixture
def trained(tmp_path: Path, tiny_files: dict[str, Path]) -> Path:
    """A finished run with checkpoints at steps 4, 8 and 12 (keep_last 2 keeps 8 and 12)."""
    config = write_config(tmp_path, tiny_files, "train.max_steps=12", "train.eval_every=4")
    fit(tiny_config(tmp_path, tiny_files, "train.max_steps=12", "train.eval_every=4"), quiet=True)
    return config


def test_keep_last_keeps_the_newest_numbered_checkpoints(trained, tmp_path):
    names = sorted(p.name for p in _ckpts(tmp_path).iterdir())
    assert names == ["best.pt", "last.pt", "step-00000008.pt", "step-00000012.pt"]
    for name, step in (("step-00000008.pt", 8), ("step-00000012.pt", 12), ("last.pt", 12)):
        assert load_checkpoint(_ckpts(tmp_path) / name)["progress"]["step"] == step
    # One write per save: last.pt is the step-12 file under a second name.
    assert (_ckpts(tmp_path) / "last.pt").samefile(_ckpts(tmp_path) / "step-00000012.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_resume_auto_skips_a_damaged_latest_checkpoint(damage, trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    step12 = _ckpts(tmp_path) / "step-00000012.pt"
    for path in (last, step12):
        data = path.read_bytes()
        new = {"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}
        path.write_bytes(new[damage])
    result = invoke(cli, "fit", trained, "train.max_steps=16", "--resume", "auto", "--quiet")
    assert result.exit_code == 0, result.output
    assert "skips last.pt" in result.stderr and "skips step-00000012.pt" in result.stderr
    assert "continues from" in result.stderr and "step-00000008.pt (step 8)" in result.stderr
    assert "resuming at step 8" in result.stderr
    assert load_checkpoint(last)["progress"]["step"] == 16


def test_explicitly_named_damaged_checkpoint_fails_clearly(trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    for args in (("fit", trained, "--resume", last), ("eval", last), ("sample", last)):
        result = invoke(cli, *args)
        assert result.exit_code == 2, result.output
        assert f"{last}: damaged or truncated checkpoint" in result.stderr
        assert "Traceback" not in result.output


def test_resume_auto_with_every_checkpoint_damaged_never_starts_from_scratch(
    trained, tmp_path, cli
):
    for path in _ckpts(tmp_path).iterdir():
        path.write_bytes(b"not a checkpoint")
    result = invoke(cli, "fit", trained, "--resume", "auto", "--quiet")
    assert result.exit_code == 2
    assert "none of the 4 checkpoint(s)" in result.stderr and "Nothing was changed" in result.stderr
    assert {p.read_bytes() for p in _ckpts(tmp_path).iterdir()} == {b"not a checkpoint"}


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_checkpoint_whose_pickle_runs_code_is_refused(how, trained, tmp_path, cli):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    payload = {"format": "lmtrain-checkpoint", "model": _Evil(marker)}
    if how == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    for args in (("eval", evil), ("fit", trained, "--resume", evil)):
        result = invoke(cli, *args)
        assert result.exit_code == 2, result.output
        assert "refused" in result.stderr or "cannot be read" in result.stderr
        assert not marker.exists()
    # The same file as the newest checkpoint of a run: skipped, still never executed.
    (_ckpts(tmp_path) / "last.pt").write_bytes(evil.read_bytes())
    result = invoke(cli, "fit", trained, "train.max_steps=14", "--resume", "auto", "--quiet")
    assert result.exit_code == 0 and "skips last.pt" in result.stderr
    assert not marker.exists()


def test_resume_with_changed_architecture_names_the_keys(trained, tmp_path, cli):
    before = {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()}
    result = invoke(
        cli, "fit", trained, "model.hidden_size=32", "model.cell=gru", "--resume", "auto"
    )
    assert result.exit_code == 2
    assert "model.cell (checkpoint: 'lstm', now: 'gru')" in result.stderr
    assert "model.hidden_size (checkpoint: 16, now: 32)" in result.stderr
    assert {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()} == before


def test_resume_from_tensors_that_do_not_fit_is_a_clear_error(trained, tmp_path, cli):
    last = _ckpts(tmp_path) / "last.pt"
    payload = load_checkpoint(last)
    payload["model"]["embedding.weight"] = torch.zeros(3, 3)
    ckpt_mod.save_checkpoint(last, payload)
    result = invoke(cli, "fit", trained, "--resume", last)
    assert result.exit_code == 2
    assert "cannot resume" in result.stderr and "embedding.weight" in result.stderr


def test_existing_run_directory_is_never_overwritten(trained, tmp_path, cli):
    before = {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()}
    result = invoke(cli, "fit", trained)
    assert result.exit_code == 2 and "already holds a run" in result.stderr
    assert {p.name: p.read_bytes() for p in _ckpts(tmp_path).iterdir()} == before


# ---------------------------------------------------------------------------------------------
# Disk full during a save


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(
    tmp_path, tiny_files, cli, monkeypatch
):
    config = write_config(tmp_path, tiny_files, "train.max_steps=12", "train.eval_every=4")
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        # The save at step 4 writes one file (last.pt and best.pt are hard links to it); the
        # next checkpoint write, the step-8 one, finds the disk full. Other files pass.
        if ".pt." in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(ckpt_mod.os, "fdatasync", fsync)
    result = invoke(cli, "fit", config, "--quiet")
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert "could not write the checkpoint (No space left on device)" in result.stderr
    assert "previous checkpoint, if any, is unchanged" in result.stderr
    assert load_checkpoint(_ckpts(tmp_path) / "last.pt")["progress"]["step"] == 4
    assert not list(_ckpts(tmp_path).glob(".*.tmp"))
