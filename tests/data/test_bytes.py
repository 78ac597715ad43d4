"""The byte tokeniser: every text comes back exactly, and it fits where any tokenizer does."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmtrain.data.prepared import id_dtype
from lmtrain.data.sentences import split_sequences
from lmtrain.data.tokenizers.byte import OFFSET, ByteVocab

# Any code point, lone surrogates included: a Python str may hold them.
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF))


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
@example("")
@example("<pad> <unk> <eos>\n")
@example("\ud800 lone surrogate")
@example("naïve café 日本語 🙂\r\n\x00")
def test_decode_of_encode_is_the_text(text: str) -> None:
    vocab = ByteVocab()
    enc = vocab.encode(text)
    assert vocab.decode(enc.ids) == text
    assert enc.oov == 0
    assert enc.ids.numel() == len(text.encode("utf-8", "surrogatepass"))
    if enc.ids.numel():
        assert int(enc.ids.min()) >= OFFSET and int(enc.ids.max()) < len(vocab)


def test_ids_are_the_bytes_after_the_specials() -> None:
    vocab = ByteVocab()
    assert vocab.encode("é\n").ids.tolist() == [0xC3 + 2, 0xA9 + 2, 10 + 2]
    assert vocab.itos[:2] == ["<pad>", "<unk>"] and len(vocab) == 258
    assert vocab.itos[ord("a") + 2] == "a" and vocab.itos[0xFF + 2] == "<0xFF>"
    assert vocab.tokenize("é!") == ["<0xC3>", "<0xA9>", "!"]


def test_long_text_is_encoded_in_pieces_without_changing_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lmtrain.data.tokenizers.byte as byte_module

    text = "ab€\n" * 50
    whole = ByteVocab().encode(text).ids
    monkeypatch.setattr(byte_module, "_PIECE_CHARS", 3)  # pieces cut through multi-byte chars
    assert torch.equal(ByteVocab().encode(text).ids, whole)


def test_decode_drops_specials_and_replaces_invalid_bytes() -> None:
    vocab = ByteVocab()
    assert vocab.decode([0, ord("h") + 2, 1, ord("i") + 2]) == "hi"
    assert vocab.decode(torch.tensor([0xFF + 2, ord("x") + 2])) == "\ufffdx"


def test_sentences_mode_splits_bytes_at_newlines() -> None:
    vocab = ByteVocab()
    sequences = split_sequences(vocab.encode("ab\n  \ncd\n").ids, vocab)  # type: ignore[arg-type]
    eos = vocab.eos_id
    assert [s.tolist() for s in sequences] == [
        [eos, ord("a") + 2, ord("b") + 2, eos],
        [eos, ord("c") + 2, ord("d") + 2, eos],
    ]


def test_round_trips_through_a_dict_and_needs_uint16() -> None:
    vocab = ByteVocab.from_dict(ByteVocab().to_dict())
    assert vocab.itos == ByteVocab().itos
    assert id_dtype(len(vocab)) == torch.uint16  # 258 ids: two more than a byte holds
    with pytest.raises(ValueError, match="not a byte vocabulary"):
        ByteVocab.from_dict({"kind": "char", "itos": ["<pad>", "<unk>"]})
