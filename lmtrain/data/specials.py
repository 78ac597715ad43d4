"""What every tokeniser shares: the special entries and the result of encoding a text.

Index 0 is always `<pad>` and index 1 `<unk>`; word and BPE vocabularies add `<eos>` at index 2,
which ends every line. The tokenisers (lmtrain/data/vocab.py for characters and words,
bytes.py, bpe.py) import this module and not each other, so vocab.py can pick among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
# Suffix of the entry of a text token spelled like a reserved special: a word `<pad>` written in
# the text is an ordinary word listed as `<pad> (literal)`, a name no whitespace-split word can have.
LITERAL = " (literal)"
RESERVED_WORDS = (PAD, EOS)


def surface(entry: str) -> str:
    """The text spelling of a vocabulary entry (a literal `<pad> (literal)` is written `<pad>`)."""
    if entry.endswith(LITERAL) and entry[: -len(LITERAL)] in RESERVED_WORDS:
        return entry[: -len(LITERAL)]
    return entry


@dataclass(frozen=True)
class Encoded:
    """Token ids of a text plus how many of its tokens were not in the vocabulary."""

    ids: torch.Tensor  # (N,) int64
    oov: int

    @property
    def oov_rate(self) -> float:
        """Out-of-vocabulary tokens over all tokens of the text (line ends included), so the same
        text has the same rate whatever the evaluation mode or number of streams."""
        return self.oov / max(self.ids.numel(), 1)
