"""The word tokenizer (`data.tokenizer: word`): whitespace-separated words, `<eos>` after each line.

`<eos>` is index 2 and ends every line. Text can never produce the padding id or the end-of-line
id by spelling them: a word `<pad>` or `<eos>` written in the text is an ordinary word with its
own entry (listed as `<pad> (literal)`, a name no whitespace-split word can have), so the loss
counts it like any other token. A written `<unk>` is the unknown word itself, as in WikiText and
the Penn Treebank, whose texts spell every rare word `<unk>`: it gets the `<unk>` id and is not
counted again as out-of-vocabulary.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Iterator

import torch

from lmtrain.data.tokenizers.base import (
    EOS,
    LITERAL,
    PAD,
    RESERVED_WORDS,
    UNK,
    Encoded,
    Settings,
    Tokenizer,
    surface,
)

# Characters per piece of a line when encoding: one 50 MB line never becomes one 50 MB list of
# words, and memory grows only with the output ids.
_PIECE_CHARS = 1 << 20
_SPACE = re.compile(r"\s")


def _word_pieces(text: str) -> Iterator[tuple[str, bool]]:
    """(piece, ends_line) over the lines of `text` (split at "\\n" only, like str.split("\\n")).

    A line longer than _PIECE_CHARS is cut at whitespace, so no word spans two pieces. A final
    newline ends the last line; it does not start an empty one.
    """
    start, n = 0, len(text)
    while start < n:
        end = text.find("\n", start)
        if end < 0:
            end = n
        pos = start
        while end - pos > _PIECE_CHARS:
            space = _SPACE.search(text, pos + _PIECE_CHARS, end)
            if space is None:
                break  # one giant word: it has to be a single piece
            yield text[pos : space.start()], False
            pos = space.start()
        yield text[pos:end], True
        start = end + 1


class WordVocab(Tokenizer):
    """Words of the training split, most frequent first (ties alphabetically), after the specials."""

    kind = "word"
    joiner = " "
    open_vocabulary = True
    per_line = True

    def __init__(self, itos: list[str]) -> None:
        self.itos = list(itos)
        assert self.itos[0] == PAD and self.itos[1] == UNK
        # <eos> is at index 2 (build); older files are searched.
        self._eos = self.itos.index(EOS) if EOS in self.itos else None
        reserved = {self.pad_id, self._eos}
        # Text token -> id. The padding and end-of-line ids are absent, so no text can spell
        # them; a literal entry is found under the word the text writes.
        self.stoi = {surface(s): i for i, s in enumerate(self.itos) if i not in reserved}

    @property
    def eos_id(self) -> int | None:
        return self._eos

    @classmethod
    def build(cls, text: str, settings: Settings) -> WordVocab:
        """The words seen `min_freq` times, at most `max_size` of them."""
        counts: Counter[str] = Counter()
        for piece, _ in _word_pieces(text):
            counts.update(piece.split())
        counts.pop(UNK, None)  # a written <unk> is the unknown word (module docstring)
        for word in RESERVED_WORDS:
            if word in counts:
                counts[word + LITERAL] = counts.pop(word)
        words = sorted(
            (w for w, n in counts.items() if n >= settings.min_freq), key=lambda w: (-counts[w], w)
        )
        if settings.max_size is not None:
            words = words[: settings.max_size]
        return cls([PAD, UNK, EOS, *words])

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        """Ids of the words of `text`, and `<eos>` after every line when `add_eos`."""
        eos = self._eos
        assert eos is not None, "word vocabularies always hold <eos>"
        get = self.stoi.get
        ids = array("q")  # 8 bytes per id, not a Python int object each
        for piece, ends_line in _word_pieces(text):
            ids.extend([get(w, -1) for w in piece.split()])  # -1 marks out-of-vocabulary
            if add_eos and ends_line:
                ids.append(eos)
        t = torch.frombuffer(ids, dtype=torch.long).clone() if ids else torch.zeros(0).long()
        missing = t < 0
        t[missing] = self.unk_id
        return Encoded(t, int(missing.sum()))

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Lines of space-separated words; the end-of-line id (never a literal `<eos>`) ends one."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        lines: list[list[str]] = [[]]
        for i in ids:
            if i == self._eos:
                lines.append([])
            else:
                lines[-1].append(surface(self.itos[i]))
        return "\n".join(" ".join(line) for line in lines)
