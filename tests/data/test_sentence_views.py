"""Sentences mode reads its sequences from the encoded text, holding only per-sequence offsets."""

from __future__ import annotations

import pytest
import torch

from lmtrain.data import SentenceBatches
from lmtrain.data import sentences as sentences_module
from lmtrain.data.sentences import Sequences, marker_id, split_sequences
from lmtrain.data.tokenizers import Settings, Tokenizer, build

TEXT = "the cat sat\n\n  \nthe dog\nsat on a mat\n\n\nred cat\n \nthe end"


def _reference(
    ids: torch.Tensor, vocab: Tokenizer, documents: bool, max_length: int | None
) -> list[torch.Tensor]:
    """The whole-text int64 list split_sequences used to return, kept here as the reference."""
    eos = marker_id(vocab)
    ids = ids.long()
    if int(ids[-1]) != eos:
        ids = torch.cat([ids, ids.new_tensor([eos])])
    ends = (ids == eos).nonzero().flatten()
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    visible = ~vocab.space_ids()[ids] & (ids != eos)
    counts = torch.cat([visible.new_zeros(1, dtype=torch.long), visible.long().cumsum(0)])
    blank = (counts[ends + 1] - counts[starts]) == 0
    spans: list[tuple[int, int]] = []
    for s, e, b in zip(starts.tolist(), ends.tolist(), blank.tolist(), strict=True):
        if b:
            continue
        if documents and spans and spans[-1][1] == s - 1:
            spans[-1] = (spans[-1][0], e)
        else:
            spans.append((s, e))
    marker = ids.new_tensor([eos])
    limit = None if max_length is None else max_length + 1
    return [torch.cat([marker, ids[s : e + 1]])[:limit] for s, e in spans]


@pytest.mark.parametrize("kind", ["word", "char"])
@pytest.mark.parametrize("documents", [False, True])
@pytest.mark.parametrize("max_length", [None, 1, 3])
@pytest.mark.parametrize("newline_at_end", [False, True])
@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_sequences_equal_the_whole_text_list(
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    documents: bool,
    max_length: int | None,
    newline_at_end: bool,
    chunk: int,
) -> None:
    monkeypatch.setattr(sentences_module, "_CHUNK", chunk)  # line ends across chunk borders too
    text = TEXT + ("\n" if newline_at_end else "")
    vocab = build(kind, text, Settings())
    ids = vocab.encode(text).ids
    want = _reference(ids, vocab, documents, max_length)
    for narrow in (ids, ids.to(torch.uint16)):
        got = split_sequences(narrow, vocab, documents, max_length)
        assert isinstance(got, Sequences) and len(got) == len(want)
        assert got.lengths.tolist() == [s.numel() for s in want]
        for i, w in enumerate(want):
            assert got[i].dtype == torch.long and torch.equal(got[i], w)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
        assert torch.equal(got[-1], want[-1])


@pytest.mark.parametrize(("documents", "max_length"), [(False, None), (True, None), (True, 5)])
def test_batches_of_sequences_equal_batches_of_the_list(
    documents: bool, max_length: int | None
) -> None:
    vocab = build("char", TEXT * 5, Settings())
    ids = vocab.encode(TEXT * 5).ids  # the last line has no newline: its marker is supplied
    seqs = split_sequences(ids.to(torch.uint16), vocab, documents, max_length)
    got = SentenceBatches(seqs, 3, 4, seed=2)
    want = SentenceBatches(_reference(ids, vocab, documents, max_length), 3, 4, seed=2)
    assert len(got) == len(want)
    for a, b in zip(got.batches(1), want.batches(1), strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert a.num_tokens == b.num_tokens
        assert (a.carry is None and b.carry is None) or torch.equal(a.carry, b.carry)


def test_no_int64_copy_of_the_whole_text_is_made_or_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "the cat sat\n\nthe dog\n" * 400
    vocab = build("word", text, Settings())
    ids = vocab.encode(text).ids.to(torch.uint16)
    monkeypatch.setattr(sentences_module, "_CHUNK", 64)
    long = torch.Tensor.long

    def no_whole_text(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        assert self.numel() < ids.numel(), "the whole text was converted to int64"
        return long(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "long", no_whole_text)
    seqs = split_sequences(ids, vocab, documents=True)
    monkeypatch.undo()
    assert seqs.ids is ids  # the text stays as given, in its narrow type
    for value in vars(seqs).values():
        if isinstance(value, torch.Tensor) and value is not ids:
            assert value.numel() <= len(seqs)  # per-sequence offsets and lengths only
    batches = SentenceBatches(seqs, 4, 5)
    for value in vars(batches).values():
        if isinstance(value, torch.Tensor):
            assert value.numel() <= len(seqs)
