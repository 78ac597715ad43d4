"""A fit into a run directory sweeps what killed writers left only while it holds the run's lock:
a temporary whose pid is not alive here may be the write in progress of a process in another
container or on another host sharing the directory, which a pid cannot tell."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from conftest import dead_pid, invoke, tiny_config


def _config(tmp_path: Path, tiny_files) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files, "train.max_steps=4").to_yaml())
    return path


def _hold_lock(run: Path) -> int:
    fd = os.open(run / ".lmtrain" / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.parametrize("saved", [True, False])
def test_a_fit_refused_by_a_run_in_progress_leaves_its_writes_alone(
    tmp_path: Path, tiny_files, cli, saved: bool
) -> None:
    config = _config(tmp_path, tiny_files)
    assert invoke(cli, "fit", config, "-q").exit_code == 0
    run = tmp_path / "run"
    if not saved:  # a first session that has not saved a checkpoint yet
        for p in (run / "checkpoints").iterdir():
            p.unlink()
    in_progress = run / f".results.json.{dead_pid()}.0123abcd.tmp"
    in_progress.write_text("a write in progress")
    fd = _hold_lock(run)  # the run's own process, in another container
    try:
        r = invoke(cli, "fit", config, "-q")
    finally:
        os.close(fd)
    assert r.exit_code == 2, r.output
    assert ("already holds a run" if saved else "is in use by") in r.stderr
    assert in_progress.read_text() == "a write in progress" and "removed" not in r.stderr
