"""`fit`: train the model a config describes, from start to results.json.

fit(cfg) -> setup.build (the run's Session) -> Trainer.train_epoch until done
         -> final evaluation and checkpoint -> results.json
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtrain.checkpoint import Progress
from lmtrain.config import Config
from lmtrain.errors import LmtrainError, TrainingStopped
from lmtrain.metrics import RunLogger, check_loggers
from lmtrain.models import State
from lmtrain.runtime import distributed
from lmtrain.runtime.signals import graceful_stop
from lmtrain.training.data import silent
from lmtrain.training.loop import Trainer
from lmtrain.training.session import Session
from lmtrain.training.setup import build, loggers
from lmtrain.training.window import LossLog, StepLosses


@dataclass
class FitResult:
    run_dir: Path
    progress: Progress
    train_seconds: float
    train_tokens: int
    is_main: bool = True
    """False on torchrun ranks other than 0, which report nothing."""
    results: dict[str, Any] = field(default_factory=dict)
    """What RUN/results.json holds (lmtrain.metrics.RunLogger.results)."""

    @property
    def tokens_per_sec(self) -> float:
        """This session's training tokens over its training seconds (evaluation and
        checkpoints excluded)."""
        return self.train_tokens / max(self.train_seconds, 1e-9)


def fit(
    cfg: Config,
    resume: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
    on_log: LossLog | None = None,
) -> FitResult:
    """Train the model described by `cfg`, as one process or as one rank of a torchrun job.

    Lines go to `echo`: by default print, or nothing at all when `quiet`. `quiet` drops the
    progress bar and progress lines; an `echo` given here still gets every other line.
    `on_log` receives each step's training loss (the global batch's mean), a logging interval
    at a time; see lmtrain.training.window.LossLog.
    """
    if echo is None:
        echo = silent if quiet else print
    check_loggers(loggers(cfg))  # a missing optional package fails before anything is written
    ctx = distributed.init(cfg.train.device, cfg.train.dist_timeout)
    try:
        # The stack holds the run directory (and its lock) until the run is over, however it ends.
        with distributed.collective_errors(ctx), contextlib.ExitStack() as stack:
            session, progress, carried = build(cfg, resume, quiet, echo, ctx, stack)
            return _train(session, progress, carried, on_log)
    finally:
        distributed.close(ctx)


def _train(
    session: Session, p: Progress, carried: State | None, on_log: LossLog | None
) -> FitResult:
    session.model.train()
    seconds0, tokens0 = p.train_seconds, p.tokens
    status: str | None = None  # how the session ended; None: by an error, nothing to report
    ended = False
    try:
        with graceful_stop() as stop:
            trainer = Trainer(session, p, carried, stop, StepLosses(on_log))
            while not trainer.done() and p.epoch < session.cfg.train.epochs:
                trainer.train_epoch()
                if stop.requested and not trainer.done():
                    trainer.stop_and_save()
            trainer.evaluate_and_save()  # no-op when the last step was just evaluated
        status = "time_limit" if p.out_of_time else "completed"
        ended = True
    except TrainingStopped as e:
        # A signal (exit 130 / 143) left a checkpoint to continue from; exit 3 gave up.
        status = "nonfinite" if e.exit_code == 3 else "stopped"
        raise
    finally:
        results = _report(session.logger, p, status, failing=not ended)
    # Training time only (Progress.train_seconds leaves out evaluation and checkpoints).
    return FitResult(
        session.run.path, p, p.train_seconds - seconds0, p.tokens - tokens0,
        is_main=session.ctx.is_main, results=results,
    )  # fmt: skip


def _report(logger: RunLogger, p: Progress, status: str | None, failing: bool) -> dict[str, Any]:
    """Write results.json (when the outcome is known) and close the logger. While an error is on
    its way out, a second one met here is dropped so that the first reaches the user."""
    results: dict[str, Any] = {}
    try:
        if status is not None:
            results = logger.results(status, p.step, p.tokens, p.train_seconds, p.nonfinite_steps)
            logger.finish(results)
    except LmtrainError:
        logger.close(failed=True)
        if failing:
            return results
        raise
    logger.close(failed=failing)
    return results
