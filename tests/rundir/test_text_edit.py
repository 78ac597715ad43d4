"""A training or validation file edited between two sessions of one run is a `data.*` change:
the resume is refused (exit 2, nothing changed), however the file's size and date were kept."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import invoke, tiny_config


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _edit_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    st = path.stat()
    text = path.read_text()
    assert len(old) == len(new) and old in text
    path.write_text(text.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("cache", ["auto", "null"])
def test_a_text_edited_between_sessions_is_refused_on_resume(
    tmp_path: Path, tiny_files: dict[str, Path], cli, cache: str
) -> None:
    config = tmp_path / "c.yaml"
    overrides = ("train.max_steps=4", "train.eval_every=2", f"data.cache_dir={cache}")
    config.write_text(tiny_config(tmp_path, tiny_files, *overrides).to_yaml())
    run = tmp_path / "run"
    assert invoke(cli, "fit", config, "-q").exit_code == 0
    history = json.loads((run / ".lmtrain" / "manifest.json").read_text())["history"]
    assert set(history[-1]["data"]) == {"data.train", "data.valid"}

    # Touched, not changed: the same text, so the run goes on.
    os.utime(tiny_files["train"], (1_000_000_000, 1_000_000_000))
    r = invoke(cli, "fit", config, "train.max_steps=6", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.output

    for key, path in (("data.train", tiny_files["train"]), ("data.valid", tiny_files["valid"])):
        original = path.read_bytes()
        _edit_keeping_size_and_mtime(path, "the cat", "the cow")
        before = _snapshot(run)
        r = invoke(cli, "fit", config, "train.max_steps=8", "--resume", "auto")
        assert r.exit_code == 2, r.output
        assert f"--resume auto: {key} ({path}) changed since the run was trained on it" in r.stderr
        assert "Put back the text the run was trained on, or train on the new text" in r.stderr
        assert "Traceback" not in r.output
        assert _snapshot(run) == before  # nothing was changed
        # A fork of the run carries its texts too.
        fork = invoke(
            cli, "fit", config, f"run.dir={tmp_path / 'fork'}", "--resume",
            run / "checkpoints" / "last.pt",
        )  # fmt: skip
        assert fork.exit_code == 2 and f"{key} ({path}) changed since" in fork.stderr
        assert not (tmp_path / "fork").exists()
        path.write_bytes(original)

    r = invoke(cli, "fit", config, "train.max_steps=8", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.output  # the text put back: the run goes on
