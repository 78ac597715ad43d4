"""fit(): the training loop, truncated BPTT, clipping, schedule, evaluation and checkpoints.

Read top to bottom: `fit` prepares the run (directory, data, model, optimiser, maybe a resumed
checkpoint), then `train_epoch` runs optimiser steps and calls `evaluate_and_save` at each
evaluation point. Everything that decides *what* is computed lives in the config; this file only
decides *when*.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtrain import checkpoint as ckpt
from lmtrain.config import Config, TrainConfig
from lmtrain.data import Batch, StreamBatches, Vocab, read_text
from lmtrain.errors import CheckpointError, DataError, LmtrainError
from lmtrain.evaluate import EvalResult, evaluate_ids, unigram_baseline
from lmtrain.metrics import RunLogger
from lmtrain.models import LanguageModel, State, build_model, detach_state, select_rows
from lmtrain.sample import SampleOptions, generate

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


@dataclass
class FitResult:
    run_dir: Path
    progress: Progress
    train_seconds: float
    train_tokens: int
    losses: dict[int, float] = field(default_factory=dict)
    """Per-step mean training loss by step number (filled when record_losses is on)."""

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


def prepare_run_dir(cfg: Config, resume: str | None) -> tuple[Path, dict[str, Any] | None]:
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
        path = run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            raise CheckpointError(
                f"--resume auto: no checkpoint at {path}, so there is nothing to resume. Start "
                "without --resume to train from scratch."
            )
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
    batches: StreamBatches
    logger: RunLogger
    progress: Progress
    state: State | None = None
    record_losses: bool = False
    losses: dict[int, float] = field(default_factory=dict)
    _pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def done(self) -> bool:
        return self.progress.step >= planned_steps(self.cfg.train, len(self.batches))

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
        hidden, new_state = model(inputs, state, batch.lengths)  # (T, B, H)
        # Truncated BPTT: carry the state's value into the next window, not its graph.
        self.state = detach_state(new_state)
        nll = model.output.nll(hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1))
        loss = nll / batch.num_tokens  # mean NLL per predicted token
        if t.ar_alpha > 0 or t.tar_beta > 0:
            from lmtrain.awd import activation_penalty

            assert model.last_output is not None
            mask = targets != 0  # (T, B) real positions
            loss = loss + activation_penalty(
                hidden, model.last_output, mask, t.ar_alpha, t.tar_beta
            )
        # Variable-length BPTT: a window of length L steps with lr * L / bptt (AWD-LSTM).
        lr_scale = inputs.size(0) / t.bptt if t.variable_bptt else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(self.progress.step) * lr_scale
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping keeps one exploding-gradient step (common in RNNs) from wrecking the weights;
        # the returned norm is measured before clipping, which is what is worth logging.
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm or math.inf)
        if t.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(params, t.clip_grad_value)
        self.optimizer.step()
        return nll.detach(), grad_norm.detach()

    def train_epoch(self) -> None:
        """Steps until the end of the epoch or of training, evaluating when due."""
        t = self.cfg.train
        p = self.progress
        window_nll = torch.zeros((), device=self.device, dtype=torch.float64)
        window_tokens, window_start, window_steps = 0, time.perf_counter(), 0
        grad_norm = torch.zeros(())
        for batch in self.batches.batches(p.epoch, p.batch_in_epoch):
            nll, grad_norm = self.train_step(batch)
            p.step += 1
            p.batch_in_epoch += 1
            p.tokens += batch.num_tokens
            window_nll += nll
            window_tokens += batch.num_tokens
            window_steps += 1
            if self.record_losses:
                self._pending.append((p.step, nll / batch.num_tokens))
            self.logger.advance()
            if p.step % t.log_every == 0 or self.done():
                # The only host synchronisation in the loop: once per logging interval.
                elapsed = time.perf_counter() - window_start
                self.logger.train_point(
                    p.step,
                    float(window_nll) / window_tokens,
                    self.optimizer.param_groups[0]["lr"],
                    float(grad_norm),
                    window_tokens / max(elapsed, 1e-9),
                )
                self._flush_losses()
                window_nll.zero_()
                window_tokens, window_start, window_steps = 0, time.perf_counter(), 0
            if t.eval_every is not None and p.step % t.eval_every == 0:
                self.evaluate_and_save()
            if self.done():
                break
        else:
            p.epoch += 1
            p.batch_in_epoch = 0
            if t.eval_every is None:
                self.evaluate_and_save()
        self._flush_losses()

    def _flush_losses(self) -> None:
        for step, loss in self._pending:
            self.losses[step] = float(loss)
        self._pending.clear()

    def evaluate(self) -> EvalResult | None:
        if self.corpus.valid is None:
            return None
        return evaluate_ids(
            self.model, self.corpus.valid, self.corpus.vocab.kind, self.corpus.valid_oov
        )

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
            self.logger.evaluation(p.step, p.epoch - (p.batch_in_epoch == 0), result, best)
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
            "carried_state": None if self.state is None else [s.cpu() for s in self.state],
        }

    def save(self, best: bool) -> None:
        directory = self.run_dir / ckpt.CHECKPOINT_DIR
        payload = self.payload()
        ckpt.save_checkpoint(directory / ckpt.LAST, payload)
        if best:
            ckpt.save_checkpoint(directory / ckpt.BEST, payload)

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue exactly where a checkpoint left off: weights, optimiser, data, RNG."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.progress = Progress(**payload["progress"])
        torch.set_rng_state(payload["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in payload["rng"]:
            torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        carried = payload.get("carried_state")
        self.state = None if carried is None else tuple(s.to(self.device) for s in carried)


def fit(
    cfg: Config,
    resume: str | None = None,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    record_losses: bool = False,
) -> FitResult:
    """Train the model described by `cfg`; see the module docstring for the order of events."""
    device = resolve_device(cfg.train.device)
    run_dir, payload = prepare_run_dir(cfg, resume)
    torch.manual_seed(cfg.train.seed)
    vocab = None if payload is None else Vocab.from_dict(payload["vocab"])
    corpus = prepare_data(cfg, vocab)
    try:
        if cfg.train.variable_bptt:
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
    model = build_model(cfg.model, len(corpus.vocab)).to(device)
    vectors_report = None
    if cfg.model.pretrained_embeddings is not None and payload is None:
        from lmtrain.data.vectors import load_pretrained

        vectors_report = load_pretrained(model, corpus.vocab, cfg.model)
    optimizer = build_optimizer(cfg.train, model)
    total_steps = planned_steps(cfg.train, len(batches))
    _write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    start_step = 0 if payload is None else int(payload["progress"]["step"])
    logger = RunLogger(
        run_dir,
        cfg.run.tensorboard,
        total_steps,
        start_step,
        quiet,
        echo,
        purge_step=start_step + 1 if payload is not None else None,
    )
    trainer_cls = Trainer
    if cfg.train.optimizer == "ntasgd":
        from lmtrain.awd import NTASGDTrainer

        trainer_cls = NTASGDTrainer
    trainer = trainer_cls(
        cfg, run_dir, device, corpus, model, optimizer, LRSchedule(cfg.train, total_steps),
        batches, logger, Progress(), record_losses=record_losses,
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
    )
    if corpus.valid is not None and payload is None:
        base = unigram_baseline(corpus.train, corpus.valid, len(corpus.vocab), corpus.vocab.kind)
        trainer.logger.message(f"unigram baseline on validation: {base.summary()}")
    model.train()
    t0 = time.perf_counter()
    tokens0 = trainer.progress.tokens
    try:
        while not trainer.done() and trainer.progress.epoch < cfg.train.epochs:
            trainer.train_epoch()
        seconds = time.perf_counter() - t0
        trainer.evaluate_and_save()  # no-op when the last step was just evaluated
    finally:
        trainer.logger.close()
    return FitResult(
        run_dir, trainer.progress, seconds, trainer.progress.tokens - tokens0, trainer.losses
    )
