"""The data section of the config and its checks: where the text comes from, how it is tokenised
and batched. Defaults are written only here; this module imports no torch.

TOKENIZER_CLASSES is the one table of tokenizer kinds: `data.tokenizer` is checked against its
names, and lmtrain.data.tokenizers loads each class from it (its `register()` adds a row). A new
kind is its module in lmtrain/data/tokenizers/ and one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from lmtrain.records import MAX_INT, OneOf

TOKENIZER_CLASSES: dict[str, str] = {
    "char": "lmtrain.data.tokenizers.char:CharVocab",
    "word": "lmtrain.data.tokenizers.word:WordVocab",
    "byte": "lmtrain.data.tokenizers.byte:ByteVocab",
    "bpe": "lmtrain.data.tokenizers.bpe:BpeVocab",
}
"""Each tokenizer kind by name, with its class as `module:Class` (imported only when a run
builds one: the classes import torch, which reading a config does not)."""

MIN_BPE_VOCAB = 260
"""A byte-level BPE vocabulary holds the specials (<pad>, <unk>, <eos>) and the 256 byte symbols
before its first merge; a smaller one could not spell every text."""
MAX_BPE_VOCAB = 2**24
"""The tokenizers trainer reserves its tables for data.vocab_size entries before it reads a line
(about 66 bytes each: 2**32 entries abort in Rust asking for 283 GB), and ids are stored as
uint32. 2**24 reserves about 1 GB and is 64 times the largest released vocabulary (262,144)."""


@dataclass(frozen=True)
class DataConfig:
    train: str = "builtin:python-docs"
    """Training text: a UTF-8 file path, or `builtin:python-docs` (ships with Python, no download)."""
    valid: str | None = "builtin:python-docs"
    """Validation text (file or builtin); null disables validation."""
    test: str | None = "builtin:python-docs"
    """Test text used by `lmtrain eval` when no --data is given; null for none."""
    tokenizer: Annotated[str, OneOf(TOKENIZER_CLASSES)] = "char"
    """`char`: every Unicode character is a token. `word`: whitespace split, `<eos>` at line ends. `byte`: every UTF-8 byte. `bpe`: byte-level BPE subwords."""
    vocab_size: int | None = None
    """bpe: vocabulary size to train on the training split, specials included (at least 260); null with tokenizer_file."""
    tokenizer_file: str | None = None
    """bpe: a tokenizer.json read from disk (never downloaded) instead of training one; `~` and `${VAR}` expand."""
    mode: Literal["stream", "sentences"] = "stream"
    """`stream`: one token stream cut into batch_size streams; `sentences`: each line is one sequence."""
    documents: bool = False
    """Sentences mode: a sequence is a blank-line separated document instead of a line."""
    max_length: int | None = None
    """Sentences mode: cut every training sequence to this many predicted tokens; null = chunked TBPTT."""
    min_freq: int = 1
    """Word level: tokens seen fewer times than this in the training split become `<unk>`."""
    max_size: int | None = None
    """Word level: keep at most this many most frequent tokens (plus specials); null = no limit."""
    decode_errors: Literal["strict", "replace"] = "strict"
    """Invalid UTF-8 in a data file: `strict` stops with the byte offset, `replace` uses U+FFFD."""
    cache_dir: str | None = "auto"
    """Prepared token files (tokenised once, mapped by later runs): `auto` = $LMTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/lmtrain, else ~/.cache/lmtrain; null = off."""

    def problems(self) -> list[str]:
        """Every out-of-range value and conflict of this section, as `data.key: message`."""
        p: list[str] = []

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                p.append(f"data.{key}: {msg}")

        need(self.min_freq >= 1, "min_freq", f"must be >= 1, got {self.min_freq}")
        need(
            self.max_size is None or self.max_size >= 1,
            "max_size",
            f"must be >= 1, got {self.max_size}",
        )
        need(bool(self.train.strip()), "train", "must name a file or builtin corpus, got ''")
        need(self.max_length is None or self.max_length >= 1, "max_length", "must be >= 1 or null")
        need(
            self.max_length is None or self.max_length < MAX_INT,
            "max_length",
            "must be below 2**63 - 1 (a sequence adds its start marker) or null",
        )
        if self.tokenizer == "byte":  # a fixed vocabulary: nothing to drop
            fixed = "the byte vocabulary is fixed (256 bytes)"
            need(self.min_freq == 1, "min_freq", f"{fixed}; leave 1")
            need(self.max_size is None, "max_size", f"{fixed}; leave null")
        p += self._tokenizer_problems()
        if self.mode == "stream":
            need(not self.documents, "documents", "only applies to data.mode: sentences")
            need(self.max_length is None, "max_length", "only applies to data.mode: sentences")
        need(
            self.cache_dir is None or bool(self.cache_dir.strip()),
            "cache_dir",
            "must not be empty (null = no cache)",
        )
        for key in ("train", "valid", "test", "cache_dir", "tokenizer_file"):
            path = getattr(self, key)
            need(path is None or "\0" not in path, key, "must not contain a NUL character")
        return p

    def _tokenizer_problems(self) -> list[str]:
        """data.vocab_size and data.tokenizer_file: only with bpe, which needs one of them."""
        p: list[str] = []
        if self.tokenizer != "bpe":
            for key in ("vocab_size", "tokenizer_file"):
                if getattr(self, key) is not None:
                    p.append(f"data.{key}: only applies to data.tokenizer: bpe; leave it null")
            return p
        vocab_size, tokenizer_file = self.vocab_size, self.tokenizer_file
        if vocab_size is None and tokenizer_file is None:
            p.append(
                "data.tokenizer: bpe needs data.vocab_size (to train one on the training split) "
                "or data.tokenizer_file (a tokenizer.json)"
            )
        if vocab_size is not None and tokenizer_file is not None:
            p.append(
                "data.vocab_size: data.tokenizer_file brings its own vocabulary; set one of "
                "vocab_size and tokenizer_file"
            )
        if vocab_size is not None and vocab_size < MIN_BPE_VOCAB:
            p.append(
                f"data.vocab_size: must be >= {MIN_BPE_VOCAB} (3 specials and 256 byte symbols "
                f"come before the first merge), got {vocab_size}"
            )
        elif vocab_size is not None and vocab_size > MAX_BPE_VOCAB:
            p.append(
                f"data.vocab_size: must be in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB:,}] (the BPE "
                f"trainer reserves memory for every entry up front), got {vocab_size:,}"
            )
        if tokenizer_file is not None and not tokenizer_file.strip():
            p.append("data.tokenizer_file: must name a tokenizer.json file, got ''")
        if self.max_size is not None:
            p.append("data.max_size: bpe sets its size with data.vocab_size; leave max_size null")
        return p


class VectorSettings(Protocol):
    """The model keys pretrained vectors follow (lmtrain.config's ModelConfig has them)."""

    @property
    def pretrained_embeddings(self) -> str | None: ...
    @property
    def pretrained_format(self) -> str: ...
    @property
    def embedding_dim(self) -> int: ...
    @property
    def freeze_embeddings(self) -> bool: ...


class Inputs(Protocol):
    """The keys that name input files: this section and the model's pretrained vectors
    (lmtrain.config's Config has them)."""

    @property
    def data(self) -> DataConfig: ...
    @property
    def model(self) -> VectorSettings: ...
