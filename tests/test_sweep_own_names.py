"""export, plot and init write into folders a user may share with other processes, where a pid
cannot tell a killed writer from one in another container or host: each removes only the
temporaries of the names it writes itself, never another write's, whatever its pid."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import dead_pid, invoke, tiny_config, write_tiny_files
from lmtrain.training import fit


def _other_write(folder: Path, name: str) -> Path:
    """A temporary of lmtrain's form for `name`, of a pid with no process here."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{dead_pid()}.0123abcd.tmp"
    tmp.write_bytes(b"a write in progress")
    return tmp


def test_export_init_and_plot_leave_other_writes_alone(tmp_path: Path, cli) -> None:
    pytest.importorskip("matplotlib")
    shared = tmp_path / "shared"
    others = [_other_write(shared, n) for n in ("notes.txt", "curves.png", "quickstart.yaml")]
    own = _other_write(shared / "export", "config.json")
    other = _other_write(shared / "export", "results.json")
    cfg = tiny_config(tmp_path, write_tiny_files(tmp_path), "train.max_steps=4")
    run = fit(cfg, quiet=True, echo=lambda _: None).run_dir

    r = invoke(cli, "export", run, "--out", shared / "export")
    assert r.exit_code == 2 and "results.json" in r.stderr, r.output
    assert not own.exists()  # a killed export's
    assert invoke(cli, "init", "quickstart", shared / "my.yaml").exit_code == 0
    assert invoke(cli, "plot", run, "--out", shared / "loss.png").exit_code == 0
    assert all(p.read_bytes() == b"a write in progress" for p in [*others, other])
