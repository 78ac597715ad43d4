"""Random byte damage to the files lmtrain reads back that no other property test covers: a
config file, RUN/metrics.jsonl (read by `plot` and by a resume), RUN/results.json. Each read is
a clear refusal (exit 2) or exactly what the damaged file says, never a traceback, and never a
change to the file except what a resume is meant to do (cut a torn line, drop later steps).
Export folders are covered in tests/test_export_trust.py, checkpoints and the manifest in
tests/checkpoint/test_checkpoint_records.py, the prepared cache in tests/data/."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import invoke, tiny_config, write_tiny_files
from lmtrain.config import load_config
from lmtrain.errors import LmtrainError
from lmtrain.metrics import read_results
from lmtrain.metrics.files import MetricsFile
from lmtrain.plot import run_curves
from lmtrain.training import fit

_DAMAGE = {
    "flips": st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=3),
    "cut": st.none() | st.floats(0, 1, exclude_max=True),
}
_FEW = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _damage(data: bytes, flips: list[tuple[float, int]], cut: float | None) -> bytes:
    out = bytearray(data)
    for where, bit in flips:
        out[int(where * (len(out) - 1))] ^= 1 << bit
    return bytes(out[: int(cut * len(out))] if cut is not None else out)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 6-step run that evaluated at steps 2, 4 and 6; its config is beside it."""
    base = tmp_path_factory.mktemp("damaged")
    cfg = tiny_config(base, write_tiny_files(base), "train.max_steps=6", "train.eval_every=2")
    (base / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    fit(cfg, quiet=True, echo=lambda _: None)
    return base / "run"


def _copy(run: Path, tmp_path: Path, name: str, data: bytes) -> Path:
    """A directory holding only `name` with `data`, as a run directory would."""
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    (copy / name).write_bytes(data)
    return copy


def _lines(data: bytes) -> list[Any]:
    """What each complete line of a metrics file says, the torn last one left out."""
    lines = data.split(b"\n")
    out = [json.loads(line) for line in lines[:-1] if line.strip()]
    if lines[-1].strip():
        with contextlib.suppress(ValueError):
            out.append(json.loads(lines[-1]))
    return out


# -- the config file ----------------------------------------------------------------------------


@_FEW
@given(**_DAMAGE)
def test_random_damage_to_a_config_is_refused_or_read(run, tmp_path, flips, cut) -> None:
    data = _damage((run.parent / "config.yaml").read_bytes(), flips, cut)
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except LmtrainError as e:
        assert e.exit_code == 2 and str(path) in str(e), e
    else:
        assert cfg.model.hidden_size >= 1 and cfg.train.lr >= 0 and math.isfinite(cfg.train.lr)
    assert path.read_bytes() == data


# -- metrics.jsonl, as plot reads it ------------------------------------------------------------


@_FEW
@given(**_DAMAGE)
def test_random_damage_to_metrics_is_refused_or_plotted_as_written(run, tmp_path, flips, cut):
    data = _damage((run / "metrics.jsonl").read_bytes(), flips, cut)
    copy = _copy(run, tmp_path, "metrics.jsonl", data)
    try:
        (curve,) = run_curves([copy], "loss", "step")
    except LmtrainError as e:
        assert e.exit_code == 2 and str(copy) in str(e), e
    else:
        # Plotted: then every point is one the file states, none skipped or invented.
        evals = [
            r for r in _lines(data) if r["type"] == "eval" and r.get("split", "valid") == "valid"
        ]
        assert curve.x == [r["step"] for r in evals]
        want = [math.nan if r["loss"] is None else float(r["loss"]) for r in evals]
        assert [str(v) for v in curve.y] == [str(v) for v in want]
    assert (copy / "metrics.jsonl").read_bytes() == data


def test_a_damaged_figure_in_metrics_is_a_clear_error(run, tmp_path, cli) -> None:
    text = (run / "metrics.jsonl").read_text()
    last_eval = max(i for i, line in enumerate(text.splitlines()) if '"eval"' in line)
    lines = text.splitlines()
    record = json.loads(lines[last_eval])
    lines[last_eval] = json.dumps({**record, "loss": "1.2.3"})
    copy = _copy(run, tmp_path, "metrics.jsonl", ("\n".join(lines) + "\n").encode())
    r = invoke(cli, "plot", copy, "--out", tmp_path / "x.png")
    assert r.exit_code == 2, r.output
    assert f"line {last_eval + 1}: not an lmtrain metrics record" in r.stderr
    assert "('loss' should be a number, not str '1.2.3')" in r.stderr
    assert "Traceback" not in r.output and not (tmp_path / "x.png").exists()


def test_a_fifo_as_metrics_is_refused_not_waited_on(run, tmp_path, cli) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    os.mkfifo(copy / "metrics.jsonl")
    r = invoke(cli, "plot", copy, "--out", tmp_path / "x.png")
    assert r.exit_code == 2, r.output
    assert "metrics.jsonl cannot be read (is a named pipe (FIFO), not a regular file" in r.stderr


# -- metrics.jsonl, as a resume reads it --------------------------------------------------------


@_FEW
@given(**_DAMAGE)
def test_random_damage_to_metrics_on_resume_is_refused_or_kept_as_written(
    run, tmp_path, flips, cut
) -> None:
    data = _damage((run / "metrics.jsonl").read_bytes(), flips, cut)
    copy = _copy(run, tmp_path, "metrics.jsonl", data)
    try:
        metrics = MetricsFile(copy, resume_step=4, warn=lambda _: None)
    except LmtrainError as e:
        assert e.exit_code == 2 and str(copy) in str(e), e
        assert (copy / "metrics.jsonl").read_bytes() == data  # refused: nothing changed
        return
    metrics.close()
    # Resumed at step 4: exactly the records up to step 4 that the file states are kept.
    kept = [r for r in _lines(data) if r["step"] <= 4]
    assert metrics.kept == kept
    assert _lines((copy / "metrics.jsonl").read_bytes()) == kept


# -- results.json -------------------------------------------------------------------------------


@_FEW
@given(**_DAMAGE)
def test_random_damage_to_results_is_refused_or_read_as_written(run, tmp_path, flips, cut):
    data = _damage((run / "results.json").read_bytes(), flips, cut)
    copy = _copy(run, tmp_path, "results.json", data)
    try:
        results = read_results(copy)
    except LmtrainError as e:
        assert e.exit_code == 2 and str(copy) in str(e), e
    else:
        assert results == json.loads(data)
    assert (copy / "results.json").read_bytes() == data


def test_results_missing_or_a_fifo_is_refused_not_waited_on(tmp_path) -> None:
    with pytest.raises(LmtrainError, match="results.json not found"):
        read_results(tmp_path)
    os.mkfifo(tmp_path / "results.json")
    with pytest.raises(LmtrainError, match="is a named pipe"):
        read_results(tmp_path)
