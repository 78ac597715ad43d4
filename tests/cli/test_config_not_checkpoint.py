"""A config file given where a trained model is read is named as a config, with what to pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.training import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("config-given")
    fit(tiny_config(tmp, write_tiny_files(tmp), "train.max_steps=4"), quiet=True, echo=print)
    return tmp / "run"


@pytest.mark.parametrize("command", [["eval"], ["sample", "--max-tokens", "2"], ["score", "x"]])
def test_a_runs_config_is_refused_with_the_run_directory_to_pass(cli, run, command) -> None:
    name, *rest = command
    r = invoke(cli, name, run / "config.yaml", *rest)
    assert r.exit_code == 2, r.output
    assert f"{run / 'config.yaml'}: is a config file, not a checkpoint" in r.stderr
    assert f"give the run directory ({run}, its best checkpoint)" in r.stderr
    assert "damaged" not in r.stderr


def test_an_exports_config_json_points_at_the_export_folder(cli, run, tmp_path) -> None:
    out = tmp_path / "exp"
    assert invoke(cli, "export", run, "--out", out).exit_code == 0
    r = invoke(cli, "eval", out / "config.json")
    assert r.exit_code == 2, r.output
    assert (
        f"is a config file, not a checkpoint; nothing was loaded. To read a trained model, give the export folder itself: {out}"
        in r.stderr
    )


def test_a_checkpoint_named_like_a_config_still_loads(cli, run, tmp_path) -> None:
    odd = tmp_path / "model.yaml"
    shutil.copy(run / "checkpoints" / "best.pt", odd)
    r = invoke(cli, "eval", odd)
    assert r.exit_code == 0, r.output


def test_a_lone_yaml_file_gets_the_general_advice(cli, tmp_path) -> None:
    other = tmp_path / "settings.yml"
    other.write_text("model:\n  hidden_size: 8\n")
    r = invoke(cli, "eval", other)
    assert r.exit_code == 2
    assert "give a run directory, a checkpoint file (.pt) or an export folder" in r.stderr
