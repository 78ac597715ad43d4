"""Recurrent dropout's mask in training (issue 25): sentences mode draws one per sequence, keeps
it over every window of a long sequence and saves it with the carried state, so that a resumed
run continues exactly; stream mode draws one per window."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from lmtrain import checkpoint as ckpt
from lmtrain.checkpoint import load_checkpoint, tensor_misfits
from lmtrain.checkpoint.storage import save_checkpoint
from lmtrain.config import Config
from lmtrain.models.cells import UNDRAWN
from lmtrain.training import fit
from lmtrain.training.data import prepare_data, silent
from lmtrain.training.session import Session
from lmtrain.training.setup import build_session
from lmtrain.training.state import restore
from tests.conftest import fit_with_losses, tiny_config

HIDDEN = 32
WORDS = 40
"""Words per line: a sequence of 41 inputs, 11 windows of train.bptt=4."""


def _files(tmp_path: Path) -> dict[str, Path]:
    """Two long lines of different words (two sequences of the same length) per file."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(f"{w}{i % 7}" for i in range(WORDS)) for w in ("a", "b")]
    text = "\n".join(lines) + "\n"
    files = {}
    for split in ("train", "valid", "test"):
        files[split] = tmp_path / f"{split}.txt"
        files[split].write_text(text, encoding="utf-8")
    return files


def _config(tmp_path: Path, *overrides: str) -> Config:
    return tiny_config(
        tmp_path,
        _files(tmp_path / "data"),
        "data.mode=sentences",
        "model.cell=rnn_tanh",
        "model.num_layers=1",
        f"model.hidden_size={HIDDEN}",
        "model.recurrent_dropout=0.5",
        "train.batch_size=2",
        "train.bptt=4",
        *overrides,
    )


def _session(cfg: Config) -> Session:
    corpus = prepare_data(cfg, None, silent)
    torch.manual_seed(cfg.train.seed)
    return build_session(cfg, corpus)


def _dropped_units(
    session: Session, epochs: int = 1
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train through `epochs` epochs with the run's own step. For each window: (B, H) True at
    the units whose output was exactly 0 at every real step of the row, and the state carried
    out of it.

    Without leak a unit's output is its candidate update times the mask: a dropped unit is 0 at
    every step, a kept one (tanh of a pre-activation that is never exactly 0) never is.
    """
    outputs: list[torch.Tensor] = []
    session.model.rnn.register_forward_hook(lambda m, a, out: outputs.append(out[0].detach()))
    carried, step, windows, states = None, 0, [], []
    for epoch in range(epochs):
        for batch in session.batches.batches(epoch):
            result = session.step(batch, carried, step)
            assert not result.skipped
            carried, step = result.state, step + 1
            out = outputs[-1]  # (T, B, H)
            steps = out.size(0)
            lengths = [steps] * out.size(1) if batch.lengths is None else batch.lengths.tolist()
            windows.append(torch.stack([(out[:n, j] == 0).all(0) for j, n in enumerate(lengths)]))
            states.append(carried)
    return windows, states


def test_a_long_sequence_keeps_one_mask_over_its_windows_and_two_sequences_differ(
    tmp_path: Path,
) -> None:
    session = _session(_config(tmp_path))
    windows, states = _dropped_units(session, epochs=2)
    per_epoch = len(windows) // 2
    assert per_epoch == -(-(WORDS + 1) // 4)  # both sequences split over 11 windows
    first, second = windows[:per_epoch], windows[per_epoch:]
    for window in first[1:]:
        assert torch.equal(window, first[0])  # the same zeros in every window
    for window in second[1:]:
        assert torch.equal(window, second[0])
    row0, row1 = first[0]
    assert 0.2 < row0.float().mean() < 0.8  # half of the units dropped, p = 0.5
    assert not torch.equal(row0, row1)  # two sequences, two masks
    assert not torch.equal(first[0], second[0])  # a sequence that starts again draws again
    # The carried state ends with the mask the window used: 0 where a unit is dropped.
    for window, state in zip(windows, states, strict=True):
        assert torch.equal(state[-1][0] == 0, window)


def test_stream_mode_draws_a_mask_for_each_window(tmp_path: Path) -> None:
    # The documented rule of stream mode: a stream never ends, so each window draws its own.
    session = _session(_config(tmp_path, "data.mode=stream"))
    windows, _ = _dropped_units(session)
    assert len(windows) >= 5
    assert all(not torch.equal(a, b) for a, b in zip(windows, windows[1:], strict=False))


def test_resume_mid_sequence_gives_the_uninterrupted_figures(tmp_path: Path) -> None:
    # 11 windows per sequence: step 5 stops in the middle of both sequences.
    straight = fit_with_losses(
        _config(tmp_path / "a", "train.max_steps=14"), quiet=True, echo=silent
    ).losses
    first = _config(tmp_path / "b", "train.max_steps=5", "train.eval_every=5")
    fit(first, quiet=True, echo=silent)
    saved = load_checkpoint(Path(first.run.dir) / ckpt.CHECKPOINT_DIR / ckpt.LAST)
    h, mask = saved.carried_state  # the mask is part of the carried state, drawn
    assert mask.shape == h.shape == (1, 2, HIDDEN)
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    second = _config(tmp_path / "b", "train.max_steps=14", "train.eval_every=5")
    resumed = fit_with_losses(second, resume="auto", quiet=True, echo=silent).losses
    assert sorted(resumed) == list(range(6, 15))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], rel=1e-6), step


def test_a_checkpoint_saved_without_masks_resumes_with_them_undrawn(tmp_path: Path) -> None:
    # An older lmtrain carried only h (and c): its checkpoints still resume, each sequence in
    # flight drawing its mask at the next window.
    cfg = _config(tmp_path, "train.max_steps=5", "train.eval_every=5")
    fit(cfg, quiet=True, echo=silent)
    path = Path(cfg.run.dir) / ckpt.CHECKPOINT_DIR / ckpt.LAST
    ck = load_checkpoint(path)
    older = dataclasses.replace(ck, carried_state=ck.carried_state[:1])
    assert tensor_misfits(cfg, older) == []
    _, carried = restore(_session(cfg), older)
    assert torch.equal(carried[0], ck.carried_state[0])
    assert torch.equal(carried[1], torch.full((1, 2, HIDDEN), UNDRAWN))
    save_checkpoint(path, older)
    more = _config(tmp_path, "train.max_steps=8", "train.eval_every=5")
    resumed = fit_with_losses(more, resume="auto", quiet=True, echo=silent)
    assert sorted(resumed.losses) == [6, 7, 8]
    # A state of the wrong width is still refused by name.
    wrong = dataclasses.replace(ck, carried_state=[torch.zeros(1, 2, HIDDEN + 1)])
    assert "the carried recurrent state has shape(s)" in " ".join(tensor_misfits(cfg, wrong))
