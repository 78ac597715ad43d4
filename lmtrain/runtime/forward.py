"""The model and its loss as one forward: what a training step calls, and what DDP wraps."""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, ...]
"""A recurrent state, (layers, B, H) tensors: runtime moves it, lmtrain/models/state.py makes it."""


class LossForward(nn.Module):
    """The model and its loss as one forward, which is what DistributedDataParallel wraps.

    DDP hooks gradient all-reduce onto the graph its forward builds; computing the loss inside
    that forward covers the output layer too.
    """

    def __init__(self, model: nn.Module, touch_all: bool = False) -> None:
        """`model`: a LanguageModel (lmtrain/models/lm.py), for its features and output.nll."""
        super().__init__()
        self.model = model
        # An adaptive softmax's tail clusters get no gradient in a batch without their words,
        # and DDP expects a gradient for every parameter. Adding 0 * (sum of each) gives them
        # an exact zero gradient; cheaper than find_unused_parameters' graph search each step.
        self.spare = (
            [p for n, p in model.named_parameters() if ".tail." in f".{n}"] if touch_all else []
        )

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        state: State,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, torch.Tensor, torch.Tensor]:
        """(summed NLL, final state, hidden (T, B, H), raw (T, B, H)).

        hidden is the last layer's output after dropout, raw the same before dropout; the AR and
        TAR penalties read them (lmtrain/training/step.py).
        """
        hidden, new_state, raw = self.model.features(inputs, state, lengths)  # (T, B, H)
        nll = self.model.output.nll(hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1))
        for p in self.spare:
            nll = nll + 0.0 * p.sum()
        return nll, new_state, hidden, raw
