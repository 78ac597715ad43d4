"""Exact resume of qrnn, mingru and minlstm: stopped after step k and resumed, a run equals one
uninterrupted run, step for step, with every random draw of theirs on (zoneout, weight drop on
the input weights, locked dropout) and their state carried across windows: QRNN's last input
too, in stream mode, and chunked sentences in sentences mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_resume import _assert_same, _Recorder, _timeless

from conftest import fit_with_losses, tiny_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.errors import TrainingStopped
from lmtrain.training import fit

CASES = {
    "qrnn": ("stream", ["model.cell=qrnn", "model.zoneout=0.2"]),
    "qrnn_sentences": ("sentences", ["model.cell=qrnn", "model.zoneout=0.2", "train.bptt=4"]),
    "mingru": ("stream", ["model.cell=mingru", "model.pre_norm=true", "model.residual=true"]),
    "minlstm": ("stream", ["model.cell=minlstm"]),
}


def _config(tmp_path: Path, files: dict[str, Path], case: str, name: str):
    mode, extra = CASES[case]
    return tiny_config(
        tmp_path,
        files,
        f"data.mode={mode}",
        "model.dropout=0.2",
        "model.locked_dropout=0.2",
        "model.weight_drop=0.3",
        "train.epochs=2",
        "train.eval_every=5",
        "train.optimizer=adam",
        f"run.dir={tmp_path / name}",
        *extra,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_stop_and_resume_equals_uninterrupted_run(case: str, tmp_path, tiny_files, monkeypatch):
    with pytest.MonkeyPatch.context() as mp:
        ref = _Recorder(mp)
        ref_losses = fit_with_losses(_config(tmp_path, tiny_files, case, "ref"), quiet=True)
    ref_last = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    per_epoch = sum(1 for _, epoch, _ in ref.rows if epoch == 0)
    k = per_epoch + 3  # in the second epoch, mid-stream: a carried state is in the checkpoint
    assert len(ref.rows) == 2 * per_epoch and per_epoch >= 5

    cfg = _config(tmp_path, tiny_files, case, "run")
    stopped = _Recorder(monkeypatch, stop_after=k)
    with pytest.raises(TrainingStopped):
        fit(cfg, quiet=True)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["progress"]["step"] == k and saved["carried_state"] is not None
    monkeypatch.undo()
    resumed = _Recorder(monkeypatch)
    result = fit_with_losses(cfg, resume="auto", quiet=True)

    assert stopped.rows + resumed.rows == ref.rows
    assert result.losses == {s: v for s, v in ref_losses.losses.items() if s > k}
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for part in ("model", "optimizer", "progress", "rng", "carried_state"):
        _assert_same(_timeless(last[part]), _timeless(ref_last[part]), part)
