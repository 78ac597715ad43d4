"""Temporaries that a killed process left mid-write are lmtrain's, not the user's: the next fit in
that directory removes them (new run or resume), and never a live process's or a user's file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lmtrain
from conftest import invoke, tiny_config

REPO = Path(lmtrain.__file__).resolve().parents[1]

# Writes argv[1] through the one atomic writer, and is killed with the temporary on disk.
_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from lmtrain import files
    with files.atomic_write(Path(sys.argv[1])) as f:
        f.write(b"half")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _killed_write(target: Path) -> Path:
    """The temporary a SIGKILLed write to `target` left behind."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(target)], cwd=REPO)
    assert proc.wait() == -signal.SIGKILL
    (tmp,) = target.parent.glob(f".{target.name}.{proc.pid}.*.tmp")
    return tmp


def _config(tmp_path: Path, tiny_files) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(tiny_config(tmp_path, tiny_files, "train.max_steps=4").to_yaml())
    return path


def test_a_new_run_removes_what_a_killed_run_left(tmp_path: Path, tiny_files, cli) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stale = _killed_write(run / "config.yaml")
    r = invoke(cli, "fit", _config(tmp_path, tiny_files), "-q")
    assert r.exit_code == 0, r.output
    assert f"removed {stale}, an unfinished write from an interrupted run" in r.stderr
    assert not stale.exists() and (run / "checkpoints" / "last.pt").is_file()


def test_resume_removes_a_killed_writes_temporaries_but_not_the_users(
    tmp_path: Path, tiny_files, cli
) -> None:
    config = _config(tmp_path, tiny_files)
    assert invoke(cli, "fit", config, "-q").exit_code == 0
    run = tmp_path / "run"
    stale = [
        _killed_write(run / "checkpoints" / "last.pt"),
        _killed_write(run / "results.json"),
        _killed_write(run / ".lmtrain" / "manifest.json"),
    ]
    mine = [run / ".notes.txt.tmp", run / "checkpoints" / ".last.pt.1.abc.tmp"]
    for path in mine:
        path.write_text("mine")
    r = invoke(cli, "fit", config, "train.max_steps=6", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.output
    assert f"removed {stale[0]}, an unfinished checkpoint write" in r.stderr
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in mine)
