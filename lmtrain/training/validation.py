"""What training measures at an evaluation point: the validation figure and a logged sample."""

from __future__ import annotations

from lmtrain.config import SampleOptions
from lmtrain.errors import LmtrainError
from lmtrain.evaluation import EvalResult, EvaluationInterrupted, evaluate_text
from lmtrain.runtime.signals import StopRequest
from lmtrain.sample import generate
from lmtrain.training.session import Session


def validate(s: Session, stop: StopRequest | None) -> EvalResult:
    """The validation figure, exact; under torchrun computed once on rank 0 and shared.

    `stop` is polled between windows, so that a signal need not wait for the end; a signal
    raises EvaluationInterrupted on every rank.
    """
    corpus = s.corpus
    assert corpus.valid is not None

    def run() -> EvalResult | int:
        try:
            return evaluate_text(
                s.model, corpus.vocab.kind, corpus.valid, sequences=s.valid_sequences,
                oov=corpus.valid_oov, batch_size=s.cfg.train.batch_size,
                text_bytes=corpus.valid_bytes, stop=stop,
            )  # fmt: skip
        except EvaluationInterrupted:
            assert stop is not None and stop.signum is not None
            return stop.signum  # a plain value, so that every rank learns of it

    result = s.ctx.on_main(run)
    if isinstance(result, int):
        if stop is not None and not stop.requested:
            stop.request(result)  # rank 0 was signalled: every rank stops with it
        raise EvaluationInterrupted
    return result


def sample_text(s: Session) -> str:
    """A short sample for TensorBoard (run.sample_tokens from run.sample_prompt)."""
    r = s.cfg.run
    try:
        text = generate(
            s.model,
            s.corpus.vocab,
            r.sample_prompt,
            SampleOptions(max_tokens=r.sample_tokens, seed=s.cfg.train.seed),
        ).texts[0]
    except LmtrainError as e:
        text = f"(no sample: {e})"
    s.model.train()
    return text
