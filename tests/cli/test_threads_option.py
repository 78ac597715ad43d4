"""--threads on every command that computes with torch (eval, score, sample, diagnose
gradient-flow), as fit's train.num_threads: the same bounds and words; without it, torch's own
choice, as before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.training import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("threads")
    cfg = tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=2")
    fit(cfg, quiet=True)
    return Path(cfg.run.dir)


@pytest.fixture(autouse=True)
def _threads_restored() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _commands(run: Path, tmp: Path) -> dict[str, list[str]]:
    return {
        "eval": ["eval", str(run)],
        "score": ["score", str(run), "the cat sat"],
        "sample": ["sample", str(run), "--max-tokens", "3", "--seed", "1"],
        "diagnose": [
            "diagnose", "gradient-flow", str(run), "--steps", "4", "--batch", "1",
            "--out", str(tmp / "flow.png"),
        ],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["eval", "score", "sample", "diagnose"])
def test_threads_sets_torch_threads(run: Path, tmp_path: Path, cli, command: str) -> None:
    torch.set_num_threads(1)
    r = invoke(cli, *_commands(run, tmp_path)[command], "--threads", "3")
    assert r.exit_code == 0, r.output
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("command", ["eval", "score", "sample", "diagnose"])
def test_without_threads_torch_keeps_its_choice(
    run: Path, tmp_path: Path, cli, command: str
) -> None:
    torch.set_num_threads(2)
    r = invoke(cli, *_commands(run, tmp_path)[command])
    assert r.exit_code == 0, r.output
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("command", ["eval", "score", "sample", "diagnose"])
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0", "--threads must be >= 1, got 0"),
        ("-2", "--threads must be >= 1, got -2"),
        ("1025", "--threads must be at most 1024 (torch would try to start that many threads), "
         "got 1025"),
    ],
)  # fmt: skip
def test_threads_out_of_bounds_exit_2_before_any_work(
    run: Path, tmp_path: Path, cli, command: str, value: str, words: str
) -> None:
    torch.set_num_threads(1)
    r = invoke(cli, *_commands(run, tmp_path)[command], "--threads", value)
    assert r.exit_code == 2, r.output
    assert f"error: {words}" in r.stderr and "Traceback" not in r.stderr
    assert torch.get_num_threads() == 1
    assert not (tmp_path / "flow.png").exists()


def test_threads_bounds_are_fits(tmp_path: Path, cli) -> None:
    """fit's train.num_threads refuses the same values, in the same words after the key."""
    from lmtrain.config import config_from_dict
    from lmtrain.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        config_from_dict({}, ["train.num_threads=1025"])
    assert "must be at most 1024 (torch would try to start that many threads), got 1025" in str(
        e.value
    )
    out = invoke(cli, "config").stdout
    assert "#   threads: null  # CPU threads for torch's kernels" in out
