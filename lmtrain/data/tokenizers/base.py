"""What every tokenizer is: the one interface the rest of lmtrain uses, and the entries all share.

Index 0 is always `<pad>` and index 1 `<unk>`; word and BPE vocabularies add `<eos>` at index 2,
which ends every line. A tokenizer is built from the training split only and travels inside the
checkpoint (`to_dict` / `from_dict`), so eval, score and sample never need the corpus again.

What other packages may ask of a tokenizer is here, so that none of them compares kind names:
`unit` (bits per character or per token), `joiner` (how generated text follows a prompt),
`open_vocabulary` (whether a report gives the OOV rate a line), `per_line` (where a text may be
cut to be encoded in pieces), `space_ids` (whitespace tokens), `dict_keys` (what `to_dict`
writes) and, before one is built, what decides its ids (`id_settings`). The rules of the data
section's keys stay in lmtrain/data/config.py, which reading a config imports without torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class Settings:
    """What a tokenizer is built with: the data section's fields of the same names (a DataConfig
    serves as one); each kind reads the ones it uses."""

    min_freq: int = 1
    max_size: int | None = None
    vocab_size: int | None = None
    tokenizer_file: str | Path | None = None


class Tokenizer(ABC):
    """Text to ids and back, with the token list `itos` (id -> entry) and `stoi` (text -> id)."""

    kind: ClassVar[str]
    """Its name: in the registry, in `data.tokenizer` and in the dict `to_dict` writes."""
    unit: ClassVar[str] = "token"
    """What one token is to the figures: "char" (a loss is also given in bits per character)
    or "token"."""
    joiner: ClassVar[str] = ""
    """What goes between a prompt and the text generated after it: "" where tokens carry their
    own spacing, " " for whitespace-split words."""
    open_vocabulary: ClassVar[bool] = False
    """Unknown tokens are common (words): a report gives the OOV rate a line."""
    per_line: ClassVar[bool] = False
    """Each line is tokenised alone, so a text is encoded in pieces only at line ends; False: the
    encoding of any cut of a text, joined, is that of the text."""

    dict_keys: ClassVar[tuple[str, ...]] = ("kind", "itos")
    """The keys of the dict `to_dict` writes (a checkpoint's `vocab`)."""

    itos: list[str]
    stoi: dict[str, int]

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    @abstractmethod
    def eos_id(self) -> int | None:
        """The id that ends a line (and starts an empty prompt); None if there is none."""

    @abstractmethod
    def encode(self, text: str, add_eos: bool = True) -> Encoded:
        """Token ids of `text`; `add_eos` False leaves out line ends a kind adds itself."""

    @abstractmethod
    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """The text of `ids`."""

    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """The entries of `text` without an end-of-line marker (prompts); `stoi` maps them."""

    def space_ids(self) -> torch.Tensor:
        """(V,) bool: the tokens that are whitespace, which sentences mode skips a line of."""
        return torch.tensor([len(s) == 1 and s.isspace() for s in self.itos], dtype=torch.bool)

    # --- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """What the checkpoint and the prepared-data cache store: the kind and every entry."""
        return {"kind": self.kind, "itos": self.itos}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """The tokenizer `to_dict` wrote; here for a kind whose entries are all it is."""
        return cls(d["itos"])

    # --- building -------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def build(cls, text: str, settings: Settings) -> Tokenizer:
        """The tokenizer of `text` (the training split) with `settings`."""

    @classmethod
    def id_settings(cls, settings: Settings) -> dict[str, Any]:
        """The settings that decide the ids a tokenizer built on a text gives (the prepared-data
        cache is keyed by them)."""
        return {"min_freq": settings.min_freq, "max_size": settings.max_size}
