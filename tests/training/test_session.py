"""`build_session` without a run directory: the Session fit() trains, for benchmarks and
notebooks, writing nothing."""

from __future__ import annotations

import torch

from conftest import fit_with_losses, tiny_config
from lmtrain.checkpoint import Progress
from lmtrain.runtime.signals import StopRequest
from lmtrain.training.data import prepare_data
from lmtrain.training.loop import Trainer
from lmtrain.training.setup import build_session
from lmtrain.training.window import StepLosses


def test_a_session_without_a_run_directory_trains_as_fit_does_and_writes_nothing(
    tmp_path, tiny_files
):
    one_epoch = ("train.epochs=1", "train.log_every=4", "model.dropout=0.3")
    fitted = fit_with_losses(tiny_config(tmp_path, tiny_files, *one_epoch), quiet=True)
    nowhere = tmp_path / "nowhere"
    cfg = tiny_config(tmp_path, tiny_files, *one_epoch, f"run.dir={nowhere}")
    torch.manual_seed(cfg.train.seed)  # as fit() does before it builds the model
    losses: dict[int, float] = {}
    lines: list[str] = []
    session = build_session(cfg, prepare_data(cfg), quiet=False, echo=lines.append)
    trainer = Trainer(session, Progress(), None, StopRequest(), StepLosses(losses.update))
    trainer.model.train()
    trainer.train_epoch()
    trainer.evaluate_and_save()  # what fit() does at the end: evaluate, and save (nothing here)
    assert session.run is None and trainer.saved_step is None
    assert trainer.progress.step == fitted.progress.step == 23
    assert losses == fitted.losses  # the same steps, bit for bit (dropout included)
    assert any(x.startswith("step 23 | epoch 1 | ") and "val loss" in x for x in lines)
    assert not nowhere.exists()
