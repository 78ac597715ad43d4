"""validate's checks of this machine, as a Python caller gets them (lmtrain.preflight)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from lmtrain.errors import ConfigError
from lmtrain.preflight import environment_problems, run_dir_problems, validate_config


def test_a_good_config_has_no_environment_problems(tmp_path: Path, tiny_files: dict) -> None:
    cfg = tiny_config(tmp_path, tiny_files)
    assert environment_problems(cfg) == []
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert validate_config(path) == cfg


def test_missing_files_and_a_run_dir_that_is_a_file_are_listed_together(
    tmp_path: Path, tiny_files: dict
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    cfg = tiny_config(tmp_path, tiny_files, f"data.valid={tmp_path / 'missing.txt'}")
    raw = cfg.to_dict()
    raw["run"]["dir"] = str(blocker)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        validate_config(path)
    keys = [p.split(":", 1)[0] for p in e.value.problems]
    assert "run.dir" in keys and any("missing.txt" in p for p in e.value.problems)


def test_run_dir_must_be_a_directory_or_creatable(tmp_path: Path) -> None:
    assert run_dir_problems(tmp_path / "new" / "run") == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_dir_problems(blocker) == [
        f"run.dir: {blocker} exists and is not a directory; choose another run.dir"
    ]
    assert run_dir_problems(blocker / "run") == [
        f"run.dir: {blocker} is not a directory, so {blocker / 'run'} cannot be created there"
    ]
