"""`lmtrain init NAME`, an edit, `lmtrain fit NAME`: the edited ./NAME.yaml is what trains, and the
first line says which file a name stood for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import invoke
from lmtrain.catalog import RECIPES_DIR


def test_init_edit_fit_trains_the_edited_file(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke(cli, "init", "quickstart").exit_code == 0
    edited = Path("quickstart.yaml")
    edited.write_text(edited.read_text().replace("hidden_size: 256", "hidden_size: 12"))
    r = invoke(
        cli, "fit", "quickstart", "run.dir=r", "train.max_steps=2", "train.eval_every=2",
        "run.tensorboard=false", "run.sample_tokens=0", "--quiet",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    first = r.stderr.splitlines()[0]
    assert first == (
        "config: quickstart.yaml (the file in this folder; not the shipped recipe quickstart, "
        f"which is {RECIPES_DIR / 'quickstart.yaml'})"
    )
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["model"]["hidden_size"] == 12


def test_without_a_file_the_recipe_is_named(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("quickstart.yaml").mkdir()  # a folder is never a config
    r = invoke(cli, "validate", "quickstart")
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[0] == (
        f"config: the shipped recipe quickstart ({RECIPES_DIR / 'quickstart.yaml'})"
    )
    assert "hidden_size: 256" in r.stdout


def test_yml_and_a_name_that_is_no_recipe(tmp_path: Path, monkeypatch) -> None:
    from lmtrain.catalog import find_config

    monkeypatch.chdir(tmp_path)
    Path("quickstart.yml").write_text("model:\n  hidden_size: 9\n")
    assert find_config("quickstart").path == Path("quickstart.yml")
    Path("quickstart.yaml").write_text("model:\n  hidden_size: 8\n")
    assert find_config("quickstart").path == Path("quickstart.yaml")  # what init writes
    Path("mine.yaml").write_text("model:\n  hidden_size: 7\n")
    source = find_config("mine")
    assert source.path == Path("mine.yaml")
    assert source.note == "config: mine.yaml (the file in this folder)"


@pytest.mark.parametrize("arg", ["quickstart.yaml", "./quickstart", "sub/quickstart"])
def test_a_path_given_as_a_path_gets_no_note_and_no_stand_in(tmp_path, monkeypatch, arg) -> None:
    from lmtrain.catalog import find_config

    monkeypatch.chdir(tmp_path)
    Path("quickstart.yaml").write_text("model:\n  hidden_size: 8\n")
    source = find_config(arg)
    assert source.note is None
    assert source.path == Path(arg)


def test_a_fifo_named_like_the_file_is_refused_not_skipped(cli, tmp_path, monkeypatch) -> None:
    import os

    monkeypatch.chdir(tmp_path)
    os.mkfifo("quickstart.yaml")
    r = invoke(cli, "validate", "quickstart")
    assert r.exit_code == 2
    assert "config: quickstart.yaml (the file in this folder" in r.stderr
    assert "named pipe" in r.stderr


def test_dot_slash_name_is_a_path_on_the_command_line(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke(cli, "validate", "./quickstart")
    assert r.exit_code == 2
    assert "file not found" in r.stderr and "config:" not in r.stderr
