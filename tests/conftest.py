"""Shared fixtures: tiny corpora written per test, a tiny config, the CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lmtrain.cli import app
from lmtrain.config import Config, config_from_dict

# The test models are tiny: a second thread buys nothing and, on a loaded 2-core machine,
# oversubscription makes them several times slower. Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    """Run the CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return runner.invoke(app, [str(a) for a in args])
