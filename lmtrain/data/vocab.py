"""`Vocab`, the name the tokenizers had before lmtrain/data/tokenizers/, kept while its calls move.

`Vocab.build(text, kind, ...)` and `Vocab.from_dict(d)` give a tokenizer of any kind (from the
registry: `tokenizers.build` and `tokenizers.from_dict`), `Vocab(itos, kind)` a character or word
one, and every tokenizer is a `Vocab`. Type hints name `lmtrain.data.tokenizers.Tokenizer`.
"""

from __future__ import annotations

from abc import ABC
from pathlib import Path
from typing import Any

from lmtrain.data.tokenizers import TOKENIZERS, Settings, Tokenizer, build, from_dict

__all__ = ["Vocab"]


class Vocab(ABC):  # noqa: B024 - nothing to implement: only isinstance and the old calls
    """A tokenizer (lmtrain.data.tokenizers.Tokenizer) under its old name."""

    def __new__(cls, itos: list[str], kind: str) -> Tokenizer:
        if kind not in ("char", "word"):
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        return TOKENIZERS[kind](itos)

    @classmethod
    def __subclasshook__(cls, sub: type) -> bool:
        return issubclass(sub, Tokenizer)

    @staticmethod
    def build(
        text: str,
        kind: str,
        min_freq: int = 1,
        max_size: int | None = None,
        *,
        vocab_size: int | None = None,
        tokenizer_file: str | Path | None = None,
    ) -> Tokenizer:
        return build(kind, text, Settings(min_freq, max_size, vocab_size, tokenizer_file))

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Tokenizer:
        return from_dict(d)
