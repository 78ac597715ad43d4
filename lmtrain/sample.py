"""Text generation: temperature, top-k, top-p (nucleus) or greedy decoding.

The prompt primes the state in one forward pass; after that every new token costs one step of
the recurrent network. All samples of a call run as one batch.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmtrain.config import SampleOptions
from lmtrain.data.tokenizers import Tokenizer
from lmtrain.errors import LmtrainError
from lmtrain.evaluation.reading import evaluating
from lmtrain.models import LanguageModel


def draw_seed() -> int:
    """A fresh seed short enough to retype: --seed N regenerates the same text."""
    return secrets.randbelow(2**31)


@dataclass
class SampleResult:
    texts: list[str]
    seed: int
    """The seed the texts were drawn with (the one given, or a fresh one)."""
    warnings: list[str] = field(default_factory=list)


def prompt_ids(vocab: Tokenizer, prompt: str) -> tuple[list[int], list[str]]:
    """Ids that prime the model, and warnings about prompt tokens not in the vocabulary."""
    tokens = vocab.tokenize(prompt)
    if not tokens:
        # An empty prompt starts the way a new line starts in the training text.
        start = vocab.eos_id
        if start is None:
            raise LmtrainError(
                "the prompt is empty and this model's vocabulary has no line break to start "
                "from; give a --prompt"
            )
        return [start], []
    ids = [vocab.stoi.get(t, vocab.unk_id) for t in tokens]
    unknown = sorted({t for t, i in zip(tokens, ids, strict=True) if i == vocab.unk_id})
    warnings = []
    if unknown:
        if len(unknown) == len(set(tokens)):
            raise LmtrainError(
                f"every token of the prompt is unknown to this model's vocabulary "
                f"({', '.join(map(repr, unknown[:10]))}); the model cannot condition on it. "
                "Use words or characters from the training text."
            )
        warnings.append(
            f"{len(unknown)} prompt token(s) not in the vocabulary, read as <unk>: "
            + ", ".join(map(repr, unknown[:10]))
        )
    return ids, warnings


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. (B, V) -> (B, V)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already cover top_p; the best one stays.
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def generate(
    model: LanguageModel,
    vocab: Tokenizer,
    prompt: str,
    opts: SampleOptions,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SampleResult:
    """`opts.max_tokens` new tokens per sample, read in eval mode (the model's mode is restored
    after). `stop` is polled before every token: when it turns true the texts end where they
    are. `progress` hears the count after every token."""
    device = next(model.parameters()).device
    ids, warnings = prompt_ids(vocab, prompt)
    seed = opts.seed if opts.seed is not None else draw_seed()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    b = opts.num_samples
    with evaluating(model):
        inputs = torch.tensor(ids, device=device).unsqueeze(1).expand(-1, b)  # (P, B)
        hidden, state = model(inputs, model.init_state(b, device))
        last = hidden[-1]  # (B, H)
        out = torch.empty(opts.max_tokens, b, dtype=torch.long, device=device)
        for t in range(opts.max_tokens):
            if stop is not None and stop():
                out = out[:t]
                break
            logits = model.output.log_probs(last)  # (B, V)
            logits[:, vocab.pad_id] = float("-inf")  # padding is never a real next token
            if opts.greedy:
                _check_finite(logits, t)
                nxt = logits.argmax(-1)
            else:
                # Shift the best log-probability to 0 and divide in float64, where every
                # positive temperature is non-zero: a tiny one then sends every other token to
                # -inf (greedy) instead of all of them to -inf or NaN, which multinomial refuses.
                logits = (logits - logits.max(-1, keepdim=True).values).double()
                probs = filter_logits(logits / opts.temperature, opts.top_k, opts.top_p).softmax(-1)
                # Checked here, a host sync per token: multinomial's own check of its input is,
                # on CUDA, an asynchronous device assert that leaves the device unusable.
                _check_finite(probs, t)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            out[t] = nxt
            hidden, state = model(nxt.unsqueeze(0), state)
            last = hidden[-1]
            if progress is not None:
                progress(t + 1)
    # The tokenizer says how its pieces join (words by a space; characters, bytes and BPE
    # pieces carry their own spacing); an empty prompt needs no separator.
    sep = vocab.joiner if prompt.strip() else ""
    texts = [prompt + sep + vocab.decode(out[:, i]) for i in range(b)]
    return SampleResult(texts, seed, warnings)


def _check_finite(values: torch.Tensor, t: int) -> None:
    """Refuse to draw from NaN or +inf log-probabilities or probabilities (-inf is a token
    ruled out): the weights are damaged or diverged, and multinomial would fail obscurely."""
    if bool((values.isnan() | values.isposinf()).any()):
        raise LmtrainError(
            f"cannot sample: the model's next-token probabilities are NaN or infinite (at "
            f"generated token {t + 1}), so its weights are damaged or training diverged. "
            "Sample from an earlier checkpoint of the run (RUN/checkpoints/step-*.pt), or "
            "train again with a lower train.lr."
        )
