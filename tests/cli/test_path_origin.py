"""A missing file's message says where its path was written: the command line or a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.training import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("origin")
    fit(tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=4"), quiet=True, echo=print)
    return tmp / "run"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ("eval", "RUN", "--data", "nope.txt"),
            "nope.txt: file not found; check the path given to --data",
        ),
        (
            ("score", "RUN", "--file", "nope.txt"),
            "nope.txt: file not found; check the path given to --file",
        ),
    ],
)
def test_a_path_typed_on_the_command_line_is_named_as_such(cli, run, args, needle) -> None:
    r = invoke(cli, *(str(run) if a == "RUN" else a for a in args))
    assert r.exit_code == 2, r.output
    assert needle in r.stderr
    assert "your config" not in r.stderr


def test_the_runs_own_test_file_is_named_as_its_saved_config(cli, run, tmp_path) -> None:
    moved = tmp_path / "moved-run"
    moved.mkdir()
    (moved / "checkpoints").mkdir()
    best = run / "checkpoints" / "best.pt"
    (moved / "checkpoints" / "best.pt").write_bytes(best.read_bytes())
    test = run.parent / "test.txt"
    kept = test.read_bytes()
    test.unlink()
    try:
        r = invoke(cli, "eval", moved)
    finally:
        test.write_bytes(kept)
    assert r.exit_code == 2, r.output
    assert (
        f"{test}: file not found; check the path in the run's saved config (data.test" in r.stderr
    )
    assert "pass --data FILE to evaluate another text" in r.stderr


def test_a_config_path_is_still_named_as_the_configs(cli, tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  train: {tmp_path / 'gone.txt'}\nrun:\n  dir: {tmp_path / 'r'}\n")
    r = invoke(cli, "fit", cfg)
    assert r.exit_code == 2
    assert f"data.train: {tmp_path / 'gone.txt'}: file not found" in r.stderr
    assert "given to" not in r.stderr
