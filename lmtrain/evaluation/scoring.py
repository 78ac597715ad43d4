"""`lmtrain score`: the log-probability of each sentence, each read from a zero state.

The sentences are scored as sentences-mode evaluation reads its sequences
(lmtrain/evaluation/sentences.py), so a sentence's figure does not depend on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmtrain.data.corpus import read_file
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


def texts_to_score(sentences: Sequence[str], file: Path | None = None) -> list[str]:
    """`lmtrain score`'s input: the non-blank lines of `file`, then each sentence argument."""
    texts: list[str] = []
    if file is not None:
        texts += [line for line in read_file(file).splitlines() if line.strip()]
    for i, text in enumerate(sentences, start=1):
        if not text.strip():
            raise LmtrainError(f"sentence argument {i} is empty; give some text to score")
        texts.append(text)
    if not texts:
        raise LmtrainError("nothing to score: give sentences as arguments or --file FILE")
    return texts


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
