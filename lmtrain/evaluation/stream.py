"""Held-out evaluation: loss in nats per token, perplexity, bits per character, bits per byte,
OOV rate. Every figure is named and computed here (EvalResult.figures, Unit) and nowhere else:
reports and loggers copy them.

Perplexity is exp(total NLL / total predicted tokens) over the whole text, never an average of
per-batch perplexities. By default the text is read as one stream with the state carried from
its first token to its last, exactly as it would be generated, so the figure does not depend on
any batch size. `streams > 1` is the classic faster approximation (the text cut into parallel
streams, each starting from a zero state); results from it are labelled approximate.

Bits per byte (lmtrain/evaluation/bpb.py) divides the total NLL by the UTF-8 bytes of the text, so word,
character and byte models of the same text can be compared. Stream mode predicts every token
but the first, and the figure still divides by all the bytes (the usual convention; the first
token's share is negligible in any text worth evaluating).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmtrain.data.batching import StreamBatches
from lmtrain.data.corpus import text_utf8_bytes
from lmtrain.data.tokenizers import tokenizer_class
from lmtrain.evaluation.bpb import bits_per_byte
from lmtrain.evaluation.reading import evaluating, logit_window
from lmtrain.models import LanguageModel, detach_state, select_rows

# Ids converted to int64 at once by unigram_baseline: a prepared split is never copied whole.
_COUNT_CHUNK = 1 << 22


Progress = Callable[[int, int], None]
"""`progress(done, total)`: tokens predicted so far and in all, in one pass over a text; called
with 0 done before the first window, then after each (lmtrain.metrics.Meter shows it)."""


class EvaluationInterrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM) while evaluating; no figure was computed."""


LN2 = math.log(2)
_FORMAT = {"ppl": ".2f"}
"""How a figure is printed where not to 4 decimals (3 on a progress line)."""


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(700) where a float would overflow; an infinite loss (a token the
    model gives no probability at all) is an infinite perplexity."""
    return math.exp(min(loss, 700.0)) if loss != math.inf else math.inf


@dataclass(frozen=True)
class Unit:
    """What one token is to the figures. `Unit.of` asks the tokenizer of a kind (its `unit` and
    `open_vocabulary`), so every report and logger takes its figures from here."""

    name: str
    """"char": a loss is also given in bits per character (bpc); "token": per token only, and
    an evaluation gives the OOV rate instead."""
    open_vocabulary: bool = False
    """Unknown words are common (word tokenizers): a report gives the OOV rate a line."""

    @classmethod
    def of(cls, kind: str) -> Unit:
        t = tokenizer_class(kind)
        return cls(t.unit, open_vocabulary=t.open_vocabulary)

    @property
    def headline(self) -> str:
        """The figure that progress lines and TensorBoard's curves chart show."""
        return "bpc" if self.name == "char" else "ppl"

    def figures(self, loss: float) -> dict[str, float]:
        """The figures of a mean loss in nats per token: ppl, and bpc for characters."""
        out = {"ppl": perplexity(loss)}
        if self.name == "char":
            out["bpc"] = loss / LN2
        return out

    def show(self, figures: dict[str, float]) -> str:
        """The headline of `figures` as a progress line gives it: "bpc 1.234"."""
        return f"{self.headline} {figures[self.headline]:{_FORMAT.get(self.headline, '.3f')}}"


