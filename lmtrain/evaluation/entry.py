"""The one way into evaluation: `evaluate_text` for token ids, `evaluate_file` for a user's text.

Training, `lmtrain eval` and the Python API's `evaluate` all come through here, so the rules
(which mode reads a model's text, which options apply to it, when a text is too short) are
written once:

    evaluate_file(model, vocab, data, spec, options, adapt)   read the text of a --data spec
      -> evaluate_string(..., text, source, options, adapt)   coverage, mode and option rules
           -> evaluate_text(model, kind, ids, sequences=...)  the stream or sentences figure
           -> evaluate_adaptive(model, ids, ...)              dynamic evaluation / cache, if asked

`lmtrain score` and `Model.score` read single sentences through scoring.py, the same way
sentences-mode evaluation reads its sequences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmtrain.config import AdaptOptions, DataConfig, EvalOptions
from lmtrain.data import read_text
from lmtrain.data.corpus import BUILTIN_PREFIX, is_builtin, split_file_spec, text_utf8_bytes
from lmtrain.data.coverage import check_coverage
from lmtrain.data.sentences import split_sequences
from lmtrain.data.tokenizers import Encoded, Tokenizer
from lmtrain.errors import LmtrainError
from lmtrain.evaluation.adaptation import evaluate_adaptive
from lmtrain.evaluation.sentences import evaluate_sentences
from lmtrain.evaluation.stream import EvalResult, Progress, evaluate_ids
from lmtrain.models import LanguageModel

SAVED_TEST = "in the run's saved config (data.test, as training read it)"

STREAMS_IN_SENTENCES_MODE = (
    "--streams applies to stream-mode models only; this model was trained with "
    "data.mode: sentences, whose evaluation is exact at any --batch-size"
)


def evaluate_text(
    model: LanguageModel,
    kind: str,
    ids: torch.Tensor,
    *,
    sequences: Sequence[torch.Tensor] | None = None,
    oov: int = 0,
    batch_size: int = 1,
    streams: int = 1,
    text_bytes: int | None = None,
    stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """The figure of `ids`, the whole text's tokens (line ends included).

    With `sequences` (the text split by lmtrain.data.sentences.split_sequences): sentences
    mode, each sequence read from a zero state, `batch_size` at a time (never changes the
    figure). Without: stream mode, exact with `streams=1`; `streams > 1` is the opt-in
    approximation. `stop` is polled between windows or batches; a stop request raises
    EvaluationInterrupted. `text_bytes`: UTF-8 bytes of the text, for bits per byte.
    `progress(done, total)` hears the predicted tokens done, from 0 before the first window.
    """
    if sequences is not None:
        if streams != 1:
            raise LmtrainError(STREAMS_IN_SENTENCES_MODE)
        return evaluate_sentences(
            model, sequences, kind, oov, batch_size, stop=stop,
            text_tokens=ids.numel(), text_bytes=text_bytes, progress=progress,
        )  # fmt: skip
    return evaluate_ids(
        model, ids, kind, oov, streams, stop=stop, text_bytes=text_bytes, progress=progress
    )


def check_options(options: EvalOptions, adapt: AdaptOptions | None = None) -> None:
    """Refuse every out-of-range option at once, before a model is loaded."""
    adapt = adapt if adapt is not None else AdaptOptions()
    if problems := options.problems() + adapt.problems():
        raise LmtrainError("; ".join(problems))
    if (adapt.dynamic or adapt.cache) and options.streams > 1:
        raise LmtrainError(
            "--dynamic-lr and --cache-size read the text as one stream; drop --streams"
        )


@dataclass(frozen=True)
class EvalReport:
    """What `lmtrain eval` prints: what was measured, the plain figure, and the adapted one when
    asked for."""

    source: str
    """The text's name: the --data spec, or "text" for a string."""
    result: EvalResult
    encoded: Encoded
    adapted: EvalResult | None = None
    method: str = "none"
    """The adaptation, as AdaptOptions.describe() words it."""
    split: str | None = None
    """The split of the source that was read (train, valid, test): for a built-in corpus, whose
    three splits carry one name, or a `FILE:SPLIT` spec; None for a whole file or a string."""
    checkpoint: str | None = None
    """The checkpoint file (or export folder) the model came from, when the caller knows it."""
    step: int | None = None
    """The optimiser step of that checkpoint, when known."""

    def to_dict(self) -> dict[str, object]:
        """The report as JSON: `data` and the figures as always; `checkpoint`, `step` and
        `split` (null where unknown) say what was measured."""
        extra = (
            {}
            if self.adapted is None
            else {"adapted": {"method": self.method, **self.adapted.to_dict()}}
        )
        measured = {"checkpoint": self.checkpoint, "step": self.step, "split": self.split}
        return {"data": self.source, **measured, **self.result.to_dict(), **extra}

    def what(self) -> str:
        """What was measured, in words: "runs/x/checkpoints/best.pt (step 900) on
        builtin:python-docs, test split"."""
        model = ""
        if self.checkpoint is not None:
            step = f" (step {self.step:,})" if self.step is not None else ""
            model = f"{self.checkpoint}{step} on "
        split = f", {self.split} split" if self.split is not None else ""
        return f"{model}{self.source}{split}"

    def lines(self) -> list[str]:
        r, enc = self.result, self.encoded
        out = [f"{self.source}: {r.summary()}"]
        if r.unit.open_vocabulary:
            out.append(f"OOV rate {enc.oov_rate:.4%} ({enc.oov:,} of {enc.ids.numel():,} tokens)")
        if self.adapted is not None:
            a = self.adapted
            out.append(f"adapted, {self.method}: {a.summary()}")
            out.append(f"perplexity {r.ppl:.2f} -> {a.ppl:.2f} ({a.ppl / r.ppl - 1:+.1%})")
        return out


