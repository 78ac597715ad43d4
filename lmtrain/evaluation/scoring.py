"""Per-sequence log-probabilities: sentences-mode evaluation and `lmtrain score`.

Every sequence is scored from a zero state, starting at its start marker (see
lmtrain/data/sentences.py), so a sentence's figure is the same scored alone or inside any batch:
batches are packed (padding is never read), long sequences are read in chunks whose state is
carried over exactly, and the NLL of each row is summed on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmtrain.data.batching import SentenceBatches
from lmtrain.data.sentences import sentence_ids
from lmtrain.data.vocab import Vocab
from lmtrain.errors import DataError
from lmtrain.evaluation.stream import EvalResult, EvaluationInterrupted
from lmtrain.models import LanguageModel, detach_state, select_rows

# Rows of logits materialised at once; bounds memory for large vocabularies (as in evaluate.py).
_LOGIT_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class EvalOptions:
    """How `lmtrain eval` / `lmtrain score` read a text; never changes a figure except `streams`."""

    batch_size: int = 1
    """Sequences evaluated together (sentences mode, score)."""
    streams: int = 1
    """Stream mode: parallel streams, each from a zero state (1 = exact)."""

    def problems(self) -> list[str]:
        p = []
        if self.batch_size < 1:
            p.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.streams < 1:
            p.append(f"--streams must be >= 1 (1 = exact), got {self.streams}")
        return p

    def text_problems(self, tokens: int, where: str) -> list[str]:
        """Problems of reading a text of `tokens` tokens with these options."""
        # Every stream needs two tokens: one to read and one to predict.
        if tokens < 2:
            return [f"{where}: too little text to evaluate ({tokens} tokens; at least 2 needed)"]
        if self.streams > tokens // 2:
            return [
                f"--streams {self.streams} is more than {where} allows: its {tokens:,} tokens "
                f"make at most {tokens // 2:,} streams of 2 tokens; use a smaller --streams "
                "(1 = exact)"
            ]
        return []


@torch.no_grad()
def sequence_nlls(
    model: LanguageModel,
    sequences: list[torch.Tensor],
    batch_size: int = 32,
    bptt: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """(N,) float64 total NLL in nats of each marker-framed sequence, in input order.

    `stop` is polled before each batch; when it returns True, EvaluationInterrupted is raised.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if bptt is None:
        bptt = max(16, min(4096, _LOGIT_ELEMENTS // (model.vocab_size * batch_size)))
    batches = SentenceBatches(sequences, batch_size, bptt, shuffle=False)
    totals = torch.zeros(len(sequences), dtype=torch.float64, device=device)
    state = model.init_state(1, device)
    for batch, rows in zip(batches.batches(), batches.sequence_rows(), strict=True):
        if stop is not None and stop():
            model.train(was_training)
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
    model.train(was_training)
    return totals.cpu()


def evaluate_sentences(
    model: LanguageModel,
    sequences: list[torch.Tensor],
    kind: str,
    oov: int = 0,
    batch_size: int = 32,
    stop: Callable[[], bool] | None = None,
    text_tokens: int | None = None,
    text_bytes: int | None = None,
) -> EvalResult:
    """Total NLL over all sequences; the batch size changes only the speed, not the figure.

    `stop`: polled between batches; a stop request raises EvaluationInterrupted.
    `text_tokens`: tokens of the whole text the sequences came from (the oov_rate's base).
    `text_bytes`: UTF-8 bytes of that text (the bits per byte's base).
    """
    if not sequences:
        raise DataError("no non-empty lines to evaluate")
    nll = float(sequence_nlls(model, sequences, batch_size, stop=stop).sum())
    tokens = sum(s.numel() - 1 for s in sequences)
    return EvalResult(
        nll=nll, tokens=tokens, kind=kind, oov=oov, text_tokens=text_tokens, text_bytes=text_bytes
    )


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
        return math.exp(min(-self.logprob / self.tokens, 700.0))

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
    model: LanguageModel, vocab: Vocab, texts: list[str], batch_size: int = 32
) -> list[SentenceScore]:
    """Scores of `texts`, in input order; every text must hold some non-whitespace."""
    encoded = [sentence_ids(vocab, t) for t in texts]
    nlls = sequence_nlls(model, [ids for ids, _ in encoded], batch_size).tolist()
    return [
        SentenceScore(text=t, logprob=-nll, tokens=ids.numel() - 1, oov=oov)
        for t, (ids, oov), nll in zip(texts, encoded, nlls, strict=True)
    ]
