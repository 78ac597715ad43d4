"""Sentences-mode evaluation: every sequence scored on its own, from a zero state.

Every sequence starts at its start marker (see lmtrain/data/sentences.py), so a sentence's
figure is the same scored alone or inside any batch: batches are packed (padding is never read),
long sequences are read in chunks whose state is carried over exactly, and the NLL of each row is
summed on its own. `lmtrain score` (lmtrain/evaluation/scoring.py) reads sentences the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmtrain.data.batching import SentenceBatches
from lmtrain.errors import DataError
from lmtrain.evaluation.reading import evaluating, logit_window
from lmtrain.evaluation.stream import EvalResult, EvaluationInterrupted, Progress
from lmtrain.models import LanguageModel, detach_state, select_rows


def sequence_nlls(
    model: LanguageModel,
    sequences: Sequence[torch.Tensor],
    batch_size: int = 32,
    bptt: int | None = None,
    stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """(N,) float64 total NLL in nats of each marker-framed sequence, in input order.

    `stop` is polled before each batch; when it returns True, EvaluationInterrupted is raised.
    `progress` hears the predicted tokens done after each batch.
    """
    device = next(model.parameters()).device
    if bptt is None:
        bptt = logit_window(model.vocab_size, batch_size)
    batches = SentenceBatches(sequences, batch_size, bptt, shuffle=False)
    totals = torch.zeros(len(sequences), dtype=torch.float64, device=device)
    todo, done = batches.tokens_per_epoch, 0
    if progress is not None:
        progress(0, todo)
    with evaluating(model):
        state = model.init_state(1, device)
        for batch, rows in zip(batches.batches(), batches.sequence_rows(), strict=True):
            if stop is not None and stop():
                raise EvaluationInterrupted
            n = batch.inputs.size(1)
            if batch.carry is None:
                state = model.init_state(n, device)
            else:
                state = select_rows(state, batch.carry)
            hidden, state = model(batch.inputs.to(device), state, batch.lengths)  # (T, B, H)
            state = detach_state(state)
            h = hidden.reshape(-1, hidden.size(-1))
            nll = model.output.token_nll(h, batch.targets.reshape(-1).to(device))  # (T * B,)
            totals.index_add_(0, rows.to(device), nll.view(-1, n).double().sum(0))
            if progress is not None:
                done += batch.num_tokens
                progress(done, todo)
    return totals.cpu()


def evaluate_sentences(
    model: LanguageModel,
    sequences: Sequence[torch.Tensor],
    kind: str,
    oov: int = 0,
    batch_size: int = 32,
    stop: Callable[[], bool] | None = None,
    text_tokens: int | None = None,
    text_bytes: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Total NLL over all sequences; the batch size changes only the speed, not the figure.

    `stop`: polled between batches; a stop request raises EvaluationInterrupted.
    `text_tokens`: tokens of the whole text the sequences came from (the oov_rate's base).
    `text_bytes`: UTF-8 bytes of that text (the bits per byte's base).
    `progress`: hears the predicted tokens done after each batch.
    """
    if not sequences:
        raise DataError("no non-empty lines to evaluate")
    nll = float(sequence_nlls(model, sequences, batch_size, stop=stop, progress=progress).sum())
    tokens = sum(s.numel() - 1 for s in sequences)
    return EvalResult(
        nll=nll, tokens=tokens, kind=kind, oov=oov, text_tokens=text_tokens, text_bytes=text_bytes
    )
