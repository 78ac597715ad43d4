"""Variable-length BPTT windows (Merity et al. 2017, AWD-LSTM section 4.1).

With a fixed window every token sits at the same offset within its window in every epoch, so
the tokens near a window's start only ever see a short history. AWD-LSTM draws each window's
length: the base length `bptt` with probability 0.95, else `bptt / 2`, then a length from
N(base, 5), at least 5 and at most bptt + 40 (their `max_seq_len_delta`). The learning rate of that
step is scaled by length / bptt, so that short windows do not weigh as much as full ones.

The lengths come from a generator seeded by (seed + epoch), so the windows of an epoch are a pure
function of (seed, epoch) and exact resume still works: the position in the data stays
(epoch, index of the next window).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

from lmtrain.data.batching import Batch, StreamBatches

MIN_LENGTH = 5
MAX_EXTRA = 40


class VariableStreamBatches(StreamBatches):
    """StreamBatches whose windows have the AWD-LSTM random lengths, fixed per (seed, epoch).

    `len()` is the number of windows of epoch 0; other epochs differ by a few windows.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int, seed: int) -> None:
        super().__init__(ids, batch_size, bptt)
        self.seed = seed

    @functools.lru_cache(maxsize=2)  # noqa: B019 - a handful of epochs, freed with the object
    def windows(self, epoch: int) -> list[tuple[int, int]]:
        """(start row, length) of every window of `epoch`, in order."""
        gen = torch.Generator().manual_seed(self.seed + epoch)
        last = self.length - 1  # rows that have a next token
        out: list[tuple[int, int]] = []
        i = 0
        while i < last:
            base = self.bptt if torch.rand((), generator=gen).item() < 0.95 else self.bptt / 2
            drawn = int(base + 5.0 * torch.randn((), generator=gen).item())
            length = min(max(MIN_LENGTH, drawn), self.bptt + MAX_EXTRA, last - i)
            out.append((i, length))
            i += length
        return out

    def __len__(self) -> int:
        return len(self.windows(0))

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        for k, (i, t) in enumerate(self.windows(epoch)[start:], start):
            inputs, targets = self.window(i, t)
            yield Batch(
                inputs=inputs,
                targets=targets,
                num_tokens=t * self.batch_size,
                carry=None if k == 0 else self._carry,
            )
