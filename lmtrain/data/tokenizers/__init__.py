"""Tokenizers by name: one interface (base.py), one module per kind, one table.

    TOKENIZERS             name -> class; `data.tokenizer` and a checkpoint's `vocab.kind` name one
    register(cls)          adds a kind under `cls.kind` (a plugin's module, a test)
    tokenizer_class(name)  the class of a name, or a DataError that lists the names
    build(name, text, s)   the tokenizer of the training split `text` with the data settings `s`
    from_dict(d)           the tokenizer that `to_dict` wrote (a checkpoint's, a prepared file's)

A new kind is a module here and one line in TOKENIZERS; nothing outside this package compares
a kind's name, it asks the tokenizer (`unit`, `joiner`, `per_line`, ...; see base.py).
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from lmtrain.data.tokenizers.base import Encoded, Settings, Tokenizer
from lmtrain.data.tokenizers.bpe import BpeVocab
from lmtrain.data.tokenizers.byte import ByteVocab
from lmtrain.data.tokenizers.char import CharVocab
from lmtrain.data.tokenizers.word import WordVocab
from lmtrain.errors import DataError

__all__ = [
    "TOKENIZERS",
    "BpeVocab",
    "ByteVocab",
    "CharVocab",
    "Encoded",
    "Settings",
    "Tokenizer",
    "WordVocab",
    "build",
    "from_dict",
    "register",
    "tokenizer_class",
]

TOKENIZERS: dict[str, type[Tokenizer]] = {
    cls.kind: cls for cls in (CharVocab, WordVocab, ByteVocab, BpeVocab)
}

T = TypeVar("T", bound=type[Tokenizer])


def register(cls: T) -> T:
    """Add `cls` to TOKENIZERS under `cls.kind` (usable as a class decorator)."""
    if cls.kind in TOKENIZERS:
        raise ValueError(f"a tokenizer named {cls.kind!r} is already registered")
    TOKENIZERS[cls.kind] = cls
    return cls


def tokenizer_class(name: str) -> type[Tokenizer]:
    if isinstance(name, str) and name in TOKENIZERS:
        return TOKENIZERS[name]
    close = difflib.get_close_matches(str(name), list(TOKENIZERS), n=1)
    raise DataError(
        f"unknown tokenizer {name!r}: the tokenizers are {', '.join(map(repr, TOKENIZERS))}"
        + (f"; did you mean {close[0]!r}?" if close else "")
    )


def build(name: str, text: str, settings: Settings) -> Tokenizer:
    return tokenizer_class(name).build(text, settings)


def from_dict(d: dict[str, Any]) -> Tokenizer:
    """The tokenizer of `d`; ValueError (or KeyError) if `d` is not one, as from a damaged file."""
    kind = d["kind"]
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    return TOKENIZERS[kind].from_dict(d)
