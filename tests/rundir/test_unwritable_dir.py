"""A run directory that cannot be written: fit stops with a clear message and the file in
its way is left as it was."""

from __future__ import annotations

from conftest import invoke, write_config


def test_unwritable_run_directory(tmp_path, tiny_files, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    config = write_config(tmp_path, tiny_files, f"run.dir={blocker / 'run'}")
    result = invoke(cli, "fit", config)
    assert result.exit_code == 2
    assert f"run directory {blocker / 'run'} cannot be written" in result.stderr
    assert blocker.read_text() == "x"
