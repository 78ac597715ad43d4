"""`Session`: the finished objects one training run is made of, built once by setup.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmtrain.config import Config
from lmtrain.metrics import RunLogger
from lmtrain.models import LanguageModel
from lmtrain.rundir import RunDirectory
from lmtrain.runtime.distributed import Context
from lmtrain.runtime.precision import Amp
from lmtrain.training.averaging import Averager
from lmtrain.training.data import Batches, Corpus
from lmtrain.training.optim import LRSchedule
from lmtrain.training.step import Step


@dataclass(frozen=True)
class Session:
    cfg: Config
    run: RunDirectory | None
    """run.path, owned (locked) by this process for the run; see lmtrain/rundir. None: a
    session without a run directory (setup.build_session), which writes nothing."""
    ctx: Context
    """This process's place in the job (one process, or a torchrun rank)."""
    device: torch.device
    corpus: Corpus
    valid_sequences: list[torch.Tensor] | None
    """Sentences mode: the validation split as whole sequences; stream mode: None."""
    batches: Batches
    """This process's share of each global batch."""
    total_steps: int
    model: LanguageModel
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    amp: Amp
    averager: Averager
    step: Step
    logger: RunLogger
