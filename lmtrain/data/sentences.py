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

import torch

from lmtrain.data.vocab import AnyVocab
from lmtrain.errors import DataError


def marker_id(vocab: AnyVocab) -> int:
    """The start and end marker of every sequence."""
    eos = vocab.eos_id
    if eos is None:
        raise DataError(
            "this character vocabulary has no newline character, which sentences use as their "
            "start and end marker; train on text with more than one line"
        )
    return eos


def _space_ids(vocab: AnyVocab) -> torch.Tensor:
    """(V,) bool: tokens that are whitespace (characters, bytes and BPE pieces can be)."""
    if vocab.kind == "bpe":
        # A piece's entry is its byte-level spelling (a space is "Ġ"): ask what text it is.
        return torch.tensor(
            [i != vocab.eos_id and vocab.decode([i]).isspace() for i in range(len(vocab))],
            dtype=torch.bool,
        )
    return torch.tensor([len(s) == 1 and s.isspace() for s in vocab.itos], dtype=torch.bool)


def split_sequences(
    ids: torch.Tensor, vocab: AnyVocab, documents: bool = False, max_length: int | None = None
) -> list[torch.Tensor]:
    """Cut an encoded text (`vocab.encode`) into marker-framed sequences, in text order.

    Empty and whitespace-only lines are skipped (a zero-length sequence must never reach
    pack_padded_sequence); with `documents` they separate documents instead, each document
    keeping its line ends. `max_length` keeps at most that many predicted tokens per sequence.
    """
    eos = marker_id(vocab)
    ids = ids.long()
    if ids.numel() == 0:
        return []
    if int(ids[-1]) != eos:
        ids = torch.cat([ids, ids.new_tensor([eos])])  # a last line without its newline
    ends = (ids == eos).nonzero().flatten()  # position of each line's marker
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    # A line is blank when none of its tokens (marker excluded) is visible text.
    visible = ~_space_ids(vocab)[ids] & (ids != eos)
    counts = torch.cat([visible.new_zeros(1, dtype=torch.long), visible.long().cumsum(0)])
    blank = (counts[ends + 1] - counts[starts]) == 0

    spans: list[tuple[int, int]] = []  # [start, end] inclusive of the closing marker
    for s, e, b in zip(starts.tolist(), ends.tolist(), blank.tolist(), strict=True):
        if b:
            continue
        if documents and spans and spans[-1][1] == s - 1:
            spans[-1] = (spans[-1][0], e)  # the next line of the same document
        else:
            spans.append((s, e))

    marker = ids.new_tensor([eos])
    limit = None if max_length is None else max_length + 1
    return [torch.cat([marker, ids[s : e + 1]])[:limit] for s, e in spans]


def sentence_ids(vocab: AnyVocab, text: str) -> tuple[torch.Tensor, int]:
    """(marker-framed sequence, out-of-vocabulary count) of one sentence, as in training."""
    enc = vocab.encode(text.rstrip("\n") + "\n")
    eos = marker_id(vocab)
    return torch.cat([enc.ids.new_tensor([eos]), enc.ids]), enc.oov
