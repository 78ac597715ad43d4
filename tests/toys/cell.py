"""A toy cell, h_t = h_{t-1} / 2 + tanh(W x_t + b), registered from this module alone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lmtrain.models.config import CELLS, CellSpec, ModelConfig, register
from lmtrain.models.state import State

NAME = "halving"


class HalvingLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, input_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_size, cfg.hidden_size)

    @staticmethod
    def state_widths(cfg: ModelConfig) -> tuple[int, ...]:
        return (cfg.hidden_size,)

    def forward(
        self, x: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        (h,) = state
        outs = []
        for t, u in enumerate(torch.tanh(self.proj(x))):
            new = h / 2 + u
            h = new if mask is None else torch.where(mask[t], new, h)
            outs.append(new if mask is None else new * mask[t])
        return torch.stack(outs), (h,)


def install() -> Callable[[], None]:
    register(NAME, CellSpec(f"{__name__}:HalvingLayer", gates=1, recurrent=False))
    return lambda: CELLS.pop(NAME) and None
