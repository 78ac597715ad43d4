"""A disk that fills up while lmtrain writes results.json or a plot image: exit 2 naming the file
and the full disk, the previous file intact, no temporary left, and the same command works once
there is room again."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import disk_full_for, invoke, tiny_config


def test_disk_full_writing_results_json(tmp_path: Path, tiny_files, cli, monkeypatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(tiny_config(tmp_path, tiny_files, "train.max_steps=4").to_yaml())
    assert invoke(cli, "fit", config, "-q").exit_code == 0
    results = tmp_path / "run" / "results.json"
    before = results.read_bytes()
    disk_full_for(monkeypatch, "results.json")
    r = invoke(cli, "fit", config, "train.max_steps=6", "--resume", "auto", "-q")
    monkeypatch.undo()
    assert r.exit_code == 2, r.output
    assert f"cannot write {results}: the disk is full" in r.stderr and "Traceback" not in r.output
    assert results.read_bytes() == before
    assert not [p for p in results.parent.rglob("*") if p.name.endswith(".tmp")]
    r = invoke(cli, "fit", config, "train.max_steps=6", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.output
    assert results.read_bytes() != before


def test_disk_full_writing_a_plot_image(tmp_path: Path, cli, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from metrics.test_plot import write_run

    run = write_run(tmp_path / "run", [(50, 3.0, 30.0), (100, 2.5, 60.0)])
    out = tmp_path / "curves.png"
    out.write_bytes(b"an earlier figure")
    disk_full_for(monkeypatch, "curves.png")
    r = invoke(cli, "plot", run, "--out", out)
    monkeypatch.undo()
    assert r.exit_code == 2, r.output
    assert f"{out}: cannot write the figure (No space left on device)" in r.stderr
    assert out.read_bytes() == b"an earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "run"]
    assert invoke(cli, "plot", run, "--out", out).exit_code == 0
    assert out.read_bytes().startswith(b"\x89PNG")
