"""Shared fixtures: tiny corpora written per test, a tiny config, the CLI runner."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from lmtrain.cli import app
from lmtrain.config import Config, config_from_dict
from lmtrain.training import FitResult, fit

# The test models are tiny: a second thread buys nothing and, on a loaded 2-core machine,
# oversubscription makes them several times slower. Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Prepared token files (data.cache_dir: auto) go to a directory of this test session, never to
# the user's ~/.cache; subprocesses inherit it. Tests about the cache itself set their own.
_CACHE = tempfile.TemporaryDirectory(prefix="lmtrain-test-cache-")
os.environ["LMTRAIN_CACHE_DIR"] = _CACHE.name

DATA_DIR = Path(os.environ.get("LMTRAIN_DATA", Path(__file__).resolve().parents[2] / "shared/data"))

TINY_TEXT = (
    "the cat sat on the mat .\n"
    "the dog sat on the log .\n"
    "a cat and a dog sat together .\n"
    "the mat was red and the log was brown .\n"
) * 20


def shared_data(*parts: str) -> Path:
    """A file under the shared corpora; skipped when absent, but a failure in CI."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        msg = f"shared corpus {path} not found (set LMTRAIN_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def write_tiny_files(directory: Path) -> dict[str, Path]:
    """train/valid/test files of a tiny English corpus in `directory`."""
    files = {}
    for split, text in (
        ("train", TINY_TEXT),
        ("valid", TINY_TEXT[:400]),
        ("test", TINY_TEXT[400:800]),
    ):
        files[split] = directory / f"{split}.txt"
        files[split].write_text(text, encoding="utf-8")
    return files


@pytest.fixture
def tiny_files(tmp_path: Path) -> dict[str, Path]:
    """train/valid/test files of a tiny English corpus."""
    return write_tiny_files(tmp_path)


def tiny_config(
    tmp_path: Path, files: dict[str, Path], *overrides: str, **sections: dict
) -> Config:
    """A small, fast config on the tiny corpus; extra dotted overrides win."""
    raw = {
        "data": {
            "train": str(files["train"]),
            "valid": str(files["valid"]),
            "test": str(files["test"]),
            "tokenizer": "word",
        },
        "model": {"cell": "lstm", "embedding_dim": 16, "hidden_size": 16, "num_layers": 2},
        "train": {"epochs": 2, "batch_size": 4, "bptt": 8, "lr": 0.01, "log_every": 5, "seed": 1},
        "run": {"dir": str(tmp_path / "run"), "tensorboard": False, "sample_tokens": 0},
    }
    for name, values in sections.items():
        raw[name].update(values)
    return config_from_dict(raw, list(overrides))


def write_config(tmp_path: Path, files: dict[str, Path], *overrides: str) -> Path:
    """tiny_config written as tmp_path/config.yaml, for tests that drive the CLI."""
    path = tmp_path / "config.yaml"
    path.write_text(tiny_config(tmp_path, files, *overrides).to_yaml(), encoding="utf-8")
    return path


@dataclass
class FitWithLosses:
    """A FitResult (its attributes read through) and the losses fit's `on_log` hook heard."""

    result: FitResult
    losses: dict[int, float] = field(default_factory=dict)
    """Each step's mean training loss over the global batch, by step number."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.result, name)


def fit_with_losses(cfg: Config, *args: Any, **kwargs: Any) -> FitWithLosses:
    """fit(cfg, ...), observing each step's loss through the public `on_log` hook."""
    losses: dict[int, float] = {}
    result = fit(cfg, *args, on_log=losses.update, **kwargs)
    return FitWithLosses(result, losses)


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run the CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return runner.invoke(app, [str(a) for a in args])


def dead_pid() -> int:
    """The pid of a process that has exited: what the temporary of a killed writer carries."""
    return int(subprocess.check_output([sys.executable, "-c", "import os; print(os.getpid())"]))


def disk_full_for(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Every atomic write of a file called `name` fails as on a full disk, when it is synced."""
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
