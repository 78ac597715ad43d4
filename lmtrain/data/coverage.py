"""Does a text fit a checkpoint's tokeniser? The rule behind `lmtrain eval`'s refusal.

A vocabulary maps tokens it has never seen to `<unk>`, so any text "evaluates". But a character
model asked to score text written mostly in characters it never saw (another script, a binary
dump decoded with `replace`), or a word model given text of another language or tokenisation,
produces a perplexity that measures nothing. Rule: when more than half of the text's tokens are
unknown to the vocabulary, eval refuses with the counts; below that it proceeds and reports the
OOV rate as usual (word models).
"""

from __future__ import annotations

from lmtrain.data.tokenizers import Encoded, Tokenizer
from lmtrain.errors import DataError

MAX_UNKNOWN_FRACTION = 0.5


def check_coverage(enc: Encoded, vocab: Tokenizer, source: str) -> None:
    """Raise DataError when `enc` (the encoding of `source`) is mostly unknown tokens."""
    total = enc.ids.numel()
    if total == 0 or enc.oov / total <= MAX_UNKNOWN_FRACTION:
        return
    raise DataError(
        f"{source}: {enc.oov:,} of its {total:,} tokens ({enc.oov / total:.0%}) are not in this "
        f"checkpoint's {vocab.kind} vocabulary of {len(vocab):,}, so its perplexity would measure "
        f"nothing (lmtrain refuses when more than {MAX_UNKNOWN_FRACTION:.0%} are unknown). Is "
        "this the right checkpoint for this text, and the right file?"
    )