@dataclass(frozen=True)
class EvalResult:
    nll: float
    """Total negative log-likelihood in nats."""
    tokens: int
    """Predicted tokens (the first token of a stream has no prediction)."""
    kind: str
    """Tokeniser kind (char, word, byte, bpe); `unit` is what the figures read of it."""
    oov: int = 0
    """Tokens of the text that were not in the vocabulary."""
    streams: int = 1
    """1 = exact; more = the parallel-stream approximation."""
    text_tokens: int | None = None
    """Tokens of the evaluated text, line ends included: what oov_rate is a share of. None: one
    stream's count (tokens + 1), which a caller without the text may rely on."""
    text_bytes: int | None = None
    """UTF-8 bytes of the evaluated text, for bits per byte; None when not known."""

    @property
    def unit(self) -> Unit:
        return Unit.of(self.kind)

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)

    @property
    def bpc(self) -> float:
        return self.loss / LN2

    @property
    def bpb(self) -> float | None:
        """Bits per byte of the text, whatever the tokeniser; None when its bytes are unknown."""
        if not self.text_bytes:
            return None
        return bits_per_byte(self.nll, self.text_bytes)

    def figures(self) -> dict[str, float]:
        """Every figure by name, in the order reports give them: loss, ppl, bpc (characters),
        bpb (when the text's bytes are known). Loggers and reports take these, never compute."""
        out = {"loss": self.loss, **self.unit.figures(self.loss)}
        if self.bpb is not None:
            out["bpb"] = self.bpb
        return out

    def with_text(self, text: str) -> EvalResult:
        """This result with the UTF-8 bytes of `text`, the text it scored, for bits per byte."""
        return dataclasses.replace(self, text_bytes=text_utf8_bytes(text))

    def to_dict(self) -> dict[str, object]:
        figures = self.figures()
        d: dict[str, object] = {"loss": figures.pop("loss"), "ppl": figures.pop("ppl")}
        d["tokens"] = self.tokens
        if self.unit.name == "token":
            # A share of the text's tokens, not of the predicted ones (whose count depends on
            # the mode and the streams): the same text has the same rate in every mode.
            of = self.text_tokens if self.text_tokens is not None else self.tokens + 1
            d["oov_rate"] = self.oov / max(of, 1)
        d.update(figures)  # bpc, bpb
        d.update(approximate=self.streams > 1, streams=self.streams, nll=self.nll)
        return d

    def summary(self) -> str:
        s = " | ".join(f"{k} {v:{_FORMAT.get(k, '.4f')}}" for k, v in self.figures().items())
        s += f" | {self.tokens:,} tokens"
        if self.streams > 1:
            s += f" | APPROXIMATE ({self.streams} parallel streams)"
        return s


def stream_nll(
    model: LanguageModel,
    ids: torch.Tensor,
    streams: int = 1,
    window: int | None = None,
    stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> tuple[float, int]:
    """(total NLL, predicted tokens) of `ids` read as `streams` parallel streams.

    `stop` is polled before each window; when it returns True, EvaluationInterrupted is raised.
    `progress` hears the predicted tokens done after each window.
    """
    device = next(model.parameters()).device
    if window is None:
        window = logit_window(model.vocab_size, streams)
    batches = StreamBatches(ids, streams, window)
    total = torch.zeros((), dtype=torch.float64, device=device)
    todo, done = batches.tokens_per_epoch, 0
    if progress is not None:
        progress(0, todo)
    with evaluating(model):
        state = model.init_state(streams, device)
        for batch in batches.batches():
            if stop is not None and stop():
                raise EvaluationInterrupted
            if batch.carry is not None:
                state = select_rows(state, batch.carry)
            hidden, state = model(batch.inputs.to(device), state)
            state = detach_state(state)
            h = hidden.reshape(-1, hidden.size(-1))
            total += model.output.nll(h, batch.targets.reshape(-1).to(device)).double()
            if progress is not None:
                done += batch.num_tokens
                progress(done, todo)
    return float(total), todo


def unigram_baseline(
    train: torch.Tensor,
    ids: torch.Tensor,
    vocab_size: int,
    kind: str,
    targets: torch.Tensor | None = None,
    text_bytes: int | None = None,
) -> EvalResult:
    """The figure of a model that ignores context: training-split token frequencies (add-one
    smoothed) scored on the tokens the model's evaluation predicts. A trained model should beat
    it by a wide margin. `targets`: those tokens; by default ids[1:], as the stream evaluation
    predicts every token after the first (sentences mode passes its own). `text_bytes`: UTF-8
    bytes of the text, for its bits per byte."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for i in range(0, train.numel(), _COUNT_CHUNK):  # int64 a chunk at a time (uint ids too)
        counts += torch.bincount(train[i : i + _COUNT_CHUNK].long(), minlength=vocab_size)
    smoothed = counts.double() + 1.0
    smoothed[0] = 0.0  # <pad> is never predicted
    logp = (smoothed / smoothed.sum()).log()
    if targets is None:
        targets = ids[1:]
    nll = 0.0
    for i in range(0, targets.numel(), _COUNT_CHUNK):
        nll += float(-logp[targets[i : i + _COUNT_CHUNK].long()].sum())
    return EvalResult(nll=nll, tokens=targets.numel(), kind=kind, text_bytes=text_bytes)


def evaluate_ids(
    model: LanguageModel,
    ids: torch.Tensor,
    kind: str,
    oov: int = 0,
    streams: int = 1,
    stop: Callable[[], bool] | None = None,
    text_bytes: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Stream-mode figure of `ids`; `text_bytes`: UTF-8 bytes of their text (for bpb)."""
    nll, tokens = stream_nll(model, ids, streams, stop=stop, progress=progress)
    return EvalResult(
        nll=nll,
        tokens=tokens,
        kind=kind,
        oov=oov,
        streams=streams,
        text_tokens=ids.numel(),
        text_bytes=text_bytes,
    )
