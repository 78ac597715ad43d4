"""Held-out evaluation: stream and sentences figures, eval-time adaptation, scoring.

Callers (training, the eval and score commands, the Python API) import from this package:

entry.py       evaluate_text / evaluate_file / evaluate_string: every rule of an evaluation
stream.py      EvalResult and Unit, every figure; one stream read from first token to last
reading.py     how every evaluation reads a model: eval mode, and logits a window at a time
sentences.py   every line or document from a zero state, in packed batches
adaptation.py  dynamic evaluation and the continuous cache pointer
scoring.py     `lmtrain score`: the log-probability of each sentence
bpb.py         bits per byte, comparable across tokenisers
config.py      the figures' names (FIGURES), which the config and plots read without torch

The names below are imported on first use (PEP 562), so that reading config.py does not import
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmtrain import lazy_getattr

if TYPE_CHECKING:
    from lmtrain.evaluation.entry import (
        EvalReport,
        check_options,
        evaluate_file,
        evaluate_string,
        evaluate_text,
    )
    from lmtrain.evaluation.scoring import (
        SentenceScore,
        score_texts,
        texts_to_score,
        unknown_warning,
    )
    from lmtrain.evaluation.stream import (
        EvalResult,
        EvaluationInterrupted,
        Unit,
        unigram_baseline,
    )

_HOMES = {
    **dict.fromkeys(
        ["EvalReport", "check_options", "evaluate_file", "evaluate_string", "evaluate_text"],
        "entry",
    ),
    **dict.fromkeys(
        ["SentenceScore", "score_texts", "texts_to_score", "unknown_warning"], "scoring"
    ),
    **dict.fromkeys(["EvalResult", "EvaluationInterrupted", "Unit", "unigram_baseline"], "stream"),
}
"""Each name and the module of this package it is imported from."""
__all__ = [
    "EvalReport",
    "EvalResult",
    "EvaluationInterrupted",
    "SentenceScore",
    "Unit",
    "check_options",
    "evaluate_file",
    "evaluate_string",
    "evaluate_text",
    "score_texts",
    "texts_to_score",
    "unigram_baseline",
    "unknown_warning",
]

__getattr__ = lazy_getattr(__name__, _HOMES)
