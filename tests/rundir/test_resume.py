"""Exact resume: stopped after step k and resumed to N equals one uninterrupted N-step run."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import fit_with_losses, tiny_config
from lmtrain.checkpoint import load_checkpoint
from lmtrain.errors import TrainingStopped
from lmtrain.training import fit
from lmtrain.training import loop as train_mod
from lmtrain.training.loop import Trainer

DATA_MODES = ["stream", "sentences"]


def _config(tmp_path: Path, files: dict[str, Path], mode: str, name: str, *extra: str):
    # Dropout on (so the RNG state matters), two epochs (an epoch boundary), evaluations every 5
    # steps (best-validation tracking and the plateau schedule's state matter), Adam (moments).
    return tiny_config(
        tmp_path,
        files,
        f"data.mode={mode}",
        "model.dropout=0.3",
        "train.epochs=2",
        "train.eval_every=5",
        "train.schedule=plateau",
        "train.plateau_patience=0",
        "train.optimizer=adam",
        f"run.dir={tmp_path / name}",
        *extra,
    )


class _Recorder:
    """Wraps Trainer.train_step: records (step, epoch, loss) and sends SIGTERM after step k."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> None:
        self.rows: list[tuple[int, int, float]] = []
        original = Trainer.train_step

        def wrapped(trainer: Trainer, batch: Any) -> Any:
            out = original(trainer, batch)
            step = trainer.progress.step + 1
            self.rows.append((step, trainer.progress.epoch, float(out.nll) / batch.num_tokens))
            if step == stop_after:
                signal.raise_signal(signal.SIGTERM)  # a real signal through the real handler
            return out

        monkeypatch.setattr(Trainer, "train_step", wrapped)


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {a.keys()} != {b.keys()}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, f"{where}: nan vs {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


_reference: dict[str, tuple[dict[str, Any], list[tuple[int, int, float]], dict[int, float]]] = {}


def _uninterrupted(tmp_path_factory, files, mode: str) -> tuple[dict, list, dict]:
    if mode not in _reference:
        tmp = tmp_path_factory.mktemp(f"reference-{mode}")
        with pytest.MonkeyPatch.context() as mp:
            rec = _Recorder(mp)
            result = fit_with_losses(_config(tmp, files, mode, "run"), quiet=True)
        last = load_checkpoint(tmp / "run" / "checkpoints" / "last.pt")
        _reference[mode] = (last, rec.rows, result.losses)
    return _reference[mode]


@pytest.fixture(scope="module")
def shared_files(tmp_path_factory) -> dict[str, Path]:
    from conftest import TINY_TEXT

    d = tmp_path_factory.mktemp("corpus")
    files = {}
    for split, text in (
        ("train", TINY_TEXT),
        ("valid", TINY_TEXT[:400]),
        ("test", TINY_TEXT[:400]),
    ):
        files[split] = d / f"{split}.txt"
        files[split].write_text(text, encoding="utf-8")
    return files


@pytest.mark.parametrize("mode", DATA_MODES)
@pytest.mark.parametrize("where", ["eval_point", "epoch_end", "second_epoch"])
def test_stop_and_resume_equals_uninterrupted_run(
    mode, where, tmp_path, tmp_path_factory, shared_files, monkeypatch
):
    ref_last, ref_rows, ref_losses = _uninterrupted(tmp_path_factory, shared_files, mode)
    per_epoch = sum(1 for _, epoch, _ in ref_rows if epoch == 0)
    total = len(ref_rows)
    assert per_epoch >= 8 and total == 2 * per_epoch, "the tiny corpus must give two real epochs"
    k = {"eval_point": 5, "epoch_end": per_epoch, "second_epoch": per_epoch + 3}[where]

    cfg = _config(tmp_path, shared_files, mode, "run")
    rec = _Recorder(monkeypatch, stop_after=k)
    with pytest.raises(TrainingStopped) as stopped:
        fit(cfg, quiet=True)
    assert stopped.value.exit_code == 143
    assert f"stopped after step {k}" in str(stopped.value)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["progress"]["step"] == k

    monkeypatch.undo()
    rec_resumed = _Recorder(monkeypatch)
    result = fit_with_losses(cfg, resume="auto", quiet=True)

    assert result.progress.step == total
    # Per-step losses: the first k from the stopped run, the rest from the resumed one.
    assert [r[0] for r in rec.rows] == list(range(1, k + 1))
    assert rec.rows + rec_resumed.rows == ref_rows
    assert result.losses == {s: v for s, v in ref_losses.items() if s > k}
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for part in ("model", "optimizer", "schedule", "progress", "rng", "carried_state"):
        _assert_same(_timeless(last[part]), _timeless(ref_last[part]), part)


def _timeless(part: Any) -> Any:
    """train_seconds is a wall-clock measurement, the one counter no two runs share."""
    if isinstance(part, dict) and "train_seconds" in part:
        assert part["train_seconds"] > 0
        return {k: v for k, v in part.items() if k != "train_seconds"}
    return part


def _scalar_steps(tb_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.parametrize("mode", DATA_MODES)
def test_tensorboard_has_each_step_once_after_a_stop_and_a_crash(
    mode, tmp_path, shared_files, monkeypatch
):
    extra = ("run.tensorboard=true", "train.log_every=2", "train.max_steps=16")
    ref = fit(_config(tmp_path, shared_files, mode, "ref", *extra), quiet=True)
    cfg = _config(tmp_path, shared_files, mode, "run", *extra)

    # 1. SIGTERM after step 7: checkpoint at 7, events up to 6.
    _Recorder(monkeypatch, stop_after=7)
    with pytest.raises(TrainingStopped):
        fit(cfg, quiet=True)
    monkeypatch.undo()

    # 2. Resume, then crash at step 13: newest checkpoint is step 10 (eval_every 5), but train
    #    events for 8..12 were already written and must be hidden after the next resume.
    original = Trainer.train_step

    def crash(trainer: Trainer, batch: Any) -> Any:
        if trainer.progress.step + 1 == 13:
            raise RuntimeError("injected crash")
        return original(trainer, batch)

    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        fit(cfg, resume="auto", quiet=True)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["progress"]["step"] == 10

    fit(cfg, resume="auto", quiet=True)
    for tag in ("train/loss", "val/loss"):
        expected = _scalar_steps(ref.run_dir / "tb", tag)
        assert expected == sorted(set(expected)) and len(expected) >= 3
        assert _scalar_steps(tmp_path / "run" / "tb", tag) == expected, tag


def test_resume_restores_the_carried_state_and_rng(tmp_path, tiny_files, monkeypatch):
    """A checkpoint written mid-epoch holds the state carried into the next window."""
    cfg = tiny_config(tmp_path, tiny_files, "model.dropout=0.3", "train.max_steps=20")
    _Recorder(monkeypatch, stop_after=6)
    with pytest.raises(TrainingStopped):
        fit(cfg, quiet=True)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    carried = saved["carried_state"]
    assert carried is not None and len(carried) == 2  # LSTM: (h, c)
    assert carried[0].shape == (2, 4, 16) and carried[0].abs().sum() > 0
    assert saved["progress"]["batch_in_epoch"] == 6
    assert isinstance(train_mod.Progress(**saved["progress"]), train_mod.Progress)
