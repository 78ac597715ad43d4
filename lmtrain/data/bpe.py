"""Moved to lmtrain/data/tokenizers/bpe.py; these names stay while callers move there."""

from lmtrain.data.tokenizers.bpe import (
    MIN_VOCAB_SIZE,
    OFFSET,
    TOKENIZER_MAX_BYTES,
    BpeVocab,
    read_tokenizer_file,
    train_tokenizer,
)

__all__ = [
    "MIN_VOCAB_SIZE",
    "OFFSET",
    "TOKENIZER_MAX_BYTES",
    "BpeVocab",
    "read_tokenizer_file",
    "train_tokenizer",
]
