"""The config schema: frozen dataclasses that are at once the YAML format, the defaults and the help.

A config is a YAML file with four sections (`data`, `model`, `train`, `run`). Each field carries a
one-line docstring directly under it, which `field_docs()` reads back from the source, so that
`lmtrain config` prints the docs of the code itself. The root `Config` composes the sections; the
data, model and train sections, with their defaults and checks, live with the code that uses
them (lmtrain/data/config.py, lmtrain/models/config.py, lmtrain/training/config.py) and are
re-exported here. Loading and the checks of the whole config live in lmtrain/config/load.py and
checks.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from lmtrain.data.config import DataConfig
from lmtrain.models.config import AdaptiveSoftmaxConfig, ModelConfig
from lmtrain.training.config import TrainConfig

__all__ = [
    "AdaptiveSoftmaxConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
]


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
