"""Text in, token ids out: corpora, vocabularies and batching."""

from lmtrain.data.batching import Batch, SentenceBatches, StreamBatches
from lmtrain.data.corpus import read_text
from lmtrain.data.vocab import Vocab

__all__ = ["Batch", "SentenceBatches", "StreamBatches", "Vocab", "read_text"]
