"""The byte tokeniser: every UTF-8 byte of the text is a token (`data.tokenizer: byte`).

256 byte symbols after the two specials every vocabulary starts with (`<pad>` = 0, `<unk>` = 1),
so byte b has id b + 2 and 258 ids need uint16 in a prepared file. Nothing is ever out of
vocabulary, and any text comes back exactly: decode(encode(text).ids) == text.

The entries of bytes below 128 are their ASCII characters, so that code which looks at
`itos` (the whitespace test of sentences mode, the newline end-of-line marker) treats them as a
character vocabulary's; bytes from 128 are written `<0x80>` ... `<0xFF>`.
"""

from __future__ import annotations

from typing import Any

import torch

from lmtrain.data.tokenizers.base import PAD, UNK, Encoded, Settings, Tokenizer

_SPECIALS = (PAD, UNK)
OFFSET = len(_SPECIALS)
# Characters encoded per piece: bounds the temporary bytes and index tensors however long the text.
_PIECE_CHARS = 1 << 20


def _entry(b: int) -> str:
    return chr(b) if b < 128 else f"<0x{b:02X}>"


class ByteVocab(Tokenizer):
    """UTF-8 bytes as tokens: a fixed vocabulary, built from nothing."""

    kind = "byte"

    def __init__(self) -> None:
        self.itos = [*_SPECIALS, *(_entry(b) for b in range(256))]
        # Entry -> id for prompts (`tokenize` yields entries); the specials are never text.
        self.stoi = {s: i for i, s in enumerate(self.itos) if i >= OFFSET}

    @property
    def eos_id(self) -> int:
        return ord("\n") + OFFSET

    @classmethod
    def build(cls, text: str, settings: Settings) -> ByteVocab:
        return cls()

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        """Ids of the UTF-8 bytes of `text` (line ends are the text's own newline bytes)."""
        pieces = [
            # surrogatepass: a lone surrogate in a Python str still round-trips (3 bytes).
            torch.frombuffer(bytearray(raw), dtype=torch.uint8).long() + OFFSET
            for i in range(0, len(text), _PIECE_CHARS)
            if (raw := text[i : i + _PIECE_CHARS].encode("utf-8", "surrogatepass"))
        ]
        ids = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
        return Encoded(ids, 0)

    def tokenize(self, text: str) -> list[str]:
        """The entries of the bytes of `text`, without an end-of-line marker."""
        return [self.itos[b + OFFSET] for b in text.encode("utf-8", "surrogatepass")]

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of byte ids; specials are dropped, and byte sequences that are not UTF-8 (a
        sampled model can produce them) become U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        raw = bytes(i - OFFSET for i in ids if OFFSET <= i < OFFSET + 256)
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "replace")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ByteVocab:
        vocab = cls()
        if d.get("kind") != cls.kind or d.get("itos") != vocab.itos:
            raise ValueError("not a byte vocabulary of this version")
        return vocab
