"""Text in, token ids out: corpora, vocabularies and batching.

The names below are imported on first use (PEP 562), so that reading the config's data section
(lmtrain/data/config.py) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmtrain import lazy_getattr

if TYPE_CHECKING:
    from lmtrain.data.batching import Batch, SentenceBatches, StreamBatches
    from lmtrain.data.corpus import read_text

_HOMES = {
    "Batch": "batching",
    "SentenceBatches": "batching",
    "StreamBatches": "batching",
    "read_text": "corpus",
}
"""Each name and the module of this package it is imported from."""
__all__ = ["Batch", "SentenceBatches", "StreamBatches", "read_text"]

__getattr__ = lazy_getattr(__name__, _HOMES)
