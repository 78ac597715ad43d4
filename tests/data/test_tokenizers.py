"""Tokenizers as a table: one interface, one class per kind, looked up by name.

A kind defined in this module alone is built, encodes, decodes and travels through a checkpoint
dict by its name; what the rest of lmtrain used to decide by comparing kind names is asked of
the tokenizer, and each answer is checked against what it means.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmtrain.data.tokenizers import (
    TOKENIZERS,
    Settings,
    Tokenizer,
    build,
    from_dict,
    register,
    tokenizer_class,
)
from lmtrain.data.tokenizers.base import PAD, UNK, Encoded
from lmtrain.errors import DataError

TEXT = "the cat sat\non the mat\n  \nnaïve café 日本語\n"


class PairVocab(Tokenizer):
    """Two characters a token: a kind that exists only in this test module."""

    kind = "pair"

    def __init__(self, itos: list[str]) -> None:
        self.itos = list(itos)
        self.stoi = {s: i for i, s in enumerate(self.itos) if i > self.unk_id}

    @property
    def eos_id(self) -> int | None:
        return None

    @classmethod
    def build(cls, text: str, settings: Settings) -> PairVocab:
        return cls([PAD, UNK, *sorted(set(_pairs(text)))])

    def tokenize(self, text: str) -> list[str]:
        return _pairs(text)

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        ids = [self.stoi.get(t, self.unk_id) for t in _pairs(text)]
        return Encoded(torch.tensor(ids, dtype=torch.long), ids.count(self.unk_id))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        return "".join(self.itos[i] for i in torch.as_tensor(ids).tolist() if i > self.unk_id)


def _pairs(text: str) -> list[str]:
    return [text[i : i + 2] for i in range(0, len(text), 2)]


@pytest.fixture
def pair() -> Iterator[type[PairVocab]]:
    register(PairVocab)
    yield PairVocab
    del TOKENIZERS["pair"]


def test_a_kind_registered_from_one_module_builds_encodes_and_round_trips(pair) -> None:
    vocab = build("pair", TEXT, Settings())
    assert type(vocab) is pair and tokenizer_class("pair") is pair
    enc = vocab.encode(TEXT)
    assert vocab.decode(enc.ids) == TEXT and enc.oov == 0
    assert vocab.encode("zz").oov == 1
    saved = json.loads(json.dumps(vocab.to_dict()))  # as a checkpoint or prepared file holds it
    assert saved == {"kind": "pair", "itos": vocab.itos}
    again = from_dict(saved)
    assert type(again) is pair and torch.equal(again.encode(TEXT).ids, enc.ids)
    with pytest.raises(ValueError, match="'pair' is already registered"):
        register(pair)


def test_an_unknown_name_is_refused_with_the_names() -> None:
    with pytest.raises(DataError) as e:
        tokenizer_class("chr")
    assert str(e.value) == (
        "unknown tokenizer 'chr': the tokenizers are 'char', 'word', 'byte', 'bpe'; "
        "did you mean 'char'?"
    )
    # A damaged dict is a ValueError with the message it always had (loaders wrap it).
    for kind in ("xyz", ["char"]):
        with pytest.raises(ValueError, match=r"^unknown tokenizer kind"):
            from_dict({"kind": kind, "itos": [PAD, UNK]})


@pytest.fixture(scope="module")
def vocabs() -> dict[str, Tokenizer]:
    settings = {"bpe": Settings(vocab_size=300)}
    return {k: build(k, TEXT * 5, settings.get(k, Settings())) for k in TOKENIZERS}


def test_the_table_of_kinds(vocabs: dict[str, Tokenizer]) -> None:
    table = {k: (v.unit, v.joiner, v.open_vocabulary, v.per_line) for k, v in vocabs.items()}
    assert table == {
        "char": ("char", "", False, False),
        "word": ("token", " ", True, True),
        "byte": ("token", "", False, False),
        "bpe": ("token", "", False, True),
    }
    assert all(isinstance(v, Tokenizer) for v in vocabs.values())


@pytest.mark.parametrize("kind", ["char", "word", "byte", "bpe"])
def test_per_line_says_where_a_text_may_be_cut(vocabs, kind: str) -> None:
    vocab = vocabs[kind]
    whole = vocab.encode(TEXT).ids

    def joined(cut: int) -> torch.Tensor:
        return torch.cat([vocab.encode(TEXT[:cut]).ids, vocab.encode(TEXT[cut:]).ids])

    assert torch.equal(joined(TEXT.index("\n") + 1), whole)  # at a line end: always
    assert torch.equal(joined(TEXT.index("cat") + 1), whole) != vocab.per_line  # mid-word


@pytest.mark.parametrize("kind", ["char", "word", "byte", "bpe"])
def test_the_joiner_puts_generated_text_after_a_prompt(vocabs, kind: str) -> None:
    vocab = vocabs[kind]
    generated = vocab.decode(vocab.encode(" cat sat", add_eos=False).ids)  # words lose the space
    assert "the" + vocab.joiner + generated == "the cat sat"


@pytest.mark.parametrize("kind", ["char", "word", "byte", "bpe"])
def test_space_ids_are_the_tokens_that_decode_to_whitespace(vocabs, kind: str) -> None:
    vocab = vocabs[kind]
    spaces = vocab.space_ids()
    assert spaces.shape == (len(vocab),)
    for i in set(vocab.encode(TEXT).ids.tolist()) - {vocab.eos_id}:
        assert bool(spaces[i]) == vocab.decode([i]).isspace()
    assert bool(spaces.any()) == (kind != "word")  # words never are


def test_dict_keys_are_what_to_dict_writes(vocabs: dict[str, Tokenizer]) -> None:
    for vocab in vocabs.values():
        assert tuple(vocab.to_dict()) == vocab.dict_keys


def test_id_settings_name_what_decides_the_ids(tmp_path: Path, vocabs) -> None:
    assert tokenizer_class("word").id_settings(Settings(min_freq=2)) == {
        "min_freq": 2,
        "max_size": None,
    }
    bpe = tokenizer_class("bpe")
    assert bpe.id_settings(Settings(vocab_size=300)) == {"vocab_size": 300}
    path = tmp_path / "tokenizer.json"
    path.write_text(vocabs["bpe"].tokenizer_json, encoding="utf-8")
    first = bpe.id_settings(Settings(tokenizer_file=str(path)))
    path.write_text(vocabs["bpe"].tokenizer_json + " ", encoding="utf-8")
    assert bpe.id_settings(Settings(tokenizer_file=str(path))) != first  # contents, not name
    with pytest.raises(DataError, match=r"data.tokenizer_file: .*missing.json: cannot read it"):
        bpe.id_settings(Settings(tokenizer_file=str(tmp_path / "missing.json")))
