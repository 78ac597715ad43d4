"""The train section of the config, its checks, the optimiser table and the memory estimate.

    OPTIMIZERS        name -> OptimizerSpec: what lmtrain knows of each optimiser (the callable
                      that builds it, the state it keeps, whether it takes train.momentum, whether
                      it needs validation data); `train.optimizer` is one of its names
    register(n, s)    adds an optimiser (a plugin's module, a test)
    TrainConfig       the keys, their defaults and one-line docs, and `problems(data)`
    estimate_memory   what one training step holds at least, from the config alone

A new optimiser is one row in OPTIMIZERS (or one `register` call); lmtrain/training/optim.py
builds it from its row, and no package but training names an optimiser (the NT-ASGD averager,
lmtrain/training/averaging.py, is chosen by its name there). This module imports no
torch (the optimiser's class is named by its import path), so that loading a config stays
light. Defaults are written only here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from lmtrain.records import MAX_INT, OneOf, show_value

# Bounds beyond which a value cannot run, or cannot mean what it says.
MAX_SEED = MAX_INT  # torch.Generator.manual_seed takes 0 .. 2**63 - 1 on every device
MAX_THREADS = 1024
MAX_DIST_TIMEOUT = 7 * 24 * 3600
# torch applies the learning rate, weight decay and clipping value in the weights' dtype; beyond
# float32's range that is a RuntimeError in the first step.
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser of OPTIMIZERS: how it is built and what the config's checks and the memory
    estimate need to know of it."""

    build: str
    """The optimiser's class (or any callable of the same signature) as `module:name`, called
    as `build(params, lr=..., weight_decay=...[, momentum=...])` by lmtrain/training/optim.py."""
    slots: int
    """Tensors of the parameters' size it keeps, besides a momentum buffer."""
    momentum: bool = False
    """It takes train.momentum (and follows it on resume), keeping one more tensor when > 0."""
    needs_valid: str = ""
    """Why it cannot train without validation data, worded after its name; "" = it can."""

    def state_slots(self, momentum: float) -> int:
        """Tensors of the parameters' size it keeps with train.momentum `momentum`."""
        return self.slots + int(self.momentum and momentum > 0)

    def options(self, t: TrainConfig) -> dict[str, float]:
        """The keyword arguments `build` gets from the train section."""
        given = {"lr": t.lr, "weight_decay": t.weight_decay}
        return {**given, "momentum": t.momentum} if self.momentum else given


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("torch.optim:SGD", slots=0, momentum=True),
    "adam": OptimizerSpec("torch.optim:Adam", slots=2),  # first and second moments
    "adamw": OptimizerSpec("torch.optim:AdamW", slots=2),
    "rmsprop": OptimizerSpec("torch.optim:RMSprop", slots=1, momentum=True),
    # Plain SGD; the NT-ASGD averager (lmtrain/training/averaging.py) averages once validation
    # stalls, and then keeps the running average: one slot.
    "ntasgd": OptimizerSpec(
        "torch.optim:SGD", slots=1, needs_valid="switches on stalled validation"
    ),
}
"""Each optimiser `train.optimizer` may name, in the order the config's messages list them."""


def register(name: str, spec: OptimizerSpec) -> OptimizerSpec:
    """Add an optimiser to OPTIMIZERS under `name`, which the config then accepts."""
    if name in OPTIMIZERS:
        raise ValueError(f"an optimizer named {name!r} is already registered")
    OPTIMIZERS[name] = spec
    return spec


Optimizer = Annotated[str, OneOf(OPTIMIZERS)]
Schedule = Literal["constant", "plateau", "cosine"]
ScheduleSpan = Literal["auto", "steps"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]


