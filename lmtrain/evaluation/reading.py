"""How every evaluation reads a model: in eval mode, and a window of time steps at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

LOGIT_ELEMENTS = 1 << 23
"""Logits (time steps x rows x vocabulary) an evaluation materialises at once: bounds memory for
large vocabularies."""


@contextlib.contextmanager
def evaluating(model: torch.nn.Module, grad: bool = False) -> Iterator[None]:
    """`model` in eval mode (no dropout) and, unless `grad`, without autograd; its mode is
    restored on the way out, however the block ends."""
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield
    finally:
        model.train(was_training)


def logit_window(vocab_size: int, rows: int) -> int:
    """Time steps read per forward when `rows` streams or sequences are read side by side: as
    many as keep the logits within LOGIT_ELEMENTS, and within 16..4096."""
    return max(16, min(4096, LOGIT_ELEMENTS // (vocab_size * rows)))
