"""Vocabularies: characters and whitespace-separated words here, and the choice among all tokenisers.

Index 0 is always `<pad>` and index 1 `<unk>`; word vocabularies add `<eos>` at index 2, which
ends every line. The vocabulary is built from the training split only and travels inside the
checkpoint, so eval, score and sample never need the training corpus again. `Vocab.build` and
`Vocab.from_dict` also give the byte (lmtrain/data/bytes.py) and BPE (bpe.py) vocabularies, which
have the same interface.

Text can never produce the padding id or the end-of-line id by spelling them: a word `<pad>` or
`<eos>` written in the text is an ordinary word with its own entry (listed as `<pad> (literal)`,
a name no whitespace-split word can have), so the loss counts it like any other token. A written
`<unk>` is the unknown word itself, as in WikiText and the Penn Treebank, whose texts spell
every rare word `<unk>`: it gets the `<unk>` id and is not counted again as out-of-vocabulary.
Characters are single code points, so the characters of `<pad>` are just characters.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lmtrain.data.bpe import BpeVocab, read_tokenizer_file
from lmtrain.data.bytes import ByteVocab
from lmtrain.data.specials import EOS, LITERAL, PAD, RESERVED_WORDS, UNK, Encoded, surface
from lmtrain.errors import DataError

__all__ = ["EOS", "LITERAL", "PAD", "UNK", "AnyVocab", "Encoded", "Vocab"]

# Characters handled per piece when encoding: bounds the temporary copies (UTF-32 bytes, index
# tensors, lists of words) to tens of MB however long the text or a single line of it is, while
# keeping the per-piece work in C. Memory then grows only with the output ids.
_PIECE_CHARS = 1 << 20
_SPACE = re.compile(r"\s")


def _char_pieces(text: str) -> Iterator[torch.Tensor]:
    """Unicode code points of `text`, (n,) int64 per piece of at most _PIECE_CHARS."""
    for start in range(0, len(text), _PIECE_CHARS):
        # surrogatepass: a lone surrogate (possible in a Python str) is still one character.
        raw = text[start : start + _PIECE_CHARS].encode("utf-32-le", "surrogatepass")
        yield torch.frombuffer(bytearray(raw), dtype=torch.int32).long()


def _word_pieces(text: str) -> Iterator[tuple[str, bool]]:
    """(piece, ends_line) over the lines of `text` (split at "\\n" only, like str.split("\\n")).

    A line longer than _PIECE_CHARS is cut at whitespace, so no word spans two pieces and one
    50 MB line never becomes one 50 MB list of words. A final newline ends the last line; it
    does not start an empty one.
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


class Vocab:
    """A fixed token list with its tokeniser kind (`char` or `word`)."""

    def __init__(self, itos: list[str], kind: str) -> None:
        if kind not in ("char", "word"):
            raise ValueError(f"unknown tokenizer kind {kind!r}")
        self.itos = list(itos)
        self.kind = kind
        assert self.itos[0] == PAD and self.itos[1] == UNK
        # Word vocabularies keep <eos> at index 2 (Vocab.build); older files are searched.
        eos = self.itos.index(EOS) if kind == "word" and EOS in self.itos else None
        self._eos = eos
        reserved = {self.pad_id, eos}
        # Text token -> id. The padding and end-of-line ids are absent, so no text can spell
        # them; a literal entry is found under the word the text writes.
        self.stoi = {surface(s): i for i, s in enumerate(self.itos) if i not in reserved}
        self._lut: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int | None:
        return self._eos if self.kind == "word" else self.stoi.get("\n")

    # --- building -------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        text: str,
        kind: str,
        min_freq: int = 1,
        max_size: int | None = None,
        *,
        vocab_size: int | None = None,
        tokenizer_file: str | Path | None = None,
    ) -> AnyVocab:
        """Vocabulary of `text`: most frequent first (ties alphabetically), specials first.

        `byte` is the fixed vocabulary of lmtrain/data/bytes.py, whatever the text. `bpe` reads
        `tokenizer_file` when given, else trains `vocab_size` entries on `text` (bpe.py).
        """
        if kind == "byte":
            return ByteVocab()
        if kind == "bpe":
            if tokenizer_file is not None:
                return read_tokenizer_file(Path(tokenizer_file))
            if vocab_size is None:
                raise DataError("data.tokenizer: bpe needs data.vocab_size or data.tokenizer_file")
            return BpeVocab.train(text, vocab_size)
        if kind == "char":
            counts = Counter(text)  # single characters: none can equal a special's name
            specials = [PAD, UNK]
        else:
            counts = Counter()
            for piece, _ in _word_pieces(text):
                counts.update(piece.split())
            specials = [PAD, UNK, EOS]
            counts.pop(UNK, None)  # a written <unk> is the unknown word (module docstring)
            for word in RESERVED_WORDS:
                if word in counts:
                    counts[word + LITERAL] = counts.pop(word)
        tokens = sorted(
            (t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            tokens = tokens[:max_size]
        if kind == "char":
            tokens.sort()  # characters read better in code-point order; frequency is irrelevant
        return cls(specials + tokens, kind)

    # --- encoding -------------------------------------------------------------------------

    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        """Token ids of `text`. Word level appends `<eos>` after every line when add_eos."""
        if self.kind == "char":
            return self._encode_chars(text)
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

    def _encode_chars(self, text: str) -> Encoded:
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
        """Split text into tokens without an end-of-line marker (prompts, sentences)."""
        return list(text) if self.kind == "char" else text.split()

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if self.kind == "char":
            return "".join(t if len(t) == 1 else "" for t in (self.itos[i] for i in ids))
        # Lines of space-separated words; the end-of-line id (never a literal `<eos>`) ends one.
        lines: list[list[str]] = [[]]
        for i in ids:
            if i == self._eos:
                lines.append([])
            else:
                lines[-1].append(surface(self.itos[i]))
        return "\n".join(" ".join(line) for line in lines)

    # --- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "itos": self.itos}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnyVocab:
        """The vocabulary `to_dict` wrote, of any kind (a checkpoint's, a prepared file's)."""
        if d["kind"] == "byte":
            return ByteVocab.from_dict(d)
        if d["kind"] == "bpe":
            return BpeVocab.from_dict(d)
        return cls(d["itos"], d["kind"])


# Any of the tokenisers: they share Vocab's interface (itos, stoi, kind, len, pad_id, unk_id,
# eos_id, encode, decode, tokenize, to_dict).
AnyVocab = Vocab | ByteVocab | BpeVocab
