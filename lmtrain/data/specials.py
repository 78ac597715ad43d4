"""Moved to lmtrain/data/tokenizers/base.py; these names stay while callers move there."""

from lmtrain.data.tokenizers.base import EOS, LITERAL, PAD, RESERVED_WORDS, UNK, Encoded, surface

__all__ = ["EOS", "LITERAL", "PAD", "RESERVED_WORDS", "UNK", "Encoded", "surface"]
