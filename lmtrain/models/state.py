"""Recurrent state as a tuple of (num_layers, B, H) tensors: (h,) or (h, c) for LSTMs, then
recurrent dropout's masks, which live as long as a sequence's state (cells.RecurrentLayer)."""

from __future__ import annotations

import torch

from lmtrain.runtime.forward import State  # the type runtime moves, written once there


def detach_state(state: State) -> State:
    # Truncated BPTT: the values flow into the next window, the gradient does not. Without
    # this, backward would run through every window since the start of the epoch, its cost
    # and memory growing with each step.
    return tuple(s.detach() for s in state)


def carried_state(state: State) -> State:
    """The state training carries into the next window and saves: detached, and in fp32.

    Under bf16/fp16 autocast a fused recurrent kernel (cuDNN's, oneDNN's plain RNN) returns
    its state in that precision; it is kept in fp32, so the checkpoint, a resume in another
    precision and the next window all see one dtype (the kernel's value, not rounded again;
    autocast casts it down again at the next window). Evaluation keeps the model's own dtype
    (detach_state): a model converted to bf16 by hand needs its state in bf16.
    """
    return tuple(
        s.float() if s.dtype in (torch.bfloat16, torch.float16) else s for s in detach_state(state)
    )


def select_rows(state: State, rows: torch.Tensor) -> State:
    """The state of the given batch rows (dim 1), in that order."""
    # non_blocking: a blocking host-to-GPU copy would wait for the GPU queue every step.
    return tuple(s.index_select(1, rows.to(s.device, non_blocking=True)) for s in state)
