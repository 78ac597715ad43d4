"""Tokenizers by name: one interface (base.py), one module per kind, one table.

    TOKENIZERS             name -> class: the data section's table (TOKENIZER_CLASSES in
                           lmtrain/data/config.py), each class loaded on first use;
                           `data.tokenizer` and a checkpoint's `vocab.kind` name one
    register(cls)          adds a kind under `cls.kind` (a plugin's module, a test)
    tokenizer_class(name)  the class of a name, or a DataError that lists the names
    build(name, text, s)   the tokenizer of the training split `text` with the data settings `s`
    from_dict(d)           the tokenizer that `to_dict` wrote (a checkpoint's, a prepared file's)

A new kind is a module here and one row in TOKENIZER_CLASSES (the names are written there only,
where the torch-free config reads them); nothing outside this package compares a kind's name, it
asks the tokenizer (`unit`, `joiner`, `per_line`, ...; see base.py).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, MutableMapping
from typing import Any, TypeVar

from lmtrain.data.config import TOKENIZER_CLASSES
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


class _Classes(MutableMapping[str, type[Tokenizer]]):
    """A table of `module:Class` paths read as a table of classes: the names, their order and
    every change are the table's own; a class is imported when first asked for."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths
        self.loaded: dict[str, type[Tokenizer]] = {}  # by path

    def __getitem__(self, name: str) -> type[Tokenizer]:
        path = self.paths[name]
        if path not in self.loaded:
            module, _, attribute = path.partition(":")
            self.loaded[path] = getattr(importlib.import_module(module), attribute)
        return self.loaded[path]

    def __setitem__(self, name: str, cls: type[Tokenizer]) -> None:
        path = f"{cls.__module__}:{cls.__qualname__}"
        self.paths[name], self.loaded[path] = path, cls

    def __delitem__(self, name: str) -> None:
        del self.paths[name]

    def __contains__(self, name: object) -> bool:  # without importing the class
        return name in self.paths

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


TOKENIZERS: MutableMapping[str, type[Tokenizer]] = _Classes(TOKENIZER_CLASSES)

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
