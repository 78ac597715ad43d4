"""Text in, token ids out: corpora, vocabularies and batching.

The names below are imported on first use (PEP 562), so that reading the config's data section
(lmtrain/data/config.py) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmtrain.data.batching import Batch, SentenceBatches, StreamBatches
    from lmtrain.data.corpus import read_text
    from lmtrain.data.vocab import Vocab

_HOMES = {
    "Batch": "batching",
    "SentenceBatches": "batching",
    "StreamBatches": "batching",
    "read_text": "corpus",
    "Vocab": "vocab",
}
"""Each name and the module of this package it is imported from."""
__all__ = ["Batch", "SentenceBatches", "StreamBatches", "Vocab", "read_text"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
