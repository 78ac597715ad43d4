"""A toy optimiser, SGD that counts its steps, registered from this module alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmtrain.training.config import OPTIMIZERS, OptimizerSpec, register

NAME = "counting_sgd"


class CountingSGD(torch.optim.SGD):
    steps = 0

    def __init__(self, params: Any, lr: float, weight_decay: float) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)

    def step(self, closure: Any = None) -> Any:
        CountingSGD.steps += 1
        return super().step(closure)


def install() -> Callable[[], None]:
    CountingSGD.steps = 0
    register(NAME, OptimizerSpec(f"{__name__}:CountingSGD", slots=0, momentum=False))
    return lambda: OPTIMIZERS.pop(NAME) and None
