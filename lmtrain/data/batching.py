"""Batches for training and evaluation.

Every batcher yields `Batch` objects with the same fields, so the training loop has one path:
run the model on `inputs` from the state named by `carry`, score `targets`, step. A batcher is
deterministic given its arguments and the epoch number, which is what makes exact resume
possible: the position in the data is just (epoch, index of the next batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    inputs: torch.Tensor
    """(T, B) token ids; padding (id 0) where a row is shorter than T."""
    targets: torch.Tensor
    """(T, B) next-token ids; 0 (`<pad>`) where nothing is predicted, which the loss ignores."""
    num_tokens: int
    """Number of predicted (non-padding) targets, known on the host without a device sync."""
    lengths: torch.Tensor | None = None
    """(B,) CPU int64 row lengths for packed sequences; None when every row has length T."""
    carry: torch.Tensor | None = None
    """(B,) rows of the previous batch's final state that start each row here; None = fresh."""


class StreamBatches:
    """One token stream cut into `batch_size` parallel streams, read in windows of `bptt`.

    The stream is trimmed to a multiple of B and laid out column by column, so that row i of
    column b follows row i-1 of the same column in the text:

        stream:  a b c d e f g h i j k l m n o p q r     (N = 18 tokens, B = 3)

                  col 0  col 1  col 2
                    a      g      m     <- window 0 (bptt 2): inputs rows 0-1,
                    b      h      n        targets rows 1-2
                    c      i      o     <- window 1: inputs rows 2-3, targets rows 3-4
                    d      j      p
                    e      k      q     <- window 2: inputs row 4 only (the last row has
                    f      l      r        nothing after it to predict)

    Window k's state carries over from window k-1 of the same column (`carry` = all rows).
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int) -> None:
        n = (ids.numel() // batch_size) * batch_size
        if n < 2 * batch_size:
            raise ValueError(
                f"{ids.numel()} tokens cannot fill {batch_size} streams of at least 2 tokens"
            )
        self.data = ids[:n].view(batch_size, -1).t().contiguous()  # (L, B)
        self.batch_size = batch_size
        self.bptt = bptt
        self._carry = torch.arange(batch_size)

    def __len__(self) -> int:
        return -(-(self.data.size(0) - 1) // self.bptt)

    def shard(self, rank: int, world: int) -> StreamBatches:
        """Process `rank`'s block of B / world columns, for multi-process training.

        Every shard has the same windows (so the same number of batches); the shards' columns
        side by side are exactly the full batch's.
        """
        if self.batch_size % world != 0:
            raise ValueError(f"{self.batch_size} streams do not split over {world} processes")
        b = self.batch_size // world
        part = object.__new__(StreamBatches)
        part.data = self.data[:, rank * b : (rank + 1) * b].contiguous()  # (L, B / world)
        part.batch_size = b
        part.bptt = self.bptt
        part._carry = torch.arange(b)
        return part

    @property
    def tokens_per_epoch(self) -> int:
        return (self.data.size(0) - 1) * self.batch_size

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Windows `start`, `start + 1`, ... of one epoch (the order is the same every epoch)."""
        length = self.data.size(0)
        for k in range(start, len(self)):
            i = k * self.bptt
            t = min(self.bptt, length - 1 - i)
            yield Batch(
                inputs=self.data[i : i + t],
                targets=self.data[i + 1 : i + 1 + t],
                num_tokens=t * self.batch_size,
                carry=None if k == 0 else self._carry,
            )
