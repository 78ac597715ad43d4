"""End to end through the command line: fit -> eval -> sample, and the user errors around them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import invoke


@pytest.fixture
def trained_run(tmp_path: Path, tiny_files, cli) -> Path:
    cfg = {
        "data": {k: str(v) for k, v in tiny_files.items()} | {"tokenizer": "word"},
        "model": {"embedding_dim": 16, "hidden_size": 16, "num_layers": 1},
        "train": {"epochs": 3, "batch_size": 4, "bptt": 8, "lr": 0.01},
        "run": {"dir": str(tmp_path / "run"), "sample_tokens": 5},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = invoke(cli, "fit", path, "train.seed=3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "done: " in result.stdout and "best val loss" in result.stdout
    return tmp_path / "run"


def test_eval_json_is_exact_and_independent_of_batch_size(
    trained_run: Path, tiny_files, cli
) -> None:
    outs = []
    for bs in ("1", "8"):
        result = invoke(
            cli, "eval", trained_run, "--data", tiny_files["test"], "--batch-size", bs, "--json"
        )
        assert result.exit_code == 0, result.output
        outs.append(json.loads(result.stdout))
    a, b = outs
    assert a == b
    assert {"loss", "ppl", "tokens", "oov_rate"} <= set(a)
    assert a["approximate"] is False
    assert a["ppl"] == pytest.approx(2.718281828 ** a["loss"], rel=1e-9)
    # Every word plus one <eos> per line is a token; all but the first are predicted.
    text = tiny_files["test"].read_text()
    assert a["tokens"] == len(text.split()) + len(text.splitlines()) - 1


def test_eval_streams_is_labelled_approximate(trained_run: Path, tiny_files, cli) -> None:
    result = invoke(cli, "eval", trained_run, "--data", tiny_files["test"], "--streams", "4")
    assert result.exit_code == 0, result.output
    assert "APPROXIMATE (4 parallel streams)" in result.stdout


def test_sample_same_seed_same_text(trained_run: Path, cli) -> None:
    args = ("sample", trained_run, "--prompt", "the cat", "--max-tokens", "12", "--seed", "7")
    first, second = invoke(cli, *args), invoke(cli, *args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout
    assert first.stdout.startswith("the cat ")
    assert len(first.stdout.split()) >= 12
    greedy = invoke(
        cli,
        "sample",
        trained_run,
        "--prompt",
        "the",
        "--greedy",
        "--max-tokens",
        "5",
        "--num-samples",
        "2",
    )
    one, two = [block.strip() for block in greedy.stdout.split("--- sample")[1:]]
    assert one[2:] == two[2:]  # greedy decoding does not depend on the sample


def test_sample_unknown_tokens(trained_run: Path, cli) -> None:
    result = invoke(cli, "sample", trained_run, "--prompt", "the zebra", "--max-tokens", "3")
    assert result.exit_code == 0
    assert (
        "warning: 1 prompt token(s) not in the vocabulary, read as <unk>: 'zebra'" in result.stderr
    )
    result = invoke(cli, "sample", trained_run, "--prompt", "zebra giraffe")
    assert result.exit_code == 2
    assert "every token of the prompt is unknown" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("eval", "nowhere"), "no such checkpoint file or run directory"),
        (("sample", "nowhere", "--prompt", "x"), "no such checkpoint file or run directory"),
        (("sample", "RUN", "--temperature", "0"), "--temperature must be > 0"),
        (("eval", "RUN", "--data", "missing.txt"), "missing.txt: file not found"),
    ],
)
def test_user_errors_exit_2_without_traceback(trained_run: Path, cli, args, needle) -> None:
    args = tuple(str(trained_run) if a == "RUN" else a for a in args)
    result = invoke(cli, *args)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_missing_training_file_leaves_no_run_dir(tmp_path: Path, cli) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            {"data": {"train": str(tmp_path / "nope.txt")}, "run": {"dir": str(tmp_path / "r")}}
        )
    )
    result = invoke(cli, "fit", path)
    assert result.exit_code == 2
    assert "nope.txt: file not found" in result.stderr


@pytest.mark.slow
def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    for cmd in ([sys.executable, "-m", "lmtrain"], [str(Path(sys.executable).parent / "lmtrain")]):
        out = subprocess.run(
            [*cmd, "validate", "/nonexistent.yaml"], capture_output=True, text=True
        )
        assert out.returncode == 2
        assert "file not found" in out.stderr and "Traceback" not in out.stderr


def test_version_and_short_help_on_every_command(cli) -> None:
    import typer

    import lmtrain
    from lmtrain.cli import app

    for flag in ("--version", "-V"):
        r = invoke(cli, flag)
        assert r.exit_code == 0 and r.stdout == f"lmtrain {lmtrain.__version__}\n"
    root = invoke(cli, "-h")
    assert root.exit_code == 0 and root.stdout == invoke(cli, "--help").stdout
    assert "--install-completion" in root.stdout and "--version" in root.stdout

    def paths(group: typer.core.TyperGroup, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = []
        for name, command in group.commands.items():
            found.append((*prefix, name))
            if isinstance(command, typer.core.TyperGroup):
                found += paths(command, (*prefix, name))
        return found

    commands = paths(typer.main.get_command(app), ())
    assert {("fit",), ("export",), ("diagnose", "gradient-flow")} <= set(commands)
    for path in commands:
        r = invoke(cli, *path, "-h")
        assert r.exit_code == 0, (path, r.output)
        assert f" {' '.join(path)} [OPTIONS]" in r.stdout  # its own help, not the root's
