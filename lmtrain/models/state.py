"""Recurrent state as a tuple of (num_layers, B, H) tensors: (h,) or (h, c) for LSTMs."""

from __future__ import annotations

import torch

State = tuple[torch.Tensor, ...]


def detach_state(state: State) -> State:
    # Truncated BPTT: the values flow into the next window, the gradient does not. Without
    # this, backward would run through every window since the start of the epoch, its cost
    # and memory growing with each step.
    return tuple(s.detach() for s in state)


def select_rows(state: State, rows: torch.Tensor) -> State:
    """The state of the given batch rows (dim 1), in that order."""
    # non_blocking: a blocking host-to-GPU copy would wait for the GPU queue every step.
    return tuple(s.index_select(1, rows.to(s.device, non_blocking=True)) for s in state)
