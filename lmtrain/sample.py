"""Text generation: temperature, top-k, top-p (nucleus) or greedy decoding.

The prompt primes the state in one forward pass; after that every new token costs one step of
the recurrent network. All samples of a call run as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmtrain.data.vocab import Vocab
from lmtrain.errors import LmtrainError
from lmtrain.models import LanguageModel


@dataclass(frozen=True)
class SampleOptions:
    max_tokens: int = 200
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    num_samples: int = 1
    seed: int | None = None

    def problems(self) -> list[str]:
        p = []
        if self.max_tokens < 0:
            p.append(f"--max-tokens must be >= 0, got {self.max_tokens}")
        if not self.temperature > 0:
            p.append(f"--temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            p.append(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            p.append(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            p.append(f"--num-samples must be >= 1, got {self.num_samples}")
        return p


@dataclass
class SampleResult:
    texts: list[str]
    warnings: list[str] = field(default_factory=list)


def prompt_ids(vocab: Vocab, prompt: str) -> tuple[list[int], list[str]]:
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


@torch.no_grad()
def generate(model: LanguageModel, vocab: Vocab, prompt: str, opts: SampleOptions) -> SampleResult:
    model.eval()
    device = next(model.parameters()).device
    ids, warnings = prompt_ids(vocab, prompt)
    gen = torch.Generator(device=device)
    gen.manual_seed(opts.seed if opts.seed is not None else torch.seed() % (2**63))
    b = opts.num_samples
    inputs = torch.tensor(ids, device=device).unsqueeze(1).expand(-1, b)  # (P, B)
    hidden, state = model(inputs, model.init_state(b, device))
    last = hidden[-1]  # (B, H)
    out = torch.empty(opts.max_tokens, b, dtype=torch.long, device=device)
    for t in range(opts.max_tokens):
        logits = model.output.log_probs(last)  # (B, V)
        logits[:, vocab.pad_id] = float("-inf")  # padding is never a real next token
        if opts.greedy:
            nxt = logits.argmax(-1)
        else:
            logits = filter_logits(logits / opts.temperature, opts.top_k, opts.top_p)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1)
        out[t] = nxt
        hidden, state = model(nxt.unsqueeze(0), state)
        last = hidden[-1]
    sep = "" if vocab.kind == "char" or not prompt.strip() else " "
    texts = [prompt + sep + vocab.decode(out[:, i]) for i in range(b)]
    return SampleResult(texts, warnings)
