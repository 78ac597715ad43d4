"""What the loop counts between two logging points: the training clock, the step and token
counters, the window's loss sums (`Window`), and each step's loss for fit's `on_log`
(`StepLosses`). The loop calls `count` after every step and `close` at a logging point."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from lmtrain.checkpoint import Progress
from lmtrain.data import Batch
from lmtrain.metrics import TrainPoint
from lmtrain.runtime import distributed
from lmtrain.training.step import StepResult

LossLog = Callable[[dict[int, float]], None]
"""fit's `on_log` hook: {step: mean training loss over the global batch} for the steps since
the previous call, called at each logging point (train.log_every) and at the end of an epoch."""


@dataclass
class Window:
    """The logging window (train.log_every steps) and the training clock.

    The clock runs from step to step; evaluation, checkpoints and logging are left out
    (`close` and `paused` stop it), so Progress.train_seconds and tokens/s count training only.
    The sums stay on the device until `close`, the loop's one host synchronisation.
    """

    p: Progress
    ctx: distributed.Context
    device: torch.device
    nll: torch.Tensor = field(init=False)
    tokens: int = 0
    """Tokens of the steps not skipped (this process), the denominator of the window's loss."""
    grad_norm: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    """The last step's; grad_norm_max is the window's largest among steps not skipped."""
    grad_norm_max: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.nll = torch.zeros((), device=self.device, dtype=torch.float64)
        self.grad_norm_max = torch.zeros((), device=self.device)
        self.start()

    def start(self) -> None:
        """A new window from here: the clock runs again."""
        self.seconds0, self.tokens0, self.step0 = self.p.train_seconds, self.p.tokens, self.p.step
        self.clock = time.perf_counter()

    def count(self, batch: Batch, result: StepResult) -> None:
        """One step done: its time, the step and token counters, and (unless skipped) its loss."""
        p, now = self.p, time.perf_counter()
        p.train_seconds += now - self.clock
        self.clock = now
        p.step += 1
        p.batch_in_epoch += 1
        g = batch.global_tokens
        p.tokens += batch.num_tokens * self.ctx.world if g is None else g
        self.grad_norm = result.grad_norm
        if not result.skipped:
            self.nll += result.nll
            self.tokens += batch.num_tokens
            self.grad_norm_max = torch.maximum(self.grad_norm_max, result.grad_norm)

    def close(self, lr: float) -> tuple[TrainPoint, float]:
        """The window's figures (summed over ranks, token-weighted) and its seconds per step.
        The clock stops here until `start`."""
        p = self.p
        total_nll, total_tokens = self.ctx.sum([self.nll, self.tokens])
        # Waiting for the device's queue to drain is training time; what follows is not.
        p.train_seconds += time.perf_counter() - self.clock
        seconds = p.train_seconds - self.seconds0
        point = TrainPoint(
            step=p.step,
            epoch=p.epoch,
            # NaN when every step of the window was skipped: there is no loss.
            loss=total_nll / total_tokens if total_tokens else math.nan,
            lr=lr,
            grad_norm=float(self.grad_norm),
            grad_norm_max=float(self.grad_norm_max) if total_tokens else math.nan,
            tokens_per_sec=(p.tokens - self.tokens0) / max(seconds, 1e-9),
            tokens=p.tokens,
            train_seconds=p.train_seconds,
        )
        self.nll.zero_()
        self.grad_norm_max.zero_()
        self.tokens = 0
        return point, seconds / max(p.step - self.step0, 1)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Evaluation and checkpoints are not training time."""
        if self.device.type == "cuda":
            # Queued training work finishes on the training clock, not the evaluation's.
            torch.cuda.synchronize(self.device)
            self.p.train_seconds += time.perf_counter() - self.clock
        yield
        self.clock = time.perf_counter()


@dataclass
class StepLosses:
    """Each step's loss for `on_log`, kept on the device and read once per logging interval
    (under torchrun summed over ranks in the same single all-reduce)."""

    on_log: LossLog | None
    pending: list[tuple[int, torch.Tensor, int]] = field(default_factory=list)

    def add(self, step: int, nll: torch.Tensor, tokens: int) -> None:
        if self.on_log is not None:
            self.pending.append((step, nll, tokens))

    def flush(self, ctx: distributed.Context) -> None:
        if not self.pending or self.on_log is None:
            return
        nlls = [float(n) for _, n, _ in self.pending]
        tokens = [float(k) for _, _, k in self.pending]
        summed = ctx.sum(nlls + tokens)  # each step's loss over the global batch
        nlls, tokens = summed[: len(nlls)], summed[len(nlls) :]
        self.on_log({s: n / k for (s, _, _), n, k in zip(self.pending, nlls, tokens, strict=True)})
        self.pending.clear()
