"""A toy tokenizer, the characters of the text in upper case, registered from this module alone."""

from __future__ import annotations

from collections.abc import Callable

from lmtrain.data.tokenizers import TOKENIZERS, CharVocab, Encoded, Settings, register


class ShoutVocab(CharVocab):
    kind = "shout"

    @classmethod
    def build(cls, text: str, settings: Settings) -> CharVocab:
        return super().build(text.upper(), settings)

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        return super().encode(text.upper(), add_eos)

    def tokenize(self, text: str) -> list[str]:
        return super().tokenize(text.upper())


def install() -> Callable[[], None]:
    register(ShoutVocab)

    def undo() -> None:
        del TOKENIZERS[ShoutVocab.kind]

    return undo
