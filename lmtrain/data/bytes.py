"""Moved to lmtrain/data/tokenizers/byte.py; these names stay while callers move there."""

from lmtrain.data.tokenizers.byte import OFFSET, ByteVocab

__all__ = ["OFFSET", "ByteVocab"]
