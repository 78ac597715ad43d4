"""fit(): the training loop, truncated BPTT, clipping, schedule, evaluation and checkpoints.

Read top to bottom: `fit` prepares the run (directory, data, model, optimiser, maybe a resumed
checkpoint), then `train_epoch` runs optimiser steps and calls `evaluate_and_save` at each
evaluation point. Everything that decides *what* is computed lives in the config; this file only
decides *when*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtrain import checkpoint as ckpt
from lmtrain.checkpoint import Checkpoint, Progress
from lmtrain.config import Config, TrainConfig, check_resources
from lmtrain.data import Batch, SentenceBatches, StreamBatches, Vocab, read_text
from lmtrain.data.corpus import expand_vars
from lmtrain.data.prepare import prepare_corpus
from lmtrain.data.sentences import split_sequences
from lmtrain.errors import CheckpointError, DataError, LmtrainError, TrainingStopped
from lmtrain.evaluation.bpb import text_utf8_bytes
from lmtrain.evaluation.scoring import evaluate_sentences
from lmtrain.evaluation.stream import (
    EvalResult,
    EvaluationInterrupted,
    evaluate_ids,
    unigram_baseline,
)
from lmtrain.metrics import RunLogger, TrainPoint, check_loggers
from lmtrain.models import LanguageModel, State, build_model, detach_state, select_rows
from lmtrain.rundir import RunDirectory, open_run
from lmtrain.rundir import resume as resume_mod
from lmtrain.runtime import distributed
from lmtrain.runtime.device import resolve_device
from lmtrain.runtime.precision import Amp, flatten_rnn_weights
from lmtrain.runtime.signals import StopRequest, graceful_stop
from lmtrain.runtime.threads import configure_threads
from lmtrain.sample import SampleOptions, generate

# ---------------------------------------------------------------------------------------------
# Setup helpers


@dataclass
class Corpus:
    vocab: Vocab
    train: torch.Tensor
    """(N,) token ids: int64 when tokenised in memory, or the uint8 / uint16 / uint32 view of a
    prepared file (data.cache_dir); batching converts a window at a time."""
    valid: torch.Tensor | None
    valid_oov: int = 0
    valid_bytes: int | None = None
    """UTF-8 bytes of the validation text, for bits per byte; None without validation."""


def prepare_data(
    cfg: Config, vocab: Vocab | None = None, echo: Callable[[str], None] | None = None
) -> Corpus:
    """Read and encode the splits; build the vocabulary from the training split only.

    With data.cache_dir the splits go through the prepared-file cache (lmtrain/data/prepare.py):
    mapped when prepared before, else tokenised into it; `echo` hears why a split is tokenised.
    """
    d = cfg.data
    if d.cache_dir is not None:
        cache_dir = Path(expand_vars(d.cache_dir, "data.cache_dir"))
        pc = prepare_corpus(d, cache_dir, vocab, echo or _silent)
        if pc.valid is None:
            return Corpus(pc.vocab, pc.train.ids, None)
        return Corpus(pc.vocab, pc.train.ids, pc.valid.ids, pc.valid.oov, pc.valid.text_bytes)
    text = read_text(d.train, "train", d.decode_errors)
    if vocab is None:
        vocab = Vocab.build(text, d.tokenizer, d.min_freq, d.max_size)
    train = vocab.encode(text).ids
    del text
    valid, oov, valid_bytes = None, 0, None
    if d.valid is not None:
        text = read_text(d.valid, "valid", d.decode_errors)
        valid_bytes = text_utf8_bytes(text)
        enc = vocab.encode(text)
        del text
        if enc.ids.numel() < 2:
            raise DataError(f"{d.valid}: validation text needs at least 2 tokens")
        valid, oov = enc.ids, enc.oov
    return Corpus(vocab, train, valid, oov, valid_bytes)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "ntasgd":
        # Plain SGD; NTASGDTrainer (lmtrain/training/ntasgd.py) adds the averaging once validation stalls.
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise AssertionError(f"unhandled optimizer {cfg.optimizer}")  # the schema forbids this


class LRSchedule:
    """Learning rate per step: optional linear warm-up, then constant, cosine or plateau.

    Written here rather than with torch.optim.lr_scheduler so that one object works for every
    optimiser, the plateau rule composes with warm-up, and its whole state is two numbers.
    """

    def __init__(self, cfg: TrainConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.total_steps = max(total_steps, 1)
        self.scale = 1.0  # plateau multiplier
        self.bad_evals = 0

    def lr(self, step: int) -> float:
        """Learning rate for optimiser step number `step` (0-based)."""
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / (c.warmup_steps + 1)
        if c.schedule == "cosine":
            span = max(self.total_steps - c.warmup_steps, 1)
            progress = min((step - c.warmup_steps) / span, 1.0)
            return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * progress))
        if c.schedule == "plateau":
            return max(c.lr * self.scale, c.min_lr)
        return c.lr

    def on_validation(self, improved: bool) -> bool:
        """Update the plateau rule; True when the rate was just cut."""
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

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "bad_evals": self.bad_evals}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.scale = float(d["scale"])
        self.bad_evals = int(d["bad_evals"])


@dataclass
class FitResult:
    run_dir: Path
    progress: Progress
    train_seconds: float
    train_tokens: int
    losses: dict[int, float] = field(default_factory=dict)
    """Per-step mean training loss by step number (filled when record_losses is on)."""
    is_main: bool = True
    """False on torchrun ranks other than 0, which report nothing."""
    results: dict[str, Any] = field(default_factory=dict)
    """What RUN/results.json holds (lmtrain.metrics.RunLogger.results)."""

    @property
    def tokens_per_sec(self) -> float:
        """This session's training tokens over its training seconds (evaluation and
        checkpoints excluded)."""
        return self.train_tokens / max(self.train_seconds, 1e-9)


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Total optimiser steps: all epochs, or max_steps if that comes first."""
    total = steps_per_epoch * cfg.epochs
    return min(total, cfg.max_steps or total)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class Trainer:
    """Everything one training run holds; its methods are the named steps of the loop."""

    cfg: Config
    run: RunDirectory
    """run.dir, owned (locked) by this process for the run; see rundir.py."""
    device: torch.device
    corpus: Corpus
    model: LanguageModel
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    batches: StreamBatches | SentenceBatches
    logger: RunLogger
    progress: Progress
    state: State | None = None
    record_losses: bool = False
    losses: dict[int, float] = field(default_factory=dict)
    _pending: list[tuple[int, torch.Tensor, int]] = field(default_factory=list)
    amp: Amp | None = None
    """Mixed precision (see precision.py); None = fp32."""
    dist: distributed.DistContext | None = None
    """This process's place in a torchrun job; None = one process."""
    forward_loss: nn.Module | None = None
    """model + loss in one forward (DDP-wrapped under torchrun); see distributed.wrap."""
    stop: StopRequest | None = None
    """Set by SIGINT/SIGTERM; polled after every step."""
    skipped: bool = False
    """Whether the last train_step was skipped for a non-finite loss or gradient."""
    saved_step: int | None = None
    """Step of the newest checkpoint written by this process."""

    def __post_init__(self) -> None:
        # Built once here, not per step: fit() passes both; a bare Trainer gets the defaults.
        if self.amp is None:
            self.amp = Amp(self.device)
        if self.forward_loss is None:
            self.forward_loss = distributed.wrap(self.model, None)

    def done(self) -> bool:
        p = self.progress
        return p.out_of_time or p.step >= planned_steps(self.cfg.train, len(self.batches))

    def check_time_budget(self) -> None:
        """Mark the run out of time once train.max_minutes of training have passed.

        Checked at logging points only, and under torchrun decided for all ranks at once (any
        rank over budget stops every rank), so that no process waits for one that has stopped.
        """
        budget = self.cfg.train.max_minutes
        if budget is None:
            return
        spent = self.progress.train_seconds >= budget * 60
        if self.dist is not None:
            spent = self.dist.sum([float(spent)])[0] > 0
        if spent:
            self.progress.out_of_time = True
            self.logger.message(
                f"step {self.progress.step} | train.max_minutes={budget:g} reached: stopping"
            )

    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns (summed NLL, grad norm before clipping) on the device."""
        t = self.cfg.train
        model = self.model
        inputs = batch.inputs.to(self.device, non_blocking=True)
        targets = batch.targets.to(self.device, non_blocking=True)
        if batch.carry is None or self.state is None:
            state = model.init_state(inputs.size(1), self.device)
        else:
            state = select_rows(self.state, batch.carry)
        previous_state = self.state
        amp, forward_loss = self.amp, self.forward_loss
        assert amp is not None and forward_loss is not None  # set in __post_init__
        with amp.autocast():
            nll, new_state, hidden = forward_loss(inputs, targets, state, batch.lengths)
        # Truncated BPTT: carry the state's value into the next window, not its graph.
        # (A placeholder's state is nobody's: the rank's next chunk starts fresh.)
        self.state = None if batch.placeholder else detach_state(new_state)
        # Mean NLL per predicted token. DDP averages gradients over ranks, so rank r's loss is
        # nll_r * world / global tokens, and the average is the gradient of the global mean.
        # Stream shards hold equal counts, where that is nll_r / num_tokens_r.
        share = 1.0  # this rank's part of the global batch's tokens, times world
        if batch.global_tokens is None:
            loss = nll / batch.num_tokens
        else:
            world = 1 if self.dist is None else self.dist.world
            loss = nll * (world / batch.global_tokens)
            share = batch.num_tokens * world / batch.global_tokens
        if t.ar_alpha > 0 or t.tar_beta > 0:
            from lmtrain.training.ntasgd import activation_penalty

            assert model.last_output is not None
            mask = targets != 0  # (T, B) real positions
            # Each rank's mean penalty, weighted by its token share: AR's global mean exactly;
            # TAR's (a mean over pairs of positions) up to each rank's pairs-per-token.
            loss = loss + share * activation_penalty(
                hidden, model.last_output, mask, t.ar_alpha, t.tar_beta
            )
        # Variable-length BPTT: a window of length L steps with lr * L / bptt (AWD-LSTM).
        lr_scale = inputs.size(0) / t.bptt if t.variable_bptt else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(self.progress.step) * lr_scale
        self.optimizer.zero_grad(set_to_none=True)
        amp.backward(loss)
        amp.unscale(self.optimizer)  # fp16: clip and measure the true gradients
        # Clipping keeps one exploding-gradient step (common in RNNs) from wrecking the weights;
        # the returned norm is measured before clipping, which is what is worth logging.
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm or math.inf)
        if t.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(params, t.clip_grad_value)
        # A NaN/inf loss or gradient would poison every weight (and Adam's moments) for good, so
        # such a step is skipped. Reading the flag is free on CPU; on a GPU it is one
        # device-to-host sync per step (a few microseconds plus draining the queue), the price of
        # never applying a bad update. With fp16, overflowing gradients are the GradScaler's
        # business (it skips the step and lowers the scale), so only the loss is checked here.
        finite = torch.isfinite(nll)
        if amp.scaler is None:
            finite = finite & torch.isfinite(grad_norm)
        self.skipped = not bool(finite)
        if self.skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.state = previous_state  # the new state may be non-finite too
            amp.skip()
        else:
            amp.step(self.optimizer)
        return nll.detach(), grad_norm.detach()

    def train_epoch(self) -> None:
        """Steps until the end of the epoch or of training, evaluating when due."""
        t = self.cfg.train
        p = self.progress
        if p.eval_pending:  # a signal cut this step's evaluation short before the checkpoint
            self.evaluate_and_save()
        window_nll = torch.zeros((), device=self.device, dtype=torch.float64)
        window_tokens = 0
        # Throughput counts training time only: the window's tokens over the training seconds
        # it took (Progress.train_seconds leaves out evaluation, checkpoints and logging).
        window_seconds0, window_tokens0 = p.train_seconds, p.tokens
        grad_norm = torch.zeros(())
        grad_norm_max = torch.zeros((), device=self.device)
        clock = time.perf_counter()
        for batch in self.batches.batches(p.epoch, p.batch_in_epoch):
            nll, grad_norm = self.train_step(batch)
            now = time.perf_counter()
            p.train_seconds += now - clock
            clock = now
            p.step += 1
            p.batch_in_epoch += 1
            if batch.global_tokens is not None:
                p.tokens += batch.global_tokens
            else:
                p.tokens += batch.num_tokens * (1 if self.dist is None else self.dist.world)
            if self.skipped:
                self.note_nonfinite()
            else:
                p.nonfinite_run = 0
                window_nll += nll
                window_tokens += batch.num_tokens
                grad_norm_max = torch.maximum(grad_norm_max, grad_norm)
            if self.record_losses:
                self._pending.append((p.step, nll, batch.num_tokens))
            self.logger.advance(tokens=p.tokens)
            if p.step % t.log_every == 0 or self.done():
                # The only host synchronisation in the loop: once per logging interval.
                total_nll, total_tokens = float(window_nll), window_tokens
                if self.dist is not None:  # token-weighted over ranks
                    total_nll, total_tokens = self.dist.sum([window_nll, window_tokens])
                # Waiting for the device's queue to drain is training time; what follows is not.
                p.train_seconds += time.perf_counter() - clock
                seconds = p.train_seconds - window_seconds0
                self.logger.train_point(
                    TrainPoint(
                        step=p.step,
                        epoch=p.epoch,
                        # NaN when every step of the window was skipped: there is no loss.
                        loss=total_nll / total_tokens if total_tokens else math.nan,
                        lr=self.optimizer.param_groups[0]["lr"],
                        grad_norm=float(grad_norm),
                        grad_norm_max=float(grad_norm_max) if total_tokens else math.nan,
                        tokens_per_sec=(p.tokens - window_tokens0) / max(seconds, 1e-9),
                        tokens=p.tokens,
                        train_seconds=p.train_seconds,
                    )
                )
                self._flush_losses()
                window_nll.zero_()
                grad_norm_max.zero_()
                window_tokens = 0
                window_seconds0, window_tokens0 = p.train_seconds, p.tokens
                self.check_time_budget()
                clock = time.perf_counter()
            if t.eval_every is not None and p.step % t.eval_every == 0:
                if self.device.type == "cuda":
                    # Queued training work finishes on the training clock, not the evaluation's.
                    torch.cuda.synchronize(self.device)
                    p.train_seconds += time.perf_counter() - clock
                self.evaluate_and_save()
                clock = time.perf_counter()  # evaluation time is not training time
            if self.stop is not None and self.stop.requested:
                break  # fit() saves here; the epoch is not over, so the else below must not run
            if self.done():
                break
        else:
            p.epoch += 1
            p.batch_in_epoch = 0
            if t.eval_every is None:
                self.evaluate_and_save()
        self._flush_losses()

    def note_nonfinite(self) -> None:
        """Count a skipped step; stop the run after too many in a row."""
        p = self.progress
        p.nonfinite_steps += 1
        p.nonfinite_run += 1
        k = self.cfg.train.max_nonfinite_steps
        self.logger.message(
            f"step {p.step} | non-finite loss or gradient: step skipped, weights unchanged "
            f"({p.nonfinite_run} in a row, {p.nonfinite_steps} in total; the limit is {k})"
        )
        self.logger.scalars(p.step, {"train/nonfinite_steps": p.nonfinite_steps})
        if p.nonfinite_run >= k:
            directory = self.run.path / ckpt.CHECKPOINT_DIR
            kept = (
                f"the checkpoints in {directory} are unchanged (newest from step {self.saved_step})"
                if self.saved_step is not None
                else f"no checkpoint was written in this session; {directory} is unchanged"
            )
            lr = f"train.lr={self.cfg.train.lr / 2:g}"
            advice = (
                f"continue with `lmtrain fit CONFIG {lr} --resume auto` (learning rate and "
                "clipping may change on resume, and the count of consecutive skipped steps "
                "restarts at 0)"
                if resume_mod.candidates(directory)
                # Nothing to resume: --resume auto would fail, so the advice is to start again.
                else f"start the run again with `lmtrain fit CONFIG {lr}` (no checkpoint was "
                "ever saved, so there is nothing to resume)"
            )
            raise TrainingStopped(
                f"stopped at step {p.step}: {k} consecutive steps had a NaN or infinite loss or "
                f"gradient and were skipped (train.max_nonfinite_steps = {k}); {kept}. Lower "
                f"train.lr, set train.clip_grad_norm, or check the data, then {advice}.",
                exit_code=3,
            )

    def _flush_losses(self) -> None:
        if not self._pending:
            return
        nlls = [float(n) for _, n, _ in self._pending]
        tokens = [float(k) for _, _, k in self._pending]
        if self.dist is not None:  # each step's loss over the global batch
            summed = self.dist.sum(nlls + tokens)
            nlls, tokens = summed[: len(nlls)], summed[len(nlls) :]
        for (step, _, _), n, k in zip(self._pending, nlls, tokens, strict=True):
            self.losses[step] = n / k
        self._pending.clear()

    @functools.cached_property
    def valid_sequences(self) -> list[torch.Tensor]:
        """The validation split as sentences-mode sequences, split once per run.

        Whole sequences, never cut to data.max_length: the figure measures the text.
        """
        assert self.corpus.valid is not None
        return split_sequences(self.corpus.valid, self.corpus.vocab, self.cfg.data.documents)

    def evaluate(self) -> EvalResult | None:
        if self.corpus.valid is None:
            return None

        stop = self.stop  # polled between windows, so that a signal need not wait for the end

        def run() -> EvalResult | int:
            try:
                if self.cfg.data.mode == "sentences":
                    return evaluate_sentences(
                        self.model, self.valid_sequences, self.corpus.vocab.kind,
                        self.corpus.valid_oov, self.cfg.train.batch_size, stop=stop,
                        text_tokens=self.corpus.valid.numel(), text_bytes=self.corpus.valid_bytes,
                    )  # fmt: skip
                return evaluate_ids(
                    self.model, self.corpus.valid, self.corpus.vocab.kind, self.corpus.valid_oov,
                    stop=stop, text_bytes=self.corpus.valid_bytes,
                )  # fmt: skip
            except EvaluationInterrupted:
                assert stop is not None and stop.signum is not None
                return stop.signum  # a plain value, so that every rank learns of it

        # Under torchrun: the exact figure, computed once on rank 0 and shared.
        result = run() if self.dist is None else self.dist.on_main(run)
        if isinstance(result, int):
            if self.stop is not None and not self.stop.requested:
                self.stop.request(result)  # rank 0 was signalled: every rank stops with it
            raise EvaluationInterrupted
        return result

    def evaluate_and_save(self) -> None:
        p = self.progress
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
            self.model.train()
            assert self.stop is not None and self.stop.requested
            self.logger.message(
                f"step {p.step} | {self.stop.name} during evaluation: evaluation abandoned, "
                "not recorded; a resumed run evaluates this step first"
            )
            _stop_and_save(self, self.stop)
        p.eval_pending = False
        best = False
        if result is not None:
            p.last_val_loss = result.loss
            best = result.loss < p.best_val_loss
            if best:
                p.best_val_loss = result.loss
            if self.schedule.on_validation(best):
                self.logger.message(
                    f"step {p.step} | validation stalled: learning rate now "
                    f"{self.schedule.lr(p.step):.3g}"
                )
            self.logger.evaluation(
                p.step, p.epoch - (p.batch_in_epoch == 0), p.train_seconds, result, best
            )
        self.log_sample()
        if p.nonfinite_run > 0 and not self.done():
            # Mid-way through a streak of skipped steps the run may be diverging: keep the
            # newest checkpoint from before the streak rather than replace it (and let keep_last
            # prune older ones). The weights are unchanged by skipped steps anyway.
            self.logger.message(
                f"step {p.step} | no checkpoint written: the last {p.nonfinite_run} step(s) "
                "were skipped as non-finite; the newest checkpoint is kept"
            )
            return
        self.save(best)

    def log_sample(self) -> None:
        r = self.cfg.run
        if r.sample_tokens == 0 or self.logger.writer is None:
            return
        try:
            text = generate(
                self.model,
                self.corpus.vocab,
                r.sample_prompt,
                SampleOptions(max_tokens=r.sample_tokens, seed=self.cfg.train.seed),
            ).texts[0]
        except LmtrainError as e:
            text = f"(no sample: {e})"
        self.model.train()
        self.logger.text("sample", text, self.progress.step)

    def payload(self) -> Checkpoint:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        state = self.state
        if self.dist is not None:  # collectives: every rank builds the payload
            rng["by_rank"] = self.dist.gather_objects(torch.get_rng_state())
            state = self.dist.gather_rows(state)
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        scaler = self.amp is not None and self.amp.scaler is not None
        return Checkpoint(
            config=self.cfg.to_dict(),
            vocab=self.corpus.vocab.to_dict(),
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            schedule=self.schedule.state_dict(),
            progress=dataclasses.replace(self.progress),
            rng=rng,
            carried_state=None if state is None else [s.cpu() for s in state],
            grad_scaler=self.amp.state_dict() if scaler and self.amp is not None else None,
            run_id=self.run.run_id,
        )

    def save(self, best: bool) -> None:
        payload = self.payload()
        if self.dist is not None and not self.dist.is_main:
            return  # only rank 0 writes files
        self.run.save_checkpoint(payload, best, self.cfg.run.keep_last)
        self.saved_step = self.progress.step

    def restore(self, ck: Checkpoint) -> None:
        """Continue exactly where a checkpoint left off: weights, optimiser, data, RNG.

        Two things deliberately do not carry over: the count of consecutive non-finite steps
        restarts at 0 (so that following the NaN guard's advice, resuming with a lower rate,
        gets a fresh allowance), and the optimiser's momentum and weight decay are the current
        config's (torch would restore the saved ones; check_resumable allows changing them).
        """
        misfits = ckpt.tensor_misfits(self.cfg, ck)  # fit() has checked; a direct call has not
        if misfits:
            raise CheckpointError(
                f"cannot resume: the checkpoint's tensors do not fit this model: "
                f"{'; '.join(misfits)}. Resume with the settings it was trained with, or start "
                "a new run.dir."
            )
        try:
            self.model.load_state_dict(ck.model)
            self.optimizer.load_state_dict(ck.optimizer)
            self.schedule.load_state_dict(ck.schedule)
            torch.set_rng_state(ck.rng["torch"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            detail = " ".join(str(e).split())[:500]
            raise CheckpointError(
                f"cannot resume: the checkpoint's contents do not fit this model ({detail}). "
                "Resume with the settings it was trained with, or start a new run.dir."
            ) from None
        t = self.cfg.train
        for group in self.optimizer.param_groups:
            group["weight_decay"] = t.weight_decay
            if "momentum" in group and t.optimizer in ("sgd", "rmsprop"):
                group["momentum"] = t.momentum
        self.progress = dataclasses.replace(ck.progress, nonfinite_run=0)
        by_rank = ck.rng.get("by_rank")
        if self.dist is not None and by_rank is not None and len(by_rank) == self.dist.world:
            torch.set_rng_state(by_rank[self.dist.rank])
        if self.amp is not None:
            self.amp.load_state_dict(ck.grad_scaler)
        if self.device.type == "cuda" and "cuda" in ck.rng:
            torch.cuda.set_rng_state(ck.rng["cuda"], self.device)
        carried = ck.carried_state
        self.state = None if carried is None else tuple(s.to(self.device) for s in carried)
        if self.dist is not None and self.state is not None:
            self.state = self.dist.my_rows(self.state)  # the checkpoint holds the full batch
        flatten_rnn_weights(self.model)


def _stop_and_save(trainer: Trainer, stop: StopRequest) -> None:
    """Checkpoint at this step boundary and leave with 128 + the signal number."""
    trainer.save(best=False)
    p = trainer.progress
    raise TrainingStopped(
        f"{stop.name} received: stopped after step {p.step} and saved "
        f"{trainer.run.checkpoints / ckpt.LAST}; continue exactly from there with "
        "`lmtrain fit CONFIG --resume auto` (same config and run.dir).",
        exit_code=stop.exit_code,
    )


def fit(
    cfg: Config,
    resume: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] | None = None,
    record_losses: bool = False,
) -> FitResult:
    """Train the model described by `cfg`, as one process or as one rank of a torchrun job.

    Lines go to `echo`: by default print, or nothing at all when `quiet`. `quiet` drops the
    progress bar and progress lines; an `echo` given here still gets every other line.
    """
    if echo is None:
        echo = _silent if quiet else print
    check_loggers(_loggers(cfg))  # a missing optional package fails before anything is written
    ctx = distributed.init(cfg.train.device, cfg.train.dist_timeout)
    try:
        # The stack holds the run directory (and its lock) until the run is over, however it ends.
        with distributed.collective_errors(ctx), contextlib.ExitStack() as stack:
            return _fit(cfg, resume, quiet, echo, record_losses, ctx, stack)
    finally:
        distributed.close(ctx)


def _fit(
    cfg: Config,
    resume: str | None,
    quiet: bool,
    echo: Callable[[str], None],
    record_losses: bool,
    ctx: distributed.DistContext | None,
    stack: contextlib.ExitStack,
) -> FitResult:
    """See the module docstring for the order of events."""
    main = ctx is None or ctx.is_main
    configure_threads(cfg.train.num_threads)
    if ctx is None:
        device = resolve_device(cfg.train.device)
    else:
        device = ctx.device
        distributed.check_batch_size(cfg.train.batch_size, ctx)
    world = 1 if ctx is None else ctx.world
    check_resources(cfg, None, device, world)  # before anything is built or written
    # The one place where "are we resuming, and from what?" is answered (new, continue, fork,
    # rewind). Under torchrun rank 0 locks the directory and reads the checkpoint for everyone.
    run, start = stack.enter_context(open_run(cfg, resume, echo, ctx))
    run_dir, payload = run.path, start.checkpoint
    torch.manual_seed(cfg.train.seed)
    vocab = None if payload is None else Vocab.from_dict(payload["vocab"])
    if ctx is not None and cfg.data.cache_dir is not None:

        def fill_cache() -> None:
            prepare_data(cfg, vocab, echo)

        # Rank 0 tokenises into the cache while the others wait (its errors reach them all);
        # then every rank below finds each split prepared and maps it.
        ctx.on_main(fill_cache)
    corpus = prepare_data(cfg, vocab, echo if main else _silent)
    check_resources(cfg, len(corpus.vocab), device, world)  # the decoder's size is known now
    try:
        batches: StreamBatches | SentenceBatches
        if cfg.data.mode == "sentences":
            d = cfg.data
            sequences = split_sequences(corpus.train, corpus.vocab, d.documents, d.max_length)
            if not sequences:
                raise DataError(f"{d.train}: no non-empty lines; sentences mode needs some text")
            batches = SentenceBatches(
                sequences, cfg.train.batch_size, cfg.train.bptt, cfg.train.seed
            )
        elif cfg.train.variable_bptt:
            from lmtrain.data.variable_bptt import VariableStreamBatches

            batches = VariableStreamBatches(
                corpus.train, cfg.train.batch_size, cfg.train.bptt, cfg.train.seed
            )
        else:
            batches = StreamBatches(corpus.train, cfg.train.batch_size, cfg.train.bptt)
    except ValueError as e:
        raise DataError(
            f"{cfg.data.train}: too little training text ({e}); lower train.batch_size"
        ) from None
    if ctx is not None:
        batches = distributed.shard(batches, ctx)
    model = build_model(cfg.model, len(corpus.vocab)).to(device)
    vectors_report = None
    if cfg.model.pretrained_embeddings is not None and payload is None:
        from lmtrain.data.vectors import load_pretrained

        vectors_report = load_pretrained(model, corpus.vocab, cfg.model)
    flatten_rnn_weights(model)
    amp = Amp.for_model(cfg.train.precision, device, model.rnn)
    forward_loss = distributed.wrap(model, ctx)
    if ctx is not None:
        torch.manual_seed(cfg.train.seed + ctx.rank)  # independent dropout masks per rank
    optimizer = build_optimizer(cfg.train, model)
    total_steps = planned_steps(cfg.train, len(batches))
    if main:
        run.write_text("config.yaml", cfg.to_yaml())
    start_step = 0 if payload is None else int(payload["progress"]["step"])
    logger = RunLogger(
        run_dir,
        cfg.run.tensorboard and main,
        total_steps,
        start_step,
        quiet or not main,
        echo if main else _silent,
        purge_step=start_step + 1 if payload is not None else None,
        kind=corpus.vocab.kind,
        write_files=main,
        config_yaml=cfg.to_yaml(),
        loggers=_loggers(cfg) if main else (),
    )
    trainer_cls = Trainer
    if cfg.train.optimizer == "ntasgd":
        from lmtrain.training.ntasgd import NTASGDTrainer

        trainer_cls = NTASGDTrainer
    trainer = trainer_cls(
        cfg, run, device, corpus, model, optimizer, LRSchedule(cfg.train, total_steps),
        batches, logger, Progress(), record_losses=record_losses,
        amp=amp, dist=ctx, forward_loss=forward_loss,
    )  # fmt: skip
    if payload is not None:
        trainer.restore(payload)
    if payload is None:
        trainer.logger.text("config", cfg.to_yaml(), 0)
    if vectors_report is not None:
        trainer.logger.message(vectors_report)
    n_params = sum(p.numel() for p in model.parameters())
    trainer.logger.message(
        f"{cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}, "
        f"{n_params:,} parameters, vocabulary {len(corpus.vocab):,} ({corpus.vocab.kind}), "
        f"{corpus.train.numel():,} training tokens, {len(batches)} steps/epoch, device {device}"
        + (f"; resuming at step {start_step}" if payload is not None else "")
        + (f"; {ctx.world} processes, each with {_per_rank(cfg, ctx)}" if ctx else "")
    )
    if corpus.valid is not None and payload is None:
        predicted = None  # stream mode: every token after the first
        if cfg.data.mode == "sentences":  # every token of every sequence, end markers included
            predicted = torch.cat([s[1:] for s in trainer.valid_sequences] or [corpus.valid[:0]])
        base = unigram_baseline(
            corpus.train, corpus.valid, len(corpus.vocab), corpus.vocab.kind, predicted,
            corpus.valid_bytes,
        )  # fmt: skip
        trainer.logger.message(f"unigram baseline on validation: {base.summary()}")
    for note in amp.notes:
        trainer.logger.message(note)
    model.train()
    p = trainer.progress
    seconds0, tokens0 = p.train_seconds, p.tokens
    status: str | None = None  # how the session ended; None: by an error, nothing to report
    ended = False
    try:
        with graceful_stop() as stop:
            trainer.stop = stop
            while not trainer.done() and p.epoch < cfg.train.epochs:
                trainer.train_epoch()
                if stop.requested and not trainer.done():
                    _stop_and_save(trainer, stop)
            trainer.evaluate_and_save()  # no-op when the last step was just evaluated
        status = "time_limit" if p.out_of_time else "completed"
        ended = True
    except TrainingStopped as e:
        # A signal (exit 130 / 143) left a checkpoint to continue from; exit 3 gave up.
        status = "nonfinite" if e.exit_code == 3 else "stopped"
        raise
    finally:
        results = _report(trainer, status, failing=not ended)
    # Training time only (Progress.train_seconds leaves out evaluation and checkpoints).
    return FitResult(
        run_dir, p, p.train_seconds - seconds0, p.tokens - tokens0, trainer.losses,
        is_main=main, results=results,
    )  # fmt: skip


def _loggers(cfg: Config) -> tuple[str, ...]:
    return tuple(cfg.run.loggers)


def _report(trainer: Trainer, status: str | None, failing: bool) -> dict[str, Any]:
    """Write results.json (when the outcome is known) and close the logger. While an error is on
    its way out, a second one met here is dropped so that the first reaches the user."""
    logger, p = trainer.logger, trainer.progress
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


def _per_rank(cfg: Config, ctx: distributed.DistContext) -> str:
    b = cfg.train.batch_size // ctx.world
    if cfg.data.mode == "sentences":
        return f"{b} of each batch's sequences"
    return f"{b} streams"


def _silent(_: str) -> None:
    """Ranks other than 0 print nothing; rank 0 speaks for the job."""
