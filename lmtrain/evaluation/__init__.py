"""Held-out evaluation: stream and sentences figures, eval-time adaptation, scoring.

Callers (training, the eval and score commands, the Python API) import from this package:

entry.py       evaluate_text / evaluate_file / evaluate_string: every rule of an evaluation
stream.py      EvalResult and Unit, every figure; one stream read from first token to last
reading.py     how every evaluation reads a model: eval mode, and logits a window at a time
sentences.py   every line or document from a zero state, in packed batches
adaptation.py  dynamic evaluation and the continuous cache pointer
scoring.py     `lmtrain score`: the log-probability of each sentence
bpb.py         bits per byte, comparable across tokenisers
"""

from lmtrain.evaluation.entry import (
    EvalReport,
    check_options,
    evaluate_file,
    evaluate_string,
    evaluate_text,
)
from lmtrain.evaluation.scoring import SentenceScore, score_texts, texts_to_score, unknown_warning
from lmtrain.evaluation.stream import EvalResult, EvaluationInterrupted, Unit, unigram_baseline

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
