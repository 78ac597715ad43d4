"""A run's text: the splits as token ids, and the batches the loop reads.

prepare_data(cfg)          text files (or the prepared cache) -> Corpus(vocab, train, valid)
make_batches(cfg, corpus)  Corpus.train -> stream windows or packed sentences (data.mode)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmtrain.config import Config
from lmtrain.data import SentenceBatches, StreamBatches
from lmtrain.data.prepare import load_corpus
from lmtrain.data.sentences import split_sequences
from lmtrain.data.tokenizers import Tokenizer
from lmtrain.data.variable_bptt import VariableStreamBatches
from lmtrain.errors import DataError

Batches = StreamBatches | SentenceBatches


@dataclass
class Corpus:
    vocab: Tokenizer
    train: torch.Tensor
    """(N,) token ids: int64 when tokenised in memory, or the uint8 / uint16 / uint32 view of a
    prepared file (data.cache_dir); batching converts a window at a time."""
    valid: torch.Tensor | None
    valid_oov: int = 0
    valid_bytes: int | None = None
    """UTF-8 bytes of the validation text, for bits per byte; None without validation."""


def prepare_data(
    cfg: Config, vocab: Tokenizer | None = None, echo: Callable[[str], None] | None = None
) -> Corpus:
    """Read and encode the splits; build the vocabulary from the training split only.

    With data.cache_dir the splits go through the prepared-file cache (lmtrain/data/prepare.py):
    mapped when prepared before, else tokenised into it; `echo` hears why a split is tokenised.
    """
    pc = load_corpus(cfg.data, vocab, echo or silent)
    if pc.valid is None:
        return Corpus(pc.vocab, pc.train.ids, None)
    return Corpus(pc.vocab, pc.train.ids, pc.valid.ids, pc.valid.oov, pc.valid.text_bytes)


def make_batches(cfg: Config, corpus: Corpus) -> Batches:
    """The global batches of one epoch, in the order data.mode and train.variable_bptt ask for.

    Stream mode cuts the text into batch_size parallel streams and reads them bptt tokens at a
    time, carrying the state from one window to the next:

        text  a b c d e f g h i j k l      batch_size = 2, bptt = 3
        row 0 a b c | d e f                window 1: (a b c / g h i), window 2: (d e f / j k l)
        row 1 g h i | j k l

    Sentences mode packs whole lines (each from a zero state) into padded batches instead.
    """
    t, d = cfg.train, cfg.data
    try:
        if d.mode == "sentences":
            sequences = split_sequences(corpus.train, corpus.vocab, d.documents, d.max_length)
            if not sequences:
                raise DataError(f"{d.train}: no non-empty lines; sentences mode needs some text")
            return SentenceBatches(sequences, t.batch_size, t.bptt, t.seed)
        if t.variable_bptt:
            return VariableStreamBatches(corpus.train, t.batch_size, t.bptt, t.seed)
        return StreamBatches(corpus.train, t.batch_size, t.bptt)
    except ValueError as e:
        raise DataError(
            f"{d.train}: too little training text ({e}); lower train.batch_size"
        ) from None


def validation_sequences(cfg: Config, corpus: Corpus) -> list[torch.Tensor] | None:
    """Sentences mode: the validation split as whole sequences (never cut to data.max_length:
    the figure measures the text). Stream mode, or no validation split: None."""
    if corpus.valid is None or cfg.data.mode != "sentences":
        return None
    return split_sequences(corpus.valid, corpus.vocab, cfg.data.documents)


def silent(_: str) -> None:
    """Ranks other than 0 print nothing; rank 0 speaks for the job."""
