"""Training: `fit(cfg)` builds a run once (setup.py) and runs the loop (loop.py).

setup.py      config -> Session: device and processes, run directory, data, model,
              optimiser, precision, averager, the step, logger, resume state
data.py       text -> Corpus -> batches          optim.py    optimiser, learning rate
step.py       one optimiser step, from pieces    averaging.py  NT-ASGD (or none)
state.py      checkpoint payload and restore     validation.py the figure at eval points
loop.py       Trainer.train_epoch: the loop      run.py      fit, FitResult
window.py     the loop's clock and counters between logging points
config.py     the train section, the optimiser table and the memory estimate (no torch)

The names below are imported on first use (PEP 562), so that reading the config's train section
(lmtrain/training/config.py) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmtrain import lazy_getattr

if TYPE_CHECKING:
    from lmtrain.training.run import FitResult, fit

__all__ = ["FitResult", "fit"]

__getattr__ = lazy_getattr(__name__, {"FitResult": "run", "fit": "run"})
