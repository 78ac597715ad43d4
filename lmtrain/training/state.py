"""A run's checkpoint: what `payload` puts in it, and how `restore` continues from it.

The file format itself (fields, validation, atomic writes) belongs to lmtrain/checkpoint; this
module decides which of the run's objects fill each field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lmtrain import checkpoint as ckpt
from lmtrain.checkpoint import Checkpoint, Progress
from lmtrain.errors import CheckpointError, TrainingStopped
from lmtrain.models import State
from lmtrain.rundir import resume as resume_mod
from lmtrain.runtime.precision import flatten_rnn_weights
from lmtrain.training.optim import apply_config
from lmtrain.training.session import Session


def payload(s: Session, progress: Progress, carried: State | None) -> Checkpoint:
    """Everything needed to continue exactly. Under torchrun a collective: every rank calls it,
    and the result holds the full batch's carried state and every rank's RNG state."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), **s.ctx.rng_by_rank()}
    state = s.ctx.gather_rows(carried)
    if s.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(s.device)
    model, averager = s.averager.checkpoint(s.model.state_dict())
    return Checkpoint(
        config=s.cfg.to_dict(),
        vocab=s.corpus.vocab.to_dict(),
        model=model,
        optimizer=s.optimizer.state_dict(),
        schedule=s.schedule.state_dict(),
        progress=dataclasses.replace(progress),
        rng=rng,
        carried_state=None if state is None else [c.cpu() for c in state],
        grad_scaler=s.amp.state_dict() if s.amp.scaler is not None else None,
        run_id=s.run.run_id,
        averager=averager,
    )


def restore(s: Session, ck: Checkpoint) -> tuple[Progress, State | None]:
    """Continue exactly where a checkpoint left off: weights, optimiser, data, RNG.

    Returns the progress counters and this process's carried state. Two things deliberately do
    not carry over: the count of consecutive non-finite steps restarts at 0 (so that following
    the NaN guard's advice, resuming with a lower rate, gets a fresh allowance), and the
    optimiser's momentum and weight decay are the current config's (torch would restore the
    saved ones; check_resumable allows changing them).
    """
    misfits = ckpt.tensor_misfits(s.cfg, ck)  # fit() has checked; a direct call has not
    if misfits:
        raise CheckpointError(
            f"cannot resume: the checkpoint's tensors do not fit this model: "
            f"{'; '.join(misfits)}. Resume with the settings it was trained with, or start "
            "a new run.dir."
        )
    try:
        s.model.load_state_dict(ck.model)
        s.optimizer.load_state_dict(ck.optimizer)
        s.schedule.load_state_dict(ck.schedule)
        torch.set_rng_state(ck.rng["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:500]
        raise CheckpointError(
            f"cannot resume: the checkpoint's contents do not fit this model ({detail}). "
            "Resume with the settings it was trained with, or start a new run.dir."
        ) from None
    apply_config(s.optimizer, s.cfg.train)
    progress = dataclasses.replace(ck.progress, nonfinite_run=0)
    by_rank = ck.rng.get("by_rank")
    if by_rank is not None and len(by_rank) == s.ctx.world:
        torch.set_rng_state(by_rank[s.ctx.rank])
    s.amp.load_state_dict(ck.grad_scaler)
    if s.device.type == "cuda" and "cuda" in ck.rng:
        torch.cuda.set_rng_state(ck.rng["cuda"], s.device)
    carried = None
    if ck.carried_state is not None:
        # The checkpoint holds the full batch, dropout masks included (an older lmtrain's has
        # none: they are drawn at the next window); this process continues its own rows.
        saved = s.model.with_masks(tuple(c.to(s.device) for c in ck.carried_state))
        carried = s.ctx.my_rows(saved)
    flatten_rnn_weights(s.model)
    s.averager.restore(ck.averager)  # loads `model`'s raw weights while averaging
    return progress, carried


def too_many_nonfinite(s: Session, p: Progress, saved_step: int | None) -> TrainingStopped:
    """The error that ends a run after train.max_nonfinite_steps skipped steps in a row: what
    the checkpoints hold, and how to continue (resume if there is anything to resume)."""
    k = s.cfg.train.max_nonfinite_steps
    directory = s.run.path / ckpt.CHECKPOINT_DIR
    kept = (
        f"the checkpoints in {directory} are unchanged (newest from step {saved_step})"
        if saved_step is not None
        else f"no checkpoint was written in this session; {directory} is unchanged"
    )
    lr = f"train.lr={s.cfg.train.lr / 2:g}"
    advice = (
        f"continue with `lmtrain fit CONFIG {lr} --resume auto` (learning rate and "
        "clipping may change on resume, and the count of consecutive skipped steps "
        "restarts at 0)"
        if resume_mod.candidates(directory)
        # Nothing to resume: --resume auto would fail, so the advice is to start again.
        else f"start the run again with `lmtrain fit CONFIG {lr}` (no checkpoint was "
        "ever saved, so there is nothing to resume)"
    )
    return TrainingStopped(
        f"stopped at step {p.step}: {k} consecutive steps had a NaN or infinite loss or "
        f"gradient and were skipped (train.max_nonfinite_steps = {k}); {kept}. Lower "
        f"train.lr, set train.clip_grad_norm, or check the data, then {advice}.",
        exit_code=3,
    )
