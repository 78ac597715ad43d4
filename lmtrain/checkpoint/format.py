"""The checkpoint format: one typed `Checkpoint` holding state_dicts, config, vocabulary and
counters, written as a plain dict of tensors and built-in values (format version 2).

Reading and writing it is lmtrain/checkpoint/storage.py; checking a file's fields on load is
validate.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from lmtrain.records import Count

FORMAT = "lmtrain-checkpoint"
VERSION = 2
"""2: typed fields, `run_id`, `averager` (was `ntasgd`), `progress.eval_pending`."""
CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.pt", "best.pt"


@dataclass
class Progress:
    """Counters saved in every checkpoint; together with the RNG states they fix the future."""

    step: Count = 0
    """Optimiser steps completed."""
    epoch: Count = 0
    """Current epoch, 0-based."""
    batch_in_epoch: Count = 0
    """Index of the next batch within the current epoch."""
    tokens: Count = 0
    """Training tokens consumed."""
    best_val_loss: float = math.inf
    last_val_loss: float = math.nan
    last_eval_step: int = -1
    nonfinite_steps: Count = 0
    """Steps skipped because their loss or gradient was NaN/inf, in total."""
    nonfinite_run: Count = 0
    """Consecutive skipped steps up to now (0 after a good step; restarts at 0 on resume)."""
    train_seconds: float = 0.0
    """Time spent in training steps so far, evaluation and saving excluded (train.max_minutes)."""
    out_of_time: bool = False
    """train.max_minutes was reached; no more steps."""
    eval_pending: bool = False
    """The evaluation due at `step` was cut short by a signal; a resumed run does it first."""


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly, or a model to be evaluated and sampled."""

    config: dict[str, Any]
    """The run's resolved config (Config.to_dict())."""
    vocab: dict[str, Any]
    """Tokenizer.to_dict(): kind and itos."""
    model: dict[str, torch.Tensor]
    """The model's state_dict (NT-ASGD: the averaged weights while averaging)."""
    optimizer: dict[str, Any]
    """The optimiser's state_dict."""
    schedule: dict[str, float]
    """LRSchedule.state_dict()."""
    progress: Progress
    rng: dict[str, Any]
    """torch RNG state ("torch"), per rank under torchrun ("by_rank"), CUDA ("cuda")."""
    carried_state: list[torch.Tensor] | None = None
    """Recurrent state carried into the next training window (the whole batch's rows)."""
    grad_scaler: dict[str, Any] | None = None
    """fp16 GradScaler state."""
    averager: dict[str, Any] | None = None
    """NT-ASGD: averaging, count, history and (while averaging) the raw weights."""
    run_id: str = ""
    """Identity of the run directory that wrote it ("" in version-1 files)."""
    version: int = VERSION
    """Format version the file was written with."""

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: tensors and built-in values only (readable with weights_only)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "run_id": self.run_id,
            "config": self.config,
            "vocab": self.vocab,
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "progress": asdict(self.progress),
            "rng": self.rng,
            "carried_state": self.carried_state,
            "grad_scaler": self.grad_scaler,
            "averager": self.averager,
        }

    # Read access by the version-1 key names, for code that reads a checkpoint as a dict.
    def __getitem__(self, key: str) -> Any:
        legacy = {"format": FORMAT, "ntasgd": self.averager}
        if key == "progress":
            # One dict per Progress object, so that reading it twice gives the same dict.
            view = self.__dict__.get("_progress_view")
            if view is None or view[0] is not self.progress:
                view = self.__dict__["_progress_view"] = (self.progress, asdict(self.progress))
            return view[1]
        if key in legacy and legacy[key] is not None:
            return legacy[key]
        if key in _FIELD_NAMES and not (key == "averager" and self.averager is None):
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


_FIELD_NAMES = {f.name for f in fields(Checkpoint)}
