"""A run directory whose .lmtrain/manifest.json is gone (deleted by hand, or a run of an lmtrain
that kept none) is resumed as such a run: lmtrain takes back only the names it gives its own
files, never a user's file, and writes the manifest again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke, tiny_config


@pytest.mark.slow
def test_a_missing_manifest_is_rebuilt_from_lmtrains_own_names(
    tmp_path: Path, tiny_files, cli
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(tiny_config(tmp_path, tiny_files, "train.max_steps=4").to_yaml())
    assert invoke(cli, "fit", config, "-q").exit_code == 0
    run = tmp_path / "run"
    (run / ".lmtrain" / "manifest.json").unlink()
    (run / "notes.txt").write_text("mine\n")
    r = invoke(cli, "fit", config, "train.max_steps=6", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.output
    assert (run / "notes.txt").read_text() == "mine\n"
    manifest = json.loads((run / ".lmtrain" / "manifest.json").read_text())
    assert "checkpoints/last.pt" in manifest["files"] and "notes.txt" not in manifest["files"]
    assert manifest["files"]["checkpoints/last.pt"]["step"] == 6
