"""What training measures at an evaluation point: the validation figure and a logged sample."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from lmtrain.config import SampleOptions
from lmtrain.errors import LmtrainError
from lmtrain.evaluation import EvalResult, EvaluationInterrupted, evaluate_text
from lmtrain.runtime.signals import StopRequest
from lmtrain.sample import generate
from lmtrain.training.session import Session


def validate(s: Session, stop: StopRequest | None) -> EvalResult:
    """The validation figure, exact; under torchrun computed once on rank 0 and shared.

    `stop` is polled between windows, so that a signal need not wait for the end; a signal
    raises EvaluationInterrupted on every rank. Its progress shows as the logger's.
    """
    corpus = s.corpus
    assert corpus.valid is not None

    def run() -> EvalResult | int:
        try:
            return evaluate_text(
                s.model, corpus.vocab.kind, corpus.valid, sequences=s.valid_sequences,
                oov=corpus.valid_oov, batch_size=s.cfg.train.batch_size,
                text_bytes=corpus.valid_bytes, stop=stop,
                progress=s.logger.evaluation_progress(),
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


SAMPLE_PROGRESS_SECONDS = 10.0
"""Seconds between the progress lines of a long sample (run.sample_tokens allows 100,000); a
sample that takes less prints none. On a terminal a second progress bar shows it instead."""


def sample_text(s: Session, step: int, stop: StopRequest) -> str | None:
    """A sample for TensorBoard (run.sample_tokens from run.sample_prompt); None when a signal
    cut it short. `stop` is polled before every token, so a long sample stops at once."""
    r, log = s.cfg.run, s.logger
    bar = tqdm(
        total=r.sample_tokens, desc="sample", unit="token", leave=False, file=sys.stderr,
        disable=log.bar.disable, dynamic_ncols=True, delay=1.0,
    )  # fmt: skip
    started = shown = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal shown
        bar.update()
        if not bar.disable or log.quiet:
            return  # the bar shows it, or nothing does
        now = time.perf_counter()
        if now - shown >= SAMPLE_PROGRESS_SECONDS:
            shown, rate = now, done / max(now - started, 1e-9)
            log.message(
                f"step {step} | sample for TensorBoard: {done:,}/{r.sample_tokens:,} tokens | "
                f"{rate:,.0f} tokens/s | {(r.sample_tokens - done) / rate / 60:.1f} min left"
            )

    try:
        text = generate(
            s.model, s.corpus.vocab, r.sample_prompt,
            SampleOptions(max_tokens=r.sample_tokens, seed=s.cfg.train.seed), stop, progress,
        ).texts[0]  # fmt: skip
    except LmtrainError as e:
        text = f"(no sample: {e})"
    finally:
        bar.close()
    return None if stop.requested else text
