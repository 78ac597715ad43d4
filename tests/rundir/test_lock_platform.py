"""The run lock is POSIX file locking; where there is none, fit says so instead of an ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lmtrain
from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.rundir import lock
from lmtrain.training import fit


def test_fit_without_fcntl_stops_with_the_platforms_it_needs(cli, tmp_path, monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config(tmp_path, write_tiny_files(tmp_path)).to_yaml())
    monkeypatch.setattr(lock, "fcntl", None)
    r = invoke(cli, "fit", config, "train.max_steps=2")
    assert r.exit_code == 2, r.output
    message = " ".join(r.stderr.split())
    assert "lmtrain fit needs POSIX file locking (fcntl.flock)" in message
    assert "lmtrain runs on Linux, macOS and WSL" in message and "Traceback" not in r.output
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_without_fcntl_the_package_imports_and_eval_works(tmp_path) -> None:
    fit(tiny_config(tmp_path, write_tiny_files(tmp_path), "train.max_steps=2"), quiet=True)
    code = (
        "import sys\n"
        "sys.modules['fcntl'] = None  # as on Windows\n"
        "from lmtrain.cli import main\n"
        "sys.argv = ['lmtrain', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(lmtrain.__file__).resolve().parents[1])}
    run = str(tmp_path / "run")
    ok = subprocess.run(
        [sys.executable, "-c", code, "eval", run], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("evaluated ")
    config = tmp_path / "again.yaml"
    config.write_text(
        tiny_config(tmp_path, write_tiny_files(tmp_path), f"run.dir={tmp_path / 'r2'}").to_yaml()
    )
    refused = subprocess.run(
        [sys.executable, "-c", code, "fit", str(config)], capture_output=True, text=True, env=env
    )
    assert refused.returncode == 2, refused.stderr
    assert "needs POSIX file locking" in refused.stderr and "Traceback" not in refused.stderr
