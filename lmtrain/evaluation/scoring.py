"""`lmtrain score`: the log-probability of each sentence, each read from a zero state.

The sentences are scored as sentences-mode evaluation reads its sequences
(lmtrain/evaluation/sentences.py), so a sentence's figure does not depend on the batch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmtrain.data.corpus import TEXT_FILE_MAX_BYTES, read_file
from lmtrain.data.sentences import sentence_ids
from lmtrain.data.tokenizers import Tokenizer
from lmtrain.errors import LmtrainError
from lmtrain.evaluation.sentences import sequence_nlls
from lmtrain.evaluation.stream import perplexity
from lmtrain.models import LanguageModel


@dataclass(frozen=True)
class SentenceScore:
    text: str
    logprob: float
    """Natural-log probability of the sentence, its end marker included."""
    tokens: int
    """Predicted tokens: the sentence's tokens plus its end marker."""
    oov: int
    """Tokens not in the vocabulary (scored as `<unk>`)."""

    @property
    def log2prob(self) -> float:
        return self.logprob / math.log(2)

    @property
    def ppl(self) -> float:
        return perplexity(-self.logprob / self.tokens)

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "logprob": self.logprob,
            "log2prob": self.log2prob,
            "tokens": self.tokens,
            "ppl": self.ppl,
            "oov": self.oov,
        }


def score_texts(
    model: LanguageModel, vocab: Tokenizer, texts: list[str], batch_size: int = 32
) -> list[SentenceScore]:
    """Scores of `texts`, in input order; every text must hold some non-whitespace."""
    encoded = [sentence_ids(vocab, t) for t in texts]
    nlls = sequence_nlls(model, [ids for ids, _ in encoded], batch_size).tolist()
    return [
        SentenceScore(text=t, logprob=-nll, tokens=ids.numel() - 1, oov=oov)
        for t, (ids, oov), nll in zip(texts, encoded, nlls, strict=True)
    ]


STDIN = "-"
"""`--file -`: the sentences come from standard input, as for cat, grep or sort. Only the string
"-" means it: a Path is always a file (a file named "-" is `./-`, or Path("-"))."""


def texts_to_score(
    sentences: Sequence[str], file: str | Path | None = None, stdin: BinaryIO | None = None
) -> list[str]:
    """`lmtrain score`'s input: the non-blank lines of `file` (STDIN: of `stdin`, by default the
    process's standard input), then each sentence argument."""
    texts: list[str] = []
    if file is not None:
        text = (
            _read_stdin(stdin) if file == STDIN else read_file(Path(file), origin="given to --file")
        )
        texts += [line for line in text.splitlines() if line.strip()]
    for i, text in enumerate(sentences, start=1):
        if not text.strip():
            raise LmtrainError(f"sentence argument {i} is empty; give some text to score")
        texts.append(text)
    if not texts:
        raise LmtrainError(
            "nothing to score: give sentences as arguments, --file FILE, or --file - to read "
            "them from standard input"
        )
    return texts


def _read_stdin(stdin: BinaryIO | None) -> str:
    """The UTF-8 text on standard input, held to the bound of a --file (TEXT_FILE_MAX_BYTES)."""
    where = "--file - (standard input)"
    stream = stdin if stdin is not None else sys.stdin.buffer
    try:
        raw = stream.read(TEXT_FILE_MAX_BYTES + 1)
    except OSError as e:
        raise LmtrainError(f"{where}: cannot read ({e.strerror or e})") from None
    if len(raw) > TEXT_FILE_MAX_BYTES:
        raise LmtrainError(
            f"{where}: more than {TEXT_FILE_MAX_BYTES >> 20} MB; this input takes short text "
            "(pass fewer lines at a time)"
        )
    if b"\x00" in raw[:65536]:
        raise LmtrainError(f"{where}: looks like binary data (it contains NUL bytes); give text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LmtrainError(
            f"{where}: not valid UTF-8 at byte offset {e.start} "
            f"({raw[e.start : e.start + 4]!r}); convert it first (e.g. iconv -t utf-8)"
        ) from None


def unknown_warning(scores: Sequence[SentenceScore]) -> str | None:
    """The warning due when some sentence holds tokens not in the vocabulary, else None."""
    unknown = sum(s.oov > 0 for s in scores)
    if not unknown:
        return None
    # An unknown word is scored as <unk>, often a likely token: such a sentence can score better
    # than real text, so the figure must not pass without notice.
    return (
        f"{unknown} of {len(scores)} sentence(s) hold tokens not in the model's "
        "vocabulary, scored as <unk>; their figures are not comparable with the others "
        "(see the oov count)"
    )
