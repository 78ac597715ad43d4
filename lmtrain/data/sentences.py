"""Text as separate sequences (sentences mode): lines or blank-line separated documents.

Every sequence starts with the end-of-line marker (`<eos>` for word vocabularies, the newline
character for character vocabularies) and ends with it:

    text line:   the cat sat
    sequence:    <eos> the cat sat <eos>
    inputs:      <eos> the cat sat          (from a zero state)
    targets:           the cat sat <eos>    (4 predicted tokens)

The leading marker is never predicted; it only gives the first real token something to be
predicted from, so that the first word of a sentence counts in its probability, exactly as it
does in stream mode, where the previous line's `<eos>` comes before it. `lmtrain score` builds
its sequences with the same function, so a sentence scored alone gets the same figure as the
same line inside a sentences-mode evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lmtrain.data.tokenizers import Tokenizer
from lmtrain.errors import DataError


def marker_id(vocab: Tokenizer) -> int:
    """The start and end marker of every sequence."""
    eos = vocab.eos_id
    if eos is None:
        raise DataError(
            "this character vocabulary has no newline character, which sentences use as their "
            "start and end marker; train on text with more than one line"
        )
    return eos


# Tokens converted to int64 at a time while looking for line ends: the ids may be a narrow view
# of a memory-mapped file far larger than memory, so the whole text is never converted at once.
_CHUNK = 1 << 20


class Sequences:
    """Marker-framed sequences read on demand from the encoded text, held only as offsets.

    Indexing and iteration give the same int64 tensors a list of whole sequences would; the ids
    stay as given (a uint16 view of a prepared file stays mapped), plus two offsets and a length
    per sequence.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        marker: int,
        starts: torch.Tensor,
        ends: torch.Tensor,
        limit: int | None,
    ) -> None:
        self.ids = ids
        self.marker = marker
        self.starts = starts
        """(N,) int64 position of each sequence's first token."""
        self.ends = ends
        """(N,) int64 position of each closing marker; len(ids) for a last line without one."""
        lengths = ends - starts + 2  # the leading marker, the tokens, the closing marker
        self.lengths = lengths if limit is None else lengths.clamp(max=limit)
        """(N,) int64 tokens of each sequence, leading marker included."""

    def __len__(self) -> int:
        return self.starts.numel()

    def __getitem__(self, i: int) -> torch.Tensor:
        i = range(len(self))[i]  # negative indices, and IndexError past the end as a list does
        s, n = int(self.starts[i]), int(self.lengths[i])
        # Prefilled with the marker: the leading one, and the closing one a last line lacks.
        out = torch.full((n,), self.marker, dtype=torch.long)
        body = self.ids[s : s + n - 1]
        out[1 : 1 + body.numel()] = body
        return out

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))

    def columns(self, rows: torch.Tensor) -> torch.Tensor:
        """(L, B) int64: sequences `rows` side by side, 0 past each one's end, L the longest.

        One gather for a whole batch: reading the rows one by one would cost the training loop
        a Python round trip per sequence.
        """
        lengths = self.lengths[rows]  # (B,)
        k = torch.arange(int(lengths.max())).unsqueeze(1)  # (L, 1) place within a sequence
        at = self.starts[rows] + k - 1  # (L, B) where place k is read from in the text
        inside = (k >= 1) & (k < lengths)  # the tokens after the leading marker
        read = inside & (at < self.ids.numel())  # the rest is a last line's missing marker
        out = torch.zeros(at.shape, dtype=torch.long)
        out[read] = self.ids[at[read]].long()
        out[inside & ~read] = self.marker
        out[0] = self.marker
        return out


def _line_ends(
    ids: torch.Tensor, eos: int, space: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(marker positions, visible tokens up to and including each marker), chunk by chunk."""
    ends, seen = [], []
    total = 0
    for lo in range(0, ids.numel(), _CHUNK):
        chunk = ids[lo : lo + _CHUNK]
        is_eos = chunk == eos
        at = is_eos.nonzero().flatten()
        # A token is visible text when it is neither whitespace nor the marker.
        visible = (~space[chunk.long()] & ~is_eos).cumsum(0)
        ends.append(at + lo)
        seen.append(visible[at] + total)
        total += int(visible[-1])
    if int(ids[-1]) != eos:  # a last line without its newline ends at a virtual marker
        ends.append(torch.tensor([ids.numel()]))
        seen.append(torch.tensor([total]))
    return torch.cat(ends), torch.cat(seen)


def split_sequences(
    ids: torch.Tensor, vocab: Tokenizer, documents: bool = False, max_length: int | None = None
) -> Sequences:
    """Cut an encoded text (`vocab.encode`) into marker-framed sequences, in text order.

    Empty and whitespace-only lines are skipped (a zero-length sequence must never reach
    pack_padded_sequence); with `documents` they separate documents instead, each document
    keeping its line ends. `max_length` keeps at most that many predicted tokens per sequence.
    """
    eos = marker_id(vocab)
    limit = None if max_length is None else max_length + 1
    if ids.numel() == 0:
        none = torch.zeros(0, dtype=torch.long)
        return Sequences(ids, eos, none, none, limit)
    ends, seen = _line_ends(ids, eos, vocab.space_ids())  # one entry per line
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    # A line is blank when none of its tokens (marker excluded) is visible text.
    blank = torch.diff(seen, prepend=seen.new_zeros(1)) == 0
    keep = ~blank
    if not documents:
        return Sequences(ids, eos, starts[keep], ends[keep], limit)
    # A document is a run of kept lines: it opens after a blank line and closes before one.
    opens = keep & torch.cat([blank.new_ones(1), blank[:-1]])
    closes = keep & torch.cat([blank[1:], blank.new_ones(1)])
    return Sequences(ids, eos, starts[opens], ends[closes], limit)


def sentence_ids(vocab: Tokenizer, text: str) -> tuple[torch.Tensor, int]:
    """(marker-framed sequence, out-of-vocabulary count) of one sentence, as in training."""
    enc = vocab.encode(text.rstrip("\n") + "\n")
    eos = marker_id(vocab)
    return torch.cat([enc.ids.new_tensor([eos]), enc.ids]), enc.oov
