"""`train.max_minutes`: when a run's time budget ends, to within one step.

A run stops at the first step whose training time (evaluation and checkpoints excluded) reaches
the budget. One process reads its own clock after every step. Under torchrun a rank cannot stop
on its own clock (the others would wait for it at the next all-reduce), so at each logging
point, where the ranks synchronise anyway, they plan the last step together from all-reduced
means: the same numbers on every rank, so the same step, with no extra synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from lmtrain.checkpoint import Progress
from lmtrain.runtime.distributed import Context


@dataclass
class TimeBudget:
    minutes: float | None
    """train.max_minutes; None = no budget."""
    log_every: int
    ctx: Context
    message: Callable[[str], None]
    planned_step: int | None = None
    """The step at which the budget runs out, once that falls before the next logging point."""

    def at_logging_point(self, p: Progress, seconds_per_step: float) -> None:
        """Under torchrun: stop if the budget is spent, or plan the last step if it ends before
        the next logging point (at the last window's pace; a plan can end the run a little
        before the budget when the pace quickens, never a logging interval after it)."""
        if self.minutes is None or p.out_of_time or self.ctx.world == 1:
            return  # one process reads its own clock after every step (after_step)
        seconds, pace = (
            v / self.ctx.world for v in self.ctx.sum([p.train_seconds, seconds_per_step])
        )
        steps_left = math.ceil((self.minutes * 60 - seconds) / max(pace, 1e-9))
        if steps_left <= 0:
            self.stop(p)
        elif steps_left < self.log_every:
            self.planned_step = p.step + steps_left

    def after_step(self, p: Progress) -> None:
        """Stop at the planned step, or (one process: its clock decides alone) as soon as the
        budget is spent."""
        if self.minutes is None or p.out_of_time:
            return
        planned = self.planned_step is not None and p.step >= self.planned_step
        if planned or (self.ctx.world == 1 and p.train_seconds >= self.minutes * 60):
            self.stop(p)

    def stop(self, p: Progress) -> None:
        p.out_of_time = True
        self.message(f"step {p.step} | train.max_minutes={self.minutes:g} reached: stopping")
