"""A torn last line in RUN/metrics.jsonl (what kill -9, a power cut or a full disk leaves) is cut
off before the next session appends, so the run stays resumable and plottable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke, tiny_config
from lmtrain.metrics import read_metrics


@pytest.mark.parametrize("tail", [b'{"type": "train", "step": 1', b"\x00" * 37])
def test_a_torn_tail_is_cut_and_the_run_resumes_and_plots(
    tmp_path: Path, tiny_files, cli, tail: bytes
) -> None:
    cfg = tiny_config(tmp_path, tiny_files, "train.max_steps=6", "train.eval_every=3")
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    assert invoke(cli, "fit", config, "-q").exit_code == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    whole = metrics.read_bytes()
    metrics.write_bytes(whole + tail)  # the session was killed mid-line

    r = invoke(cli, "fit", config, "train.max_steps=9", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.output
    assert f"{metrics} ended in a torn line ({len(tail)} bytes" in r.stderr
    assert "every complete record is kept" in r.stderr
    # Every record of the first session is kept, byte for byte, and the second follows it.
    assert metrics.read_bytes().startswith(whole)
    lines = metrics.read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert [r["step"] for r in read_metrics(tmp_path / "run") if r["type"] == "eval"] == [3, 6, 9]

    r = invoke(cli, "fit", config, "train.max_steps=12", "--resume", "auto", "-q")
    assert r.exit_code == 0, r.output
    assert "torn line" not in r.stderr
    pytest.importorskip("matplotlib")
    r = invoke(cli, "plot", tmp_path / "run", "--out", tmp_path / "curve.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
