"""The training loop: `Trainer.train_epoch` runs the steps of a run that setup.py built.

One window's path through `train_epoch`:

    batch (T, B) token ids -> Trainer.train_step -> Step (step.py): forward and loss, penalty,
    backward, clip, NaN guard, optimiser step -> the averager's update (averaging.py)
    -> Window.count (window.py): clock, counters, the window's sums -> log, evaluate and
    checkpoint when due

Everything that decides *what* is computed lives in the config and was put together by
setup.py; this file decides *when*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmtrain import checkpoint as ckpt
from lmtrain.checkpoint import Progress
from lmtrain.data import Batch
from lmtrain.errors import TrainingStopped
from lmtrain.evaluation import EvalResult, EvaluationInterrupted
from lmtrain.models import LanguageModel, State
from lmtrain.runtime.signals import StopRequest
from lmtrain.training.budget import TimeBudget
from lmtrain.training.optim import planned_steps
from lmtrain.training.session import Session
from lmtrain.training.state import payload, too_many_nonfinite
from lmtrain.training.step import StepResult
from lmtrain.training.validation import sample_text, validate
from lmtrain.training.window import StepLosses, Window

__all__ = ["Trainer"]


@dataclass
class Trainer:
    """A run in progress: what setup built, where the run is, and the loop's named steps."""

    session: Session
    progress: Progress
    state: State | None
    """The recurrent state carried from one window into the next (truncated BPTT)."""
    stop: StopRequest
    """Set by SIGINT/SIGTERM; polled after every step."""
    losses: StepLosses
    saved_step: int | None = None
    """Step of the newest checkpoint written by this process."""
    budget: TimeBudget = field(init=False)
    """train.max_minutes."""

    def __post_init__(self) -> None:
        t = self.session.cfg.train
        self.budget = TimeBudget(
            t.max_minutes, t.log_every, self.session.ctx, self.session.logger.message
        )

    @property
    def model(self) -> LanguageModel:
        return self.session.model

    def done(self) -> bool:
        p, s = self.progress, self.session
        return (
            p.out_of_time
            or p.step >= planned_steps(s.cfg.train, len(s.batches))
            or s.schedule.stalled()  # train.early_stopping
        )

    def train_step(self, batch: Batch) -> StepResult:
        """One optimiser step on one window; carries the state on to the next."""
        result = self.session.step(batch, self.state, self.progress.step)
        self.state = result.state
        self.session.averager.after_step()
        return result

    def train_epoch(self) -> None:
        """Steps until the end of the epoch or of training, evaluating when due."""
        s, p, t = self.session, self.progress, self.session.cfg.train
        if p.eval_pending:  # a signal cut this step's evaluation short before the checkpoint
            self.evaluate_and_save()
        window = Window(p, s.ctx, s.device)
        for batch in s.batches.batches(p.epoch, p.batch_in_epoch):
            result = self.train_step(batch)
            window.count(batch, result)
            if result.skipped:
                self.note_nonfinite()
            else:
                p.nonfinite_run = 0
            self.losses.add(p.step, result.nll, batch.num_tokens)
            s.logger.advance(tokens=p.tokens)
            self.budget.after_step(p)
            if p.step % t.log_every == 0 or self.done():
                point, seconds_per_step = window.close(s.optimizer.param_groups[0]["lr"])
                s.logger.train_point(point)
                self.losses.flush(s.ctx)
                self.budget.at_logging_point(p, seconds_per_step)
                window.start()
            if t.eval_every is not None and p.step % t.eval_every == 0:
                with window.paused():
                    self.evaluate_and_save()
            if self.stop.requested or self.done():
                break  # after a signal fit() saves here; the epoch is not over: no `else`
        else:
            p.epoch += 1
            p.batch_in_epoch = 0
            if t.eval_every is None:
                self.evaluate_and_save()
        self.losses.flush(s.ctx)

    def note_nonfinite(self) -> None:
        """Count a skipped step; stop the run after too many in a row."""
        p, s = self.progress, self.session
        p.nonfinite_steps += 1
        p.nonfinite_run += 1
        k = s.cfg.train.max_nonfinite_steps
        s.logger.message(
            f"step {p.step} | non-finite loss or gradient: step skipped, weights unchanged "
            f"({p.nonfinite_run} in a row, {p.nonfinite_steps} in total; the limit is {k})"
        )
        s.logger.scalars(p.step, {"train/nonfinite_steps": p.nonfinite_steps})
        if p.nonfinite_run >= k:
            raise too_many_nonfinite(s, p, self.saved_step)

    def evaluate(self) -> EvalResult | None:
        """The validation figure (of the averaged weights while NT-ASGD averages)."""
        if self.session.corpus.valid is None:
            return None
        with self.session.averager.evaluated():
            return validate(self.session, self.stop)

    def evaluate_and_save(self) -> None:
        s, p = self.session, self.progress
        if p.last_eval_step == p.step:
            return
        previous, p.last_eval_step = p.last_eval_step, p.step
        try:
            result = self.evaluate()
        except EvaluationInterrupted:
            # A signal cut the evaluation short: nothing of it is recorded (no validation loss,
            # no best.pt, no schedule or NT-ASGD decision). The checkpoint holds this step's
            # complete training state with the evaluation marked as due; a resumed run does it
            # first, so it continues exactly as if never stopped.
            p.last_eval_step, p.eval_pending = previous, True
            assert self.stop.requested
            s.logger.message(
                f"step {p.step} | {self.stop.name} during evaluation: evaluation abandoned, "
                "not recorded; a resumed run evaluates this step first"
            )
            self.stop_and_save()
        p.eval_pending = False
        best = False
        if result is not None:
            note = s.averager.on_validation(result.loss)
            if note is not None:
                s.logger.message(f"step {p.step} | {note}")
            p.last_val_loss = result.loss
            best = result.loss < p.best_val_loss
            if best:
                p.best_val_loss = result.loss
            if s.schedule.on_validation(best):
                s.logger.message(
                    f"step {p.step} | validation stalled: learning rate now "
                    f"{s.schedule.lr(p.step):.3g}"
                )
            if s.schedule.stalled():
                n = s.cfg.train.early_stopping
                s.logger.message(
                    f"step {p.step} | train.early_stopping={n}: no new best validation loss in "
                    f"{n} evaluations (best {p.best_val_loss:.4f}): stopping; best.pt holds "
                    "the best weights"
                )
            s.logger.evaluation(
                p.step, p.epoch - (p.batch_in_epoch == 0), p.train_seconds, result, best
            )
        if result is not None and not math.isfinite(result.loss):
            # Diverged weights: resuming from them would only diverge again, so they are never
            # kept; the NaN guard's advice then points at the newest checkpoint from before.
            s.logger.message(
                f"step {p.step} | no checkpoint written: the validation loss is {result.loss} "
                "(not finite), so these weights have diverged; any earlier checkpoint is kept"
            )
            return
        if s.cfg.run.sample_tokens > 0 and s.logger.writer is not None:
            text = sample_text(s, p.step, self.stop)
            if text is None:  # the loop saves and stops after this, as after any signal
                s.logger.message(f"step {p.step} | {self.stop.name} during sampling: abandoned")
            else:
                s.logger.text("sample", text, p.step)
        if p.nonfinite_run > 0 and not self.done():
            # Mid-way through a streak of skipped steps the run may be diverging: keep the
            # newest checkpoint from before the streak rather than replace it (and let keep_last
            # prune older ones). The weights are unchanged by skipped steps anyway.
            s.logger.message(
                f"step {p.step} | no checkpoint written: the last {p.nonfinite_run} step(s) "
                "were skipped as non-finite; the newest checkpoint is kept"
            )
            return
        self.save(best)

    def save(self, best: bool) -> None:
        s = self.session
        if s.run is None:
            return  # a session without a run directory (setup.build_session) keeps nothing
        ck = payload(s, self.progress, self.state)  # under torchrun a collective
        if not s.ctx.is_main:
            return  # only rank 0 writes files
        s.run.save_checkpoint(ck, best, s.cfg.run.keep_last)
        self.saved_step = self.progress.step

    def stop_and_save(self) -> None:
        """Checkpoint at this step boundary and leave with 128 + the signal number."""
        self.save(best=False)
        raise TrainingStopped(
            f"{self.stop.name} received: stopped after step {self.progress.step} and saved "
            f"{self.session.run.checkpoints / ckpt.LAST}; continue exactly from there with "
            "`lmtrain fit CONFIG --resume auto` (same config and run.dir).",
            exit_code=self.stop.exit_code,
        )
