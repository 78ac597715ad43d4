"""The optimiser and its learning rate: `build_optimizer`, `LRSchedule`, `planned_steps`.

`train.lr` goes from the config to the optimiser twice: `build_optimizer` gives it to torch as
the initial rate, and before every step `LRSchedule.lr(step)` (warm-up, then constant, cosine or
plateau) is written into each parameter group, times the window's variable-BPTT scale
(lmtrain/training/step.py). Adding an optimiser: a row in OPTIMIZERS (lmtrain/training/config.py),
which names the callable that builds it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
from torch import nn

from lmtrain.training.config import TrainConfig


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of `cfg.optimizer`'s row of OPTIMIZERS over the trained parameters."""
    spec = cfg.optimizer_spec  # the section admits only the table's names
    module, _, name = spec.build.partition(":")
    build = getattr(importlib.import_module(module), name)
    params = [p for p in model.parameters() if p.requires_grad]
    return build(params, **spec.options(cfg))


def apply_config(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Weight decay and momentum from the current config, not the checkpoint's (a resumed run
    may change them; lmtrain.checkpoint.check_resumable allows it)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group and cfg.optimizer_spec.momentum:
            group["momentum"] = cfg.momentum


class LRSchedule:
    """Learning rate per step: optional linear warm-up, then constant, cosine or plateau; and
    the count of evaluations without a new best, for train.early_stopping.

    Written here rather than with torch.optim.lr_scheduler so that one object works for every
    optimiser, the plateau rule composes with warm-up, and its whole state is three numbers.

    The cosine decay runs over the planned steps and, with train.schedule_span `auto` and
    train.max_minutes set, over the time budget too: its progress is the larger of the two
    fractions, so the rate has decayed when the run ends, whichever limit ends it and however
    fast the machine. `train_seconds` reads the run's training clock (Progress.train_seconds,
    which checkpoints hold, so a resumed run continues on the same curve).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        total_steps: int,
        train_seconds: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.cfg = cfg
        self.total_steps = max(total_steps, 1)
        self.train_seconds = train_seconds
        self.scale = 1.0  # plateau multiplier
        self.bad_evals = 0
        self.evals_without_best = 0

    def lr(self, step: int) -> float:
        """Learning rate for optimiser step number `step` (0-based)."""
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / (c.warmup_steps + 1)
        if c.schedule == "cosine":
            progress = self.progress(step)
            return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * progress))
        if c.schedule == "plateau":
            return max(c.lr * self.scale, c.min_lr)
        return c.lr

    def progress(self, step: int) -> float:
        """How far the cosine decay is, in [0, 1]: the larger of the share of the planned steps
        after warm-up and (schedule_span `auto`) the share of train.max_minutes used."""
        c = self.cfg
        span = max(self.total_steps - c.warmup_steps, 1)
        done = (step - c.warmup_steps) / span
        if c.schedule_span == "auto" and c.max_minutes is not None:
            # Counted from the start, warm-up included: the budget is the whole run's.
            done = max(done, self.train_seconds() / (c.max_minutes * 60))
        return min(max(done, 0.0), 1.0)

    def on_validation(self, improved: bool) -> bool:
        """Count a validation result; update the plateau rule. True when the rate was just cut."""
        self.evals_without_best = 0 if improved else self.evals_without_best + 1
        if self.cfg.schedule != "plateau":
            return False
        if improved:
            self.bad_evals = 0
            return False
        self.bad_evals += 1
        if self.bad_evals > self.cfg.plateau_patience:
            self.scale *= self.cfg.plateau_factor
            self.bad_evals = 0
            return True
        return False

    def stalled(self) -> bool:
        """True once train.early_stopping evaluations in a row brought no new best."""
        patience = self.cfg.early_stopping
        return patience is not None and self.evals_without_best >= patience

    def state_dict(self) -> dict[str, float]:
        return {
            "scale": self.scale,
            "bad_evals": self.bad_evals,
            "evals_without_best": self.evals_without_best,
        }

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.scale = float(d["scale"])
        self.bad_evals = int(d["bad_evals"])
        # Absent from checkpoints written before train.early_stopping existed: count from 0.
        self.evals_without_best = int(d.get("evals_without_best", 0))


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Total optimiser steps: all epochs, or max_steps if that comes first."""
    total = steps_per_epoch * cfg.epochs
    return min(total, cfg.max_steps or total)
