"""The BPE tokeniser: trained on the training split, every text comes back, specials stay ours."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import TINY_TEXT, tiny_config
from lmtrain.data.prepare import prepare_corpus
from lmtrain.data.prepared import id_dtype
from lmtrain.data.sentences import split_sequences
from lmtrain.data.tokenizers import Settings, build, from_dict
from lmtrain.data.tokenizers.bpe import OFFSET, BpeVocab, train_tokenizer
from lmtrain.errors import DataError

# Valid Unicode: every code point but the surrogates, which no UTF-8 text can hold.
UNICODE_TEXT = st.text(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=("Cs",))
)
CORPUS = TINY_TEXT * 3 + "naïve café, 日本語 🙂\tend\r\n<eos> <pad> <unk>\n"


@pytest.fixture(scope="module")
def bpe() -> BpeVocab:
    return BpeVocab.train(CORPUS, 300)


@settings(max_examples=300, deadline=None)
@given(UNICODE_TEXT)
@example("")
@example("\n")
@example("a\nb")
@example("a\nb\n\n")
@example("<pad> <unk> <eos>\n")
@example("  leading and trailing spaces  \n\t\r\n")
@example("naïve café 日本語 🙂\r\n\x00")
def test_decode_of_encode_is_the_text(bpe: BpeVocab, text: str) -> None:
    enc = bpe.encode(text)
    assert bpe.decode(enc.ids) == text
    assert enc.oov == 0
    # Newlines are exactly the <eos> ids, and nothing else is a special.
    assert int((enc.ids == bpe.eos_id).sum()) == text.count("\n")
    assert not bool((enc.ids < OFFSET).logical_and(enc.ids != bpe.eos_id).any())


def test_training_is_deterministic_and_has_the_asked_size() -> None:
    first, second = train_tokenizer(CORPUS, 300), train_tokenizer(CORPUS, 300)
    assert first == second
    vocab = BpeVocab(first)
    assert len(vocab) == 300
    assert vocab.itos[:3] == ["<pad>", "<unk>", "<eos>"]
    assert len(set(vocab.itos)) == len(vocab.itos)
    assert id_dtype(len(vocab)) == torch.uint16
    # Merges were learned: a frequent word is one piece, fewer ids than bytes.
    assert bpe_ids(vocab, "the cat") == [vocab.stoi["the"], vocab.stoi["Ġcat"]]


def bpe_ids(vocab: BpeVocab, text: str) -> list[int]:
    return vocab.encode(text).ids.tolist()


def test_written_specials_are_ordinary_text(bpe: BpeVocab) -> None:
    ids = bpe_ids(bpe, "<pad> <unk> <eos>")
    assert min(ids) >= OFFSET  # no padding, unknown or end-of-line id from spelling them
    assert bpe.decode(ids) == "<pad> <unk> <eos>"
    assert bpe.tokenize("a b\nc")[-2:] == ["<eos>", "c"]


def test_a_vocabulary_smaller_than_the_bytes_is_refused() -> None:
    with pytest.raises(DataError, match="at least 259"):
        train_tokenizer(CORPUS, 100)


def test_lone_surrogate_is_a_clear_error(bpe: BpeVocab) -> None:
    with pytest.raises(DataError, match="lone surrogate"):
        bpe.encode("a\ud800b")


def test_round_trips_through_a_dict_and_the_checkpoint_shape(bpe: BpeVocab) -> None:
    d = bpe.to_dict()
    assert d["kind"] == "bpe" and isinstance(d["tokenizer"], str)
    again = from_dict(json.loads(json.dumps(d)))
    assert isinstance(again, BpeVocab) and again.itos == bpe.itos
    assert torch.equal(again.encode(CORPUS).ids, bpe.encode(CORPUS).ids)
    with pytest.raises(ValueError, match="entries"):
        BpeVocab.from_dict({**d, "itos": d["itos"][:-1]})
    with pytest.raises(ValueError, match="does not load"):
        BpeVocab.from_dict({**d, "tokenizer": "{}"})


def test_decode_drops_pad_and_unk_and_replaces_broken_bytes(bpe: BpeVocab) -> None:
    e_acute = bpe.encode("é").ids.tolist()
    assert bpe.decode([0, 1, *e_acute, 2]) == "é\n"
    first_byte = bpe.stoi["Ã"]  # the first of é's two UTF-8 bytes, alone
    assert bpe.decode([first_byte]) == "\ufffd"


def test_a_tokenizer_file_is_read_from_disk(tmp_path: Path, bpe: BpeVocab) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(bpe.tokenizer_json, encoding="utf-8")
    vocab = build("bpe", "text that plays no part", Settings(tokenizer_file=path))
    assert vocab.itos == bpe.itos
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.tokenizer_file: .*bad.json is not a tokenizer"):
        build("bpe", "", Settings(tokenizer_file=bad))
    with pytest.raises(DataError, match="cannot read"):
        build("bpe", "", Settings(tokenizer_file=tmp_path / "missing.json"))


def test_a_tokenizer_file_is_bounded_and_expanded(tmp_path: Path, bpe, monkeypatch) -> None:
    from lmtrain.data.tokenizers import bpe as bpe_module

    path = tmp_path / "tokenizer.json"
    path.write_text(bpe.tokenizer_json, encoding="utf-8")
    monkeypatch.setenv("TOKENIZERS_DIR", str(tmp_path))
    assert (
        build("bpe", "", Settings(tokenizer_file="${TOKENIZERS_DIR}/tokenizer.json")).itos
        == bpe.itos
    )
    monkeypatch.setattr(bpe_module, "TOKENIZER_MAX_BYTES", len(bpe.tokenizer_json) - 1)
    with pytest.raises(DataError, match=r"tokenizer.json: larger than 0 MB, which no tokenizer"):
        build("bpe", "", Settings(tokenizer_file=path))


@pytest.mark.parametrize("far", [5, 4_000_000_000])
def test_a_tokenizer_file_with_a_gap_in_its_ids_is_refused(tmp_path: Path, far: int) -> None:
    from tokenizers import Tokenizer, models

    # The library takes minutes to build a model with a huge id, but reads one at once: the
    # id is written into the JSON of a small one.
    small = Tokenizer(models.WordLevel({"<unk>": 0, "the": 1, "cat": 2})).to_str()
    raw = json.loads(small)
    raw["model"]["vocab"]["cat"] = far
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError) as e:
        build("bpe", "", Settings(tokenizer_file=path))
    assert str(e.value) == (
        f"data.tokenizer_file: {path}: the tokenizer's ids are not 0 .. size-1 without gaps"
    )


def test_a_tokenizer_with_its_own_unknown_token_counts_oov(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    model = models.WordLevel({"<unk>": 0, "the": 1, "cat": 2}, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    vocab = BpeVocab(tok.to_str())
    # Its `<unk>` is listed as a literal; its unknown id maps to ours.
    assert vocab.itos == ["<pad>", "<unk>", "<eos>", "<unk> (literal)", "the", "cat"]
    enc = vocab.encode("the dog\ncat")
    assert enc.ids.tolist() == [4, 1, 2, 5] and enc.oov == 1


def test_sentences_mode_splits_bpe_at_newlines(bpe: BpeVocab) -> None:
    ids = bpe.encode("the cat\n  \nthe dog\n").ids
    seqs = split_sequences(ids, bpe)
    assert [bpe.decode(s[1:-1]) for s in seqs] == ["the cat", "the dog"]  # blank line skipped
    assert all(int(s[0]) == int(s[-1]) == bpe.eos_id for s in seqs)


def test_prepared_bpe_equals_in_memory_and_reuses_the_tokenizer(
    tmp_path: Path, tiny_files: dict[str, Path]
) -> None:
    for path in tiny_files.values():
        os.utime(path, (1_000_000_000, 1_000_000_000))
    cfg = tiny_config(tmp_path, tiny_files, "data.tokenizer=bpe", "data.vocab_size=280")
    memory = prepare_corpus(cfg.data, None)
    lines: list[str] = []
    cached = prepare_corpus(cfg.data, tmp_path / "cache", echo=lines.append)
    again = prepare_corpus(cfg.data, tmp_path / "cache", echo=lines.append)
    assert len(lines) == 2  # tokenised once, then mapped
    for got in (cached, again):
        assert got.vocab.to_dict() == memory.vocab.to_dict()
        assert torch.equal(got.train.ids.long(), memory.train.ids)
        assert got.valid is not None and memory.valid is not None
        assert torch.equal(got.valid.ids.long(), memory.valid.ids)
    assert memory.vocab.decode(memory.train.ids) == TINY_TEXT
    # Another vocabulary size is another entry, never the first one's ids.
    other = tiny_config(tmp_path, tiny_files, "data.tokenizer=bpe", "data.vocab_size=270")
    assert len(prepare_corpus(other.data, tmp_path / "cache").vocab) == 270


def test_pieces_cut_at_line_ends_give_the_same_bpe_ids(
    tmp_path: Path, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmtrain.data.prepare as prepare_module

    cfg = tiny_config(tmp_path, tiny_files, "data.tokenizer=bpe", "data.vocab_size=280")
    whole = prepare_corpus(cfg.data, tmp_path / "whole")
    monkeypatch.setattr(prepare_module, "_PIECE_CHARS", 10)  # many pieces, each ends a line
    pieces = prepare_corpus(cfg.data, tmp_path / "pieces")
    assert torch.equal(pieces.train.ids, whole.train.ids)
