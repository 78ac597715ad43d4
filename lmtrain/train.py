"""fit(): the training loop, truncated BPTT, clipping, schedule, evaluation and checkpoints.

Read top to bottom: `fit` prepares the run (directory, data, model, optimiser, maybe a resumed
checkpoint), then `train_epoch` runs optimiser steps and calls `evaluate_and_save` at each
evaluation point. Everything that decides *what* is computed lives in the config; this file only
decides *when*.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtrain import checkpoint as ckpt
from lmtrain import distributed
from lmtrain import resume as resume_mod
from lmtrain.config import Config, TrainConfig
from lmtrain.data import Batch, SentenceBatches, StreamBatches, Vocab, read_text
from lmtrain.data.sentences import split_sequences
from lmtrain.errors import CheckpointError, DataError, LmtrainError, TrainingStopped
from lmtrain.evaluate import EvalResult, evaluate_ids, unigram_baseline
from lmtrain.interrupt import StopRequest, graceful_stop
from lmtrain.metrics import RunLogger
from lmtrain.models import LanguageModel, State, build_model, detach_state, select_rows
from lmtrain.precision import Amp, flatten_rnn_weights
from lmtrain.sample import SampleOptions, generate
from lmtrain.score import evaluate_sentences
from lmtrain.threads import configure_threads

# ---------------------------------------------------------------------------------------------
# Setup helpers


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LmtrainError(
                f"train.device is {spec!r} but no CUDA GPU is available here; "
                "use train.device=cpu (or auto)"
            )
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise LmtrainError(
                f"train.device is {spec!r} but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return torch.device(spec)


@dataclass
class Corpus:
    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor | None
    valid_oov: int = 0


def prepare_data(cfg: Config, vocab: Vocab | None = None) -> Corpus:
    """Read and encode the splits; build the vocabulary from the training split only."""
    d = cfg.data
    text = read_text(d.train, "train", d.decode_errors)
    if vocab is None:
        vocab = Vocab.build(text, d.tokenizer, d.min_freq, d.max_size)
    train = vocab.encode(text).ids
    del text
    valid, oov = None, 0
    if d.valid is not None:
        enc = vocab.encode(read_text(d.valid, "valid", d.decode_errors))
        if enc.ids.numel() < 2:
            raise DataError(f"{d.valid}: validation text needs at least 2 tokens")
        valid, oov = enc.ids, enc.oov
    return Corpus(vocab, train, valid, oov)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "ntasgd":
        # Plain SGD; NTASGDTrainer (lmtrain/awd.py) adds the averaging once validation stalls.
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
class Progress:
    """Counters saved in every checkpoint; together with the RNG states they fix the future."""

    step: int = 0
    """Optimiser steps completed."""
    epoch: int = 0
    """Current epoch, 0-based."""
    batch_in_epoch: int = 0
    """Index of the next batch within the current epoch."""
    tokens: int = 0
    """Training tokens consumed."""
    best_val_loss: float = math.inf
    last_val_loss: float = math.nan
    last_eval_step: int = -1
    nonfinite_steps: int = 0
    """Steps skipped because their loss or gradient was NaN/inf, in total."""
    nonfinite_run: int = 0
    """Consecutive skipped steps up to now (0 after a good step)."""
    train_seconds: float = 0.0
    """Time spent in training steps so far, evaluation and saving excluded (train.max_minutes)."""
    out_of_time: bool = False
    """train.max_minutes was reached; no more steps."""


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

    @property
    def tokens_per_sec(self) -> float:
        return self.train_tokens / max(self.train_seconds, 1e-9)


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Total optimiser steps: all epochs, or max_steps if that comes first."""
    total = steps_per_epoch * cfg.epochs
    return min(total, cfg.max_steps or total)


# ---------------------------------------------------------------------------------------------
# Run directory and resume


def _run_has_outputs(run_dir: Path) -> bool:
    return (run_dir / ckpt.CHECKPOINT_DIR).exists() or (run_dir / "config.yaml").exists()


def prepare_run_dir(
    cfg: Config, resume: str | None, warn: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any] | None]:
    """Create or check the run directory; load the checkpoint to resume from, if asked."""
    run_dir = Path(cfg.run.dir)
    if resume is None:
        if _run_has_outputs(run_dir):
            raise CheckpointError(
                f"run directory {run_dir} already holds a run; nothing was changed. Continue it "
                "with --resume auto, or choose a new run.dir (e.g. run.dir=runs/NAME)."
            )
        payload = None
    else:
        if resume == "auto":
            # Falls back past a damaged newest checkpoint (with a warning), never to scratch.
            path, payload = resume_mod.load_latest(run_dir, warn)
        else:
            path = Path(resume)
            payload = ckpt.load_checkpoint(path)
        _check_resumable(cfg, ckpt.config_of(payload, path), path)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise LmtrainError(
            f"run directory {run_dir} cannot be written ({e.strerror}); choose another run.dir"
        ) from None
    return run_dir, payload


