"""A run directory that cannot be written: fit stops with a clear message and the file in
its way is left as it was."""

from __future__ import annotations

from pathlib import Path

from conftest import invoke, tiny_config


def _write_config(tmp_path: Path, files: dict[str, Path], *overrides: str) -> Path:
    cfg = tiny_config(tmp_path, files, *overrides)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    return path


def test_unwritable_run_directory(tmp_path, tiny_files, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = _write_config(tmp_path, tiny_files, f"run.dir={blocker / 'run'}")
    result = invoke(cli, "fit", config)
    assert result.exit_code == 2
    assert f"run directory {blocker / 'run'} cannot be written" in result.stderr
    assert blocker.read_text() == "x"
