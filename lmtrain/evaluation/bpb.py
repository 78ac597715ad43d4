"""Bits per byte: a loss that compares models whatever their tokeniser.

Per-token loss depends on what a token is (a character, a word, a BPE piece, a byte), so it
cannot compare a word model with a byte model. The total negative log-likelihood of a text,
divided by the UTF-8 bytes of that text, can:

    bpb = (sum of the per-token nll in nats) / (UTF-8 bytes of the text) / ln 2

The byte count is that of the text as decoded (after `data.decode_errors: replace`, each
replacement character counts its 3 bytes), so it is counted from the text, not the file size:
lmtrain.data.corpus.text_utf8_bytes, which the data pipeline also records for prepared splits.
"""

from __future__ import annotations

import codecs
import math
from pathlib import Path

from lmtrain import files
from lmtrain.data.corpus import text_utf8_bytes

_CHUNK = 1 << 20


def bits_per_byte(nll_nats: float, text_bytes: int) -> float:
    """Total nll in nats over `text_bytes` UTF-8 bytes, in bits per byte."""
    if text_bytes <= 0:
        raise ValueError(f"bits per byte needs a text of at least one byte, not {text_bytes}")
    return nll_nats / text_bytes / math.log(2)


def file_utf8_bytes(path: Path, errors: str = "strict") -> int:
    """UTF-8 bytes of a file's text as `read_text` decodes it, read in chunks.

    With `errors="strict"` this is the file size once the whole file is known to decode;
    with `"replace"` each undecodable sequence counts as U+FFFD (3 bytes). UnicodeDecodeError
    for invalid UTF-8 under `strict`.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    total = 0
    # Reopened after the text was read: through the checked opener, so a pipe put there in
    # between is refused instead of read until it closes.
    with files.open_regular(path) as f:
        while block := f.read(_CHUNK):
            total += text_utf8_bytes(decoder.decode(block))
        total += text_utf8_bytes(decoder.decode(b"", final=True))
    return total