# Settings that change what the checkpoint's tensors mean; everything else (epochs, lr, ...)
# may change on resume.
_FIXED_ON_RESUME = ("model", "data.tokenizer", "data.mode", "data.min_freq", "data.max_size")


def _check_resumable(cfg: Config, saved: Config, path: Path) -> None:
    new, old = _flatten(cfg.to_dict()), _flatten(saved.to_dict())
    differ = [
        f"{k} (checkpoint: {old.get(k)!r}, now: {new.get(k)!r})"
        for k in sorted(set(new) | set(old))
        if any(k == f or k.startswith(f + ".") for f in _FIXED_ON_RESUME)
        and new.get(k) != old.get(k)
    ]
    if differ:
        raise CheckpointError(
            f"cannot resume from {path}: the architecture or vocabulary settings differ: "
            + "; ".join(differ)
            + ". Resume with the original settings, or start a new run.dir."
        )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class Trainer:
    """Everything one training run holds; its methods are the named steps of the loop."""

    cfg: Config
    run_dir: Path
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
            from lmtrain.awd import activation_penalty

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
        window_nll = torch.zeros((), device=self.device, dtype=torch.float64)
        window_tokens, window_start, window_steps = 0, time.perf_counter(), 0
        grad_norm = torch.zeros(())
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
            window_steps += 1
            if self.record_losses:
                self._pending.append((p.step, nll, batch.num_tokens))
            self.logger.advance()
            if p.step % t.log_every == 0 or self.done():
                # The only host synchronisation in the loop: once per logging interval.
                elapsed = time.perf_counter() - window_start
                total_nll, total_tokens = float(window_nll), window_tokens
                if self.dist is not None:  # token-weighted over ranks
                    total_nll, total_tokens = self.dist.sum([window_nll, window_tokens])
                self.logger.train_point(
                    p.step,
                    total_nll / max(total_tokens, 1),
                    self.optimizer.param_groups[0]["lr"],
                    float(grad_norm),
                    total_tokens / max(elapsed, 1e-9),
                )
                self._flush_losses()
                window_nll.zero_()
                window_tokens, window_start, window_steps = 0, time.perf_counter(), 0
                self.check_time_budget()
            if t.eval_every is not None and p.step % t.eval_every == 0:
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
            directory = self.run_dir / ckpt.CHECKPOINT_DIR
            kept = (
                f"the checkpoints in {directory} are unchanged (newest from step {self.saved_step})"
                if self.saved_step is not None
                else f"no checkpoint was written in this session; {directory} is unchanged"
            )
            raise TrainingStopped(
                f"stopped at step {p.step}: {k} consecutive steps had a NaN or infinite loss or "
                f"gradient and were skipped (train.max_nonfinite_steps = {k}); {kept}. Lower "
                "train.lr, set train.clip_grad_norm, or check the data, then continue with "
                "--resume auto.",
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

        def run() -> EvalResult:
            if self.cfg.data.mode == "sentences":
                return evaluate_sentences(
                    self.model, self.valid_sequences, self.corpus.vocab.kind,
                    self.corpus.valid_oov, self.cfg.train.batch_size,
                )  # fmt: skip
            return evaluate_ids(
                self.model, self.corpus.valid, self.corpus.vocab.kind, self.corpus.valid_oov
            )

        # Under torchrun: the exact figure, computed once on rank 0 and shared.
        return run() if self.dist is None else self.dist.on_main(run)

    def evaluate_and_save(self) -> None:
        p = self.progress
        if p.last_eval_step == p.step:
            return
        p.last_eval_step = p.step
        result = self.evaluate()
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

    def payload(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        state, extra = self.state, {}
        if self.amp is not None and self.amp.scaler is not None:
            extra["grad_scaler"] = self.amp.state_dict()
        if self.dist is not None:  # collectives: every rank builds the payload
            rng["by_rank"] = self.dist.gather_objects(torch.get_rng_state())
            state = self.dist.gather_rows(state)
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "config": self.cfg.to_dict(),
            "vocab": self.corpus.vocab.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng,
            "carried_state": None if state is None else [s.cpu() for s in state],
            **extra,
        }

    def save(self, best: bool) -> None:
        directory = self.run_dir / ckpt.CHECKPOINT_DIR
        payload = self.payload()
        if self.dist is not None and not self.dist.is_main:
            return  # only rank 0 writes files
        keep = self.cfg.run.keep_last
        paths = [directory / ckpt.LAST]
        if keep > 0:
            paths.insert(0, directory / resume_mod.step_name(self.progress.step))
        if best:
            paths.append(directory / ckpt.BEST)
        resume_mod.save_copies(paths, payload)
        if keep > 0:
            resume_mod.prune(directory, keep)
        self.saved_step = self.progress.step

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue exactly where a checkpoint left off: weights, optimiser, data, RNG."""
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.schedule.load_state_dict(payload["schedule"])
            self.progress = Progress(**payload["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            detail = " ".join(str(e).split())[:500]
            raise CheckpointError(
                f"cannot resume: the checkpoint's contents do not fit this model ({detail}). "
                "Resume with the settings it was trained with, or start a new run.dir."
            ) from None
        torch.set_rng_state(payload["rng"]["torch"])
        by_rank = payload["rng"].get("by_rank")
        if self.dist is not None and by_rank is not None and len(by_rank) == self.dist.world:
            torch.set_rng_state(by_rank[self.dist.rank])
        if self.amp is not None:
            self.amp.load_state_dict(payload.get("grad_scaler"))
        if self.device.type == "cuda" and "cuda" in payload["rng"]:
            torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        carried = payload.get("carried_state")
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
        f"{trainer.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST}; continue exactly from there with "
        "`lmtrain fit CONFIG --resume auto` (same config and run.dir).",
        exit_code=stop.exit_code,
    )


def fit(
    cfg: Config,
    resume: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    record_losses: bool = False,
) -> FitResult:
    """Train the model described by `cfg`, as one process or as one rank of a torchrun job."""
    ctx = distributed.init(cfg.train.device, cfg.train.dist_timeout)
    try:
        with distributed.collective_errors(ctx):
            return _fit(cfg, resume, quiet, echo, record_losses, ctx)
    finally:
        distributed.close(ctx)


def _fit(
    cfg: Config,
    resume: str | None,
    quiet: bool,
    echo: Callable[[str], None],
    record_losses: bool,
    ctx: distributed.DistContext | None,
) -> FitResult:
    """See the module docstring for the order of events."""
    main = ctx is None or ctx.is_main
    configure_threads(cfg.train.num_threads)
    if ctx is None:
        device = resolve_device(cfg.train.device)
        run_dir, payload = prepare_run_dir(cfg, resume, echo)
    else:
        device = ctx.device
        distributed.check_batch_size(cfg.train.batch_size, ctx)
        # Rank 0 checks and creates the directory and reads the checkpoint for everyone.
        run_dir, payload = ctx.on_main(lambda: prepare_run_dir(cfg, resume, echo))
    torch.manual_seed(cfg.train.seed)
    vocab = None if payload is None else Vocab.from_dict(payload["vocab"])
    corpus = prepare_data(cfg, vocab)
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
        _write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    start_step = 0 if payload is None else int(payload["progress"]["step"])
    logger = RunLogger(
        run_dir,
        cfg.run.tensorboard and main,
        total_steps,
        start_step,
        quiet or not main,
        echo if main else _silent,
        purge_step=start_step + 1 if payload is not None else None,
    )
    trainer_cls = Trainer
    if cfg.train.optimizer == "ntasgd":
        from lmtrain.awd import NTASGDTrainer

        trainer_cls = NTASGDTrainer
    trainer = trainer_cls(
        cfg, run_dir, device, corpus, model, optimizer, LRSchedule(cfg.train, total_steps),
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
            corpus.train, corpus.valid, len(corpus.vocab), corpus.vocab.kind, predicted
        )
        trainer.logger.message(f"unigram baseline on validation: {base.summary()}")
    for note in amp.notes:
        trainer.logger.message(note)
    model.train()
    t0 = time.perf_counter()
    tokens0 = trainer.progress.tokens
    try:
        with graceful_stop() as stop:
            trainer.stop = stop
            while not trainer.done() and trainer.progress.epoch < cfg.train.epochs:
                trainer.train_epoch()
                if stop.requested and not trainer.done():
                    _stop_and_save(trainer, stop)
            seconds = time.perf_counter() - t0
            trainer.evaluate_and_save()  # no-op when the last step was just evaluated
    finally:
        trainer.logger.close()
    return FitResult(
        run_dir, trainer.progress, seconds, trainer.progress.tokens - tokens0, trainer.losses,
        is_main=main,
    )  # fmt: skip


def _per_rank(cfg: Config, ctx: distributed.DistContext) -> str:
    b = cfg.train.batch_size // ctx.world
    if cfg.data.mode == "sentences":
        return f"{b} of each batch's sequences"
    return f"{b} streams"


def _silent(_: str) -> None:
    """Ranks other than 0 print nothing; rank 0 speaks for the job."""