def evaluate_file(
    model: LanguageModel,
    vocab: Tokenizer,
    data: DataConfig,
    spec: str | None,
    options: EvalOptions,
    adapt: AdaptOptions | None = None,
    *,
    origin: str | None = None,
    progress: Callable[[str], Progress] | None = None,
) -> EvalReport:
    """`lmtrain eval`: the text of `spec` (a file or builtin:NAME; None: the run's data.test).

    `origin`: where `spec` was written ("given to --data"), for the message of a missing file;
    by default the run's data.test, or "you gave" for another path. `progress(label)`: the
    progress callback of each pass (evaluate_string).
    """
    adapt = adapt if adapt is not None else AdaptOptions()
    check_options(options, adapt)
    if origin is None:
        saved = spec is None or spec == data.test
        origin = f"{SAVED_TEST}; pass --data FILE to evaluate another text" if saved else "you gave"
    spec = data.test if spec is None else spec  # "" is a path to refuse, not the default
    if spec is None:
        raise LmtrainError("no --data given and the run's config has no data.test")
    text = read_text(spec, "test", data.decode_errors, origin=origin)
    report = evaluate_string(model, vocab, data, text, spec, options, adapt, progress=progress)
    return dataclasses.replace(report, split=split_of(spec, "test"))


def split_of(spec: str, role: str) -> str | None:
    """The split `spec` reads when used as `role` (as lmtrain.data.read_text picks it): a
    built-in corpus's named split or the role's, a `FILE:SPLIT` spec's; None for a whole file."""
    if is_builtin(spec):
        return spec[len(BUILTIN_PREFIX) :].partition(":")[2] or role
    return split_file_spec(spec)[1]


def evaluate_string(
    model: LanguageModel,
    vocab: Tokenizer,
    data: DataConfig,
    text: str,
    source: str,
    options: EvalOptions,
    adapt: AdaptOptions | None = None,
    *,
    progress: Callable[[str], Progress] | None = None,
) -> EvalReport:
    """The figures of `text` (named `source` in messages), read the way the model was trained:
    every line from a zero state in sentences mode, one stream otherwise.

    `progress(label)` gives the progress callback of each pass: "evaluation", then "adapted
    evaluation, ..." when `adapt` asks for one (lmtrain.metrics.Meter.track is one)."""
    adapt = adapt if adapt is not None else AdaptOptions()
    check_options(options, adapt)
    enc = vocab.encode(text)
    check_coverage(enc, vocab, source)
    text_bytes = text_utf8_bytes(text)  # bits per byte: comparable across tokenisers
    if data.mode == "sentences":
        if adapt.dynamic or adapt.cache:
            raise LmtrainError(
                "--dynamic-lr and --cache-size read the text as one stream; this model was "
                "trained in sentences mode, where every line starts from a fresh state"
            )
        sequences = split_sequences(enc.ids, vocab, data.documents)
    else:
        if problems := options.text_problems(enc.ids.numel(), source):
            raise LmtrainError("; ".join(problems))
        sequences = None
    result = evaluate_text(
        model, vocab.kind, enc.ids, sequences=sequences, oov=enc.oov,
        batch_size=options.batch_size, streams=options.streams, text_bytes=text_bytes,
        progress=None if progress is None else progress("evaluation"),
    )  # fmt: skip
    adapted = None
    if adapt.dynamic or adapt.cache:
        adapted = evaluate_adaptive(
            model, enc.ids, vocab.kind, enc.oov, adapt, text_bytes,
            None if progress is None else progress(f"adapted evaluation, {adapt.describe()}"),
        )  # fmt: skip
    return EvalReport(source, result, enc, adapted, adapt.describe())
