"""The character tokenizer (`data.tokenizer: char`): every Unicode code point is a token.

Characters are single code points, so the characters of `<pad>` are just characters and no text
can spell a special. The newline character, where the text has one, ends a line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import torch

from lmtrain.data.tokenizers.base import PAD, UNK, Encoded, Settings, Tokenizer, surface

# Characters handled per piece when encoding: bounds the temporary copies (UTF-32 bytes, index
# tensors) to tens of MB however long the text, while keeping the per-piece work in C.
_PIECE_CHARS = 1 << 20


def _char_pieces(text: str) -> Iterator[torch.Tensor]:
    """Unicode code points of `text`, (n,) int64 per piece of at most _PIECE_CHARS."""
    for start in range(0, len(text), _PIECE_CHARS):
        # surrogatepass: a lone surrogate (possible in a Python str) is still one character.
        raw = text[start : start + _PIECE_CHARS].encode("utf-32-le", "surrogatepass")
        yield torch.frombuffer(bytearray(raw), dtype=torch.int32).long()


class CharVocab(Tokenizer):
    """Characters of the training split, in code-point order after `<pad>` and `<unk>`."""

    kind = "char"
    unit = "char"

    def __init__(self, itos: list[str]) -> None:
        self.itos = list(itos)
        assert self.itos[0] == PAD and self.itos[1] == UNK
        self.stoi = {surface(s): i for i, s in enumerate(self.itos) if i != self.pad_id}
        self._lut: torch.Tensor | None = None

    @property
    def eos_id(self) -> int | None:
        return self.stoi.get("\n")

    @classmethod
    def build(cls, text: str, settings: Settings) -> CharVocab:
        """The characters seen `min_freq` times, the `max_size` most frequent (ties in
        code-point order); then listed in code-point order, as they read better."""
        counts = Counter(text)  # single characters: none can equal a special's name
        chars = sorted(
            (c for c, n in counts.items() if n >= settings.min_freq), key=lambda c: (-counts[c], c)
        )
        if settings.max_size is not None:
            chars = chars[: settings.max_size]
        return cls([PAD, UNK, *sorted(chars)])

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        """Ids of the characters of `text`; a newline is its own character (`add_eos` is moot)."""
        # Vectorised: UTF-32 code points -> ids through a lookup table, a few tensor
        # operations per piece instead of a Python loop over every character; piece by piece
        # so that the temporaries stay small (see _PIECE_CHARS).
        lut = self._char_lut()
        ids = torch.empty(len(text), dtype=torch.long)
        oov, pos = 0, 0
        for cps in _char_pieces(text):
            in_range = cps < lut.numel()
            out = torch.where(in_range, lut[cps.clamp(max=lut.numel() - 1)], self.unk_id)
            ids[pos : pos + out.numel()] = out
            oov += int((out == self.unk_id).sum())
            pos += out.numel()
        return Encoded(ids, oov)

    def _char_lut(self) -> torch.Tensor:
        if self._lut is None:
            chars = [(ord(s), i) for i, s in enumerate(self.itos) if len(s) == 1]
            size = max((c for c, _ in chars), default=0) + 1
            lut = torch.full((size,), self.unk_id, dtype=torch.long)
            for c, i in chars:
                lut[c] = i
            self._lut = lut
        return self._lut

    def tokenize(self, text: str) -> list[str]:
        return list(text)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """The characters of `ids`; specials are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(t if len(t) == 1 else "" for t in (self.itos[i] for i in ids))
