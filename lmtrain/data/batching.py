"""Batches for training and evaluation.

Every batcher yields `Batch` objects with the same fields, so the training loop has one path:
run the model on `inputs` from the state named by `carry`, score `targets`, step. A batcher is
deterministic given its arguments and the epoch number, which is what makes exact resume
possible: the position in the data is just (epoch, index of the next batch).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lmtrain.data.sentences import Sequences


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
    continues: bool = False
    """Each carried row continues its sequence (sentences mode), so what is drawn once per
    sequence (recurrent dropout's mask) is kept. False for a stream's windows: a stream is one
    endless sequence, so each window draws a new mask."""
    global_tokens: int | None = None
    """Under torchrun, the predicted targets of the whole global batch, when the ranks' shares
    differ (sentence shards); None when every rank holds num_tokens (stream shards)."""
    placeholder: bool = False
    """A rank whose rows of a global batch have all ended runs one padding position, so that
    every rank steps together; it predicts nothing, and its loss and gradients are exactly 0."""

    @classmethod
    def empty(cls, global_tokens: int) -> Batch:
        pad = torch.zeros((1, 1), dtype=torch.long)
        return cls(pad, pad, 0, global_tokens=global_tokens, placeholder=True)


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

    `ids` may be any integer dtype, such as the uint16 view of a prepared file: the streams are
    a view of it (no copy of the text), and each window becomes int64 only when it is read.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int) -> None:
        n = (ids.numel() // batch_size) * batch_size
        if n < 2 * batch_size:
            raise ValueError(
                f"{ids.numel()} tokens cannot fill {batch_size} streams of at least 2 tokens"
            )
        self.streams = ids[:n].view(batch_size, -1)  # (B, L): column b of the diagram is row b
        self.batch_size = batch_size
        self.bptt = bptt
        self._carry = torch.arange(batch_size)

    @property
    def length(self) -> int:
        """L: tokens per stream."""
        return self.streams.size(1)

    @property
    def data(self) -> torch.Tensor:
        """(L, B) the streams as columns, as drawn above: a view, in the ids' own dtype."""
        return self.streams.t()

    def window(self, i: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (T, B) int64: rows i .. i + t - 1 and the tokens after them."""
        rows = torch.empty((t + 1, self.batch_size), dtype=torch.long)
        rows.copy_(self.streams[:, i : i + t + 1].t())  # (T + 1, B), converted in the copy
        return rows[:-1], rows[1:]

    def __len__(self) -> int:
        return -(-(self.length - 1) // self.bptt)

    def shard(self, rank: int, world: int) -> StreamBatches:
        """Process `rank`'s columns rank, rank + world, ... (B / world of them).

        Every shard has the same windows (so the same number of batches); the shards' columns
        interleaved are exactly the full batch's, which is how `DistContext.gather_rows`
        reassembles the carried state.
        """
        if self.batch_size % world != 0:
            raise ValueError(f"{self.batch_size} streams do not split over {world} processes")
        part = copy.copy(self)  # keeps the subclass and its settings (variable BPTT's seed)
        part.streams = self.streams[rank::world]  # (B / world, L), a view
        part.batch_size = self.batch_size // world
        part._carry = torch.arange(part.batch_size)
        return part

    @property
    def tokens_per_epoch(self) -> int:
        return (self.length - 1) * self.batch_size

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Windows `start`, `start + 1`, ... of one epoch (the order is the same every epoch)."""
        length = self.length
        for k in range(start, len(self)):
            i = k * self.bptt
            t = min(self.bptt, length - 1 - i)
            inputs, targets = self.window(i, t)
            yield Batch(
                inputs=inputs,
                targets=targets,
                num_tokens=t * self.batch_size,
                carry=None if k == 0 else self._carry,
            )


class SentenceBatches:
    """Separate sequences, bucketed by length, each batch read in chunks of `bptt` steps.

    Sequences are sorted by length (ties broken at random each epoch) and cut into batches of
    `batch_size` neighbours, so that a batch holds sequences of nearly equal length and little
    padding; the order of the batches is shuffled each epoch. Within a batch the rows are
    longest first, which makes the rows still running in chunk k a prefix of those in chunk k-1:

        lengths (inputs)  9 7 3      bptt 4:  chunk 0: rows 0 1 2, lengths 4 4 3 (fresh state)
                                              chunk 1: rows 0 1,   lengths 4 3   (carry 0 1)
                                              chunk 2: row  0,     length  1     (carry 0)

    Each chunk is one `Batch`: chunk k starts from the final state of chunk k-1 of the same
    sequences (`carry`), sequences that ended drop out, and no state passes from one sequence to
    another. The number of chunks of a batch depends only on its longest sequence, which is the
    same whatever the tie-breaking, so `len()` is the same every epoch.

    Under torchrun (`shard`), every rank draws the same plan and takes rows rank, rank + world,
    ... of each batch. Rank 0 holds the longest row, so the batch's chunk count is everyone's:
    a rank whose rows have ended runs placeholder chunks until the batch is done.
    """

    def __init__(
        self,
        sequences: Sequence[torch.Tensor],
        batch_size: int,
        bptt: int,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if isinstance(sequences, Sequences):
            lengths = sequences.lengths  # known without reading the text
        else:
            lengths = torch.tensor([s.numel() for s in sequences], dtype=torch.long)
        if lengths.numel() == 0:
            raise ValueError("there are no sequences")
        # Internal invariant: split_sequences frames every sequence with its start marker.
        assert int(lengths.min()) >= 2, "a sequence needs a start marker and one target"
        # Rows are read when their batch comes: a copy of every sequence would be a second copy
        # of the whole text, where `Sequences` holds only offsets into the (mapped) ids.
        self.sequences = sequences
        self.steps = lengths - 1  # inputs (= predicted targets) per sequence
        self.batch_size = batch_size
        self.bptt = bptt
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world = 0, 1
        longest = torch.sort(self.steps, descending=True, stable=True).values
        firsts = longest[::batch_size]  # the longest sequence of each batch
        self._chunks = ((firsts + bptt - 1) // bptt).tolist()  # chunks per batch, by rank

    def __len__(self) -> int:
        return sum(self._chunks)

    def shard(self, rank: int, world: int) -> SentenceBatches:
        """Process `rank`'s rows (rank, rank + world, ...) of every batch, for torchrun."""
        if self.batch_size % world != 0:
            raise ValueError(f"{self.batch_size} sequences do not split over {world} processes")
        part = copy.copy(self)
        part.rank, part.world = rank, world
        return part

    @property
    def tokens_per_epoch(self) -> int:
        return int(self.steps.sum())

    def _plan(self, epoch: int) -> tuple[list[torch.Tensor], list[int]]:
        """(sequence indices of each batch by length rank, order of the batches) for `epoch`."""
        n = self.steps.numel()
        # One generator per (seed, epoch), kept within the 64-bit seed range torch accepts.
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        # A stable sort of a random permutation: equal lengths end up in random order.
        by_length = perm[torch.sort(self.steps[perm], descending=True, stable=True).indices]
        groups = list(by_length.split(self.batch_size))
        order = torch.randperm(len(groups), generator=g) if self.shuffle else range(len(groups))
        return groups, [int(i) for i in order]

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[Batch]:
        """Chunks `start`, `start + 1`, ... of one epoch; the same (seed, epoch), the same chunks."""
        groups, order = self._plan(epoch)
        k = 0
        for rank in order:
            n_chunks = self._chunks[rank]
            if k + n_chunks <= start:
                k += n_chunks
                continue
            every = self.steps[groups[rank]]  # the whole batch, longest first
            rows = groups[rank][self.rank :: self.world]  # this process's rows
            steps = every[self.rank :: self.world]
            padded = self._pad(rows, steps) if rows.numel() else None  # (L + 1, B)
            for c in range(n_chunks):
                if k >= start:
                    yield self._chunk(padded, steps, c, every)
                k += 1

    def _pad(self, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        # Rows are already longest first (sorted descending, ties in any order).
        if isinstance(self.sequences, Sequences):
            return self.sequences.columns(rows)
        width = int(steps[0]) + 1
        out = torch.zeros((width, rows.numel()), dtype=torch.long)
        for j, (i, s) in enumerate(zip(rows.tolist(), steps.tolist(), strict=True)):
            out[: s + 1, j] = self.sequences[i]
        return out

    def sequence_rows(self, epoch: int = 0) -> Iterator[torch.Tensor]:
        """The sequence indices of the rows of each chunk, in the order `batches` yields them."""
        groups, order = self._plan(epoch)
        for rank in order:
            rows = groups[rank][self.rank :: self.world]
            steps = self.steps[rows]
            for c in range(self._chunks[rank]):
                yield rows[: int((steps > c * self.bptt).sum())]

    def _chunk(
        self, padded: torch.Tensor | None, steps: torch.Tensor, c: int, every: torch.Tensor
    ) -> Batch:
        lo = c * self.bptt
        live = int((steps > lo).sum())  # rows still running: a prefix, longest first
        # Under torchrun the ranks' shares differ: the step's loss needs everyone's count.
        everyone = int((every - lo).clamp(0, self.bptt).sum()) if self.world > 1 else None
        if live == 0:
            assert everyone is not None  # one process always has a row in every chunk
            return Batch.empty(everyone)
        assert padded is not None
        lengths = (steps[:live] - lo).clamp(max=self.bptt)
        t = int(lengths[0])
        # Past its end a row holds 0: padding inputs are never read (the rows are packed) and
        # padding targets are ignored by the loss.
        inputs = padded[lo : lo + t, :live].contiguous()  # (T, B_k)
        targets = padded[lo + 1 : lo + 1 + t, :live].contiguous()  # (T, B_k)
        # A chunk whose rows all have full length runs unpacked: packing costs time on CPU.
        uniform = bool((lengths == t).all())
        return Batch(
            inputs=inputs,
            targets=targets,
            num_tokens=int(lengths.sum()),
            lengths=None if uniform else lengths,
            carry=None if c == 0 else torch.arange(live),
            continues=c > 0,
            global_tokens=everyone,
        )
