"""The config schema: frozen dataclasses that are at once the YAML format, the defaults and the help.

A config is a YAML file with four sections (`data`, `model`, `train`, `run`). Each field carries a
one-line docstring directly under it, which `field_docs()` reads back from the source, so that
`lmtrain config` prints the docs of the code itself. The root `Config` composes the sections; the
data and model sections, with their defaults and checks, live with the code that uses them
(lmtrain/data/config.py, lmtrain/models/config.py) and are re-exported here. Loading and the
checks of the whole config live in lmtrain/config/load.py and checks.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from lmtrain.data.config import DataConfig
from lmtrain.models.config import AdaptiveSoftmaxConfig, ModelConfig

__all__ = [
    "AdaptiveSoftmaxConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
]

Optimizer = Literal["sgd", "adam", "adamw", "rmsprop", "ntasgd"]
Schedule = Literal["constant", "plateau", "cosine"]
ScheduleSpan = Literal["auto", "steps"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]


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


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"
    """Run directory for the resolved config, checkpoints and events; `~` and `${VAR}` expand."""
    sample_tokens: int = 200
    """Tokens of text generated and logged at each evaluation (0 = none)."""
    sample_prompt: str = ""
    """Prompt for the sample logged at each evaluation."""
    tensorboard: bool = True
    """Write TensorBoard event files under run.dir/tb."""
    keep_last: int = 2
    """Also keep numbered checkpoints (checkpoints/step-NNNNNNNN.pt) of the N newest saves; 0 = none."""
    loggers: list[str] = field(default_factory=list)
    """Experiment trackers that also get every logged point: wandb, mlflow (packages not included)."""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """Where the text comes from and how it is tokenised and batched."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: embedding -> stacked recurrent layers -> decoder."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, schedule, clipping, evaluation cadence, device."""
    run: RunConfig = field(default_factory=RunConfig)
    """Output directory, logging and samples."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