class DataSettings(Protocol):
    """The data keys the train checks read (lmtrain.data.config's DataConfig has them)."""

    @property
    def valid(self) -> str | None: ...
    @property
    def mode(self) -> str: ...


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    """Passes over the training split (training stops at whichever of epochs/max_steps comes first)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps; null = run all epochs."""
    max_minutes: float | None = None
    """Stop after this many minutes of training steps (evaluation excluded); null = no limit."""
    batch_size: int = 32
    """Streams (stream mode) or sequences (sentences mode) per step; the GLOBAL batch under torchrun."""
    bptt: int = 64
    """Truncated BPTT window: tokens per stream per step; state is carried across windows."""
    optimizer: Optimizer = "adam"
    """sgd (with momentum), adam, adamw, rmsprop, or ntasgd (SGD, then averaged SGD; AWD-LSTM)."""
    lr: float = 0.002
    """Peak learning rate."""
    momentum: float = 0.0
    """Momentum for sgd and rmsprop."""
    weight_decay: float = 0.0
    """L2 penalty (decoupled for adamw)."""
    schedule: Schedule = "constant"
    """Learning-rate schedule: constant, plateau (divide on stalled validation loss) or cosine."""
    warmup_steps: int = 0
    """Linear warm-up steps (cosine schedule)."""
    min_lr: float = 0.0
    """Floor of the learning rate for the cosine and plateau schedules."""
    schedule_span: ScheduleSpan = "auto"
    """Cosine decay over `auto`: the planned steps or train.max_minutes, whichever ends first (the rate follows the clock); `steps`: the steps only (same seed, same losses)."""
    plateau_factor: float = 0.25
    """Plateau schedule: multiply the learning rate by this when validation stops improving."""
    plateau_patience: int = 0
    """Plateau schedule: evaluations without improvement before the rate is cut."""
    clip_grad_norm: float | None = 1.0
    """Clip the global L2 norm of all gradients to this value; null = no norm clipping."""
    clip_grad_value: float | None = None
    """Clip every gradient element to [-value, value]; null = off."""
    seed: int = 1234
    """Seed for parameters, dropout and sampling; same seed + config on CPU = same losses."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    precision: Precision = "fp32"
    """fp32, mixed bf16 or fp16 (autocast; fp16 adds loss scaling), or auto: bf16 where native."""
    dist_timeout: int = 600
    """Under torchrun: seconds a process waits for the others before stopping with an error."""
    eval_every: int | None = None
    """Evaluate (and checkpoint) every N steps; null = at the end of each epoch."""
    early_stopping: int | None = None
    """Stop after this many evaluations in a row without a new best validation loss; null = off."""
    log_every: int = 50
    """Steps between console/TensorBoard training log points."""
    max_nonfinite_steps: int = 5
    """Stop (exit 3) after this many consecutive steps with a NaN/inf loss or gradient (each is skipped)."""
    num_threads: int | None = None
    """CPU threads for torch's matrix and row kernels; null = one per physical core."""
    ar_alpha: float = 0.0
    """Activation regularisation: alpha * mean square of the dropped last-layer output (0 = off)."""
    tar_beta: float = 0.0
    """Temporal activation regularisation: beta * mean square step of the last layer (0 = off)."""
    variable_bptt: bool = False
    """AWD-LSTM variable window: bptt (p 0.95) or bptt/2, length ~ N(base, 5), lr scaled by it."""
    nonmono: int = 5
    """ntasgd: switch to averaging when validation is worse than the best of all but the last N."""

    @property
    def optimizer_spec(self) -> OptimizerSpec:
        """This config's row of OPTIMIZERS (the section admits only its names)."""
        return OPTIMIZERS[self.optimizer]

    def problems(self, data: DataSettings) -> list[str]:
        """Every out-of-range value and conflict of this section, as `train.key: message`, with
        the rules that read the data section's validation split and mode."""
        p: list[str] = []
        t = self

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                p.append(f"{key}: {msg}")

        need(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
        need(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1 or null")
        need(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes", "must be > 0 or null")
        need(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
        need(t.bptt >= 1, "train.bptt", f"must be >= 1, got {t.bptt}")
        need(t.lr > 0 and math.isfinite(t.lr), "train.lr", f"must be a positive number, got {t.lr}")
        need(0.0 <= t.momentum < 1.0, "train.momentum", f"must be in [0, 1), got {t.momentum}")
        need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
        need(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
        need(0 <= t.min_lr <= t.lr, "train.min_lr", f"must be in [0, train.lr], got {t.min_lr}")
        need(0 < t.plateau_factor < 1, "train.plateau_factor", "must be in (0, 1)")
        need(t.plateau_patience >= 0, "train.plateau_patience", "must be >= 0")
        for name in ("clip_grad_norm", "clip_grad_value"):
            v = getattr(t, name)
            need(v is None or v > 0, f"train.{name}", f"must be > 0 or null, got {v}")
        for name in ("lr", "weight_decay", "clip_grad_value"):
            v = getattr(t, name)
            need(
                v is None or v <= FLOAT32_MAX,
                f"train.{name}",
                f"must be at most {FLOAT32_MAX:.4g} (the largest float32, the weights' type), "
                f"got {v}",
            )
        need(t.eval_every is None or t.eval_every >= 1, "train.eval_every", "must be >= 1 or null")
        need(
            t.early_stopping is None or t.early_stopping >= 1,
            "train.early_stopping",
            f"must be >= 1 or null, got {t.early_stopping}",
        )
        if t.early_stopping is not None and data.valid is None:
            p.append("train.early_stopping: counts evaluations on validation data; set data.valid")
        need(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
        need(
            1 <= t.dist_timeout <= MAX_DIST_TIMEOUT,
            "train.dist_timeout",
            f"must be in [1, {MAX_DIST_TIMEOUT}] seconds, got {t.dist_timeout}",
        )
        need(
            0 <= t.seed <= MAX_SEED,
            "train.seed",
            "must be in [0, 2**63 - 1] (the range torch's generators take), "
            f"got {show_value(t.seed)}",
        )
        need(t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1")
        need(
            t.num_threads is None or t.num_threads >= 1,
            "train.num_threads",
            f"must be >= 1 or null, got {t.num_threads}",
        )
        need(
            t.num_threads is None or t.num_threads <= MAX_THREADS,
            "train.num_threads",
            f"must be at most {MAX_THREADS} (torch would try to start that many threads), "
            f"got {t.num_threads}",
        )
        if t.variable_bptt and data.mode == "sentences":
            p.append(
                "train.variable_bptt: stream mode only; sentences mode already cuts each sequence "
                "into bptt chunks (set data.mode: stream or train.variable_bptt: false)"
            )
        for name in ("ar_alpha", "tar_beta"):
            v = getattr(t, name)
            need(v >= 0, f"train.{name}", f"must be >= 0, got {v}")
        need(t.nonmono >= 1, "train.nonmono", f"must be >= 1, got {t.nonmono}")
        spec = OPTIMIZERS.get(t.optimizer)
        if spec is not None and spec.needs_valid and data.valid is None:
            p.append(f"train.optimizer: {t.optimizer!r} {spec.needs_valid}; set data.valid")
        need(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
            "train.device",
            f"expected auto, cpu, cuda or cuda:N, got {t.device!r}",
        )
        if t.schedule == "plateau" and data.valid is None:
            p.append("train.schedule: 'plateau' needs validation data; set data.valid")
        return p


# -- the memory estimate -----------------------------------------------------------------------


class ModelSizes(Protocol):
    """The model keys and sizes the estimate reads (lmtrain.models.config's ModelConfig)."""

    @property
    def embedding_dim(self) -> int: ...
    @property
    def freeze_embeddings(self) -> bool: ...
    def parameter_count(self, vocab_size: int) -> int: ...
    def floats_per_token(self, vocab_size: int) -> int: ...


class Sections(Protocol):
    """A config with model and train sections (lmtrain.config's Config)."""

    @property
    def model(self) -> ModelSizes: ...
    @property
    def train(self) -> TrainConfig: ...


@dataclass(frozen=True)
class MemoryEstimate:
    """A lower bound on what one training step holds in memory (fp32 weights)."""

    parameters: int
    state_bytes: int
    """Weights, gradients and optimiser state."""
    activation_bytes: int
    """Activations kept for the backward pass of one step, logits included."""

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def estimate_memory(cfg: Sections, vocab_size: int, world_size: int = 1) -> MemoryEstimate:
    """Memory a training step of `cfg` needs at least, from the config alone.

    Counted: embedding, recurrent and decoder parameters with their gradients and optimiser
    slots, and per token of the step the embedding, each layer's gates and state, and the
    logits with their gradient. Workspace, caches and allocator slack are not, so a model this
    estimate refuses can never fit, while one it accepts may still be tight.
    """
    m, t = cfg.model, cfg.train
    parameters = m.parameter_count(vocab_size)  # the model's own count (models/config.py)
    embedding = vocab_size * m.embedding_dim
    slots = t.optimizer_spec.state_slots(t.momentum)
    trained = parameters - (embedding if m.freeze_embeddings else 0)
    state = 4 * (parameters + trained * (1 + slots))
    tokens = t.batch_size * t.bptt // max(world_size, 1)
    per_token = m.floats_per_token(vocab_size)
    activations = tokens * per_token * (4 if t.precision in ("fp32", "auto") else 2)
    return MemoryEstimate(parameters, state, activations)
