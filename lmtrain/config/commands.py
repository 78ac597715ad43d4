"""The options of the commands that read a model, a config or runs: eval, score, sample, diagnose, plot.

They are given on the command line (`lmtrain eval RUN --batch-size 8`), not in a config file,
but they are a schema like the config's: frozen dataclasses whose defaults are written only here,
with a one-line docstring under each field that `lmtrain config` prints. The CLI reads its
defaults from these classes; `build_options` (lmtrain.config) builds one from a mapping with the
config's strict checks. `problems()` lists every out-of-range value at once, each message naming
its command-line option; every integer option has an upper bound too (`_count`), since Typer
hands over any Python int and torch fails on one beyond 64 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol

from lmtrain.errors import LmtrainError
from lmtrain.evaluation.config import FIGURES
from lmtrain.records import MAX_INT, OneOf, show_value
from lmtrain.training.config import FLOAT32_MAX, MAX_SEED, MAX_THREADS

# Bounds on what one sample call may generate: the ids are held in one (max_tokens, num_samples)
# tensor and every text is decoded in memory, so a typo such as --max-tokens 2000000000 is
# refused up front instead of failing on an allocation.
MAX_TOKENS = 1_000_000
MAX_SAMPLES = 10_000
MAX_TOTAL_TOKENS = 10_000_000
# Sequences evaluated or scored together: their logits are held at once, so a million is far past
# any memory; more is a typo.
MAX_BATCH = 1_000_000


def _count(option: str, value: int, least: int, note: str = "", most: int = MAX_INT) -> list[str]:
    """The problem of an integer option below `least` or above `most` (by default the largest
    64-bit integer, which torch's sizes and counters hold), or that is no integer (the Python
    API passes what it is given), or none."""
    if isinstance(value, bool) or not isinstance(value, int):
        return [f"{option} must be an integer, got {show_value(value)}"]
    if value < least:
        return [f"{option} must be >= {least}{note}, got {show_value(value)}"]
    if value > most:
        top = "2**63 - 1" if most == MAX_INT else f"{most:,}"
        return [f"{option} must be at most {top}, got {show_value(value)}"]
    return []


class _Checked(Protocol):
    def problems(self) -> list[str]: ...


def require_valid(*options: _Checked) -> None:
    """Raise one LmtrainError listing the problems of all `options` (as the commands print
    them, joined by "; "); return quietly when there are none."""
    if problems := [p for o in options for p in o.problems()]:
        raise LmtrainError("; ".join(problems))


@dataclass(frozen=True)
class DeviceOptions:
    """Where `lmtrain eval`, `score` and `sample` run the model, on how many threads (diagnose too)."""

    device: str = "cpu"
    """cpu, cuda, cuda:N or auto."""
    threads: int | None = None
    """CPU threads for torch's kernels, as fit's train.num_threads; null = torch's own choice."""

    def problems(self) -> list[str]:
        """The problem of --threads, in train.num_threads' bounds and words, or none."""
        n = self.threads
        if isinstance(n, int) and not isinstance(n, bool) and n > MAX_THREADS:
            return [
                f"--threads must be at most {MAX_THREADS} (torch would try to start that many "
                f"threads), got {n}"
            ]
        return [] if n is None else _count("--threads", n, 1)


@dataclass(frozen=True)
class EvalOptions:
    """How `lmtrain eval` / `lmtrain score` read a text; never changes a figure except `streams`."""

    batch_size: int = 1
    """Sequences evaluated together (sentences mode, score)."""
    streams: int = 1
    """Stream mode: parallel streams, each from a zero state (1 = exact)."""

    def problems(self) -> list[str]:
        return _count("--batch-size", self.batch_size, 1, most=MAX_BATCH) + _count(
            "--streams", self.streams, 1, " (1 = exact)"
        )

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


@dataclass(frozen=True)
class ScoreOptions:
    """How `lmtrain score` reads its sentences; never changes a figure."""

    batch_size: int = 32
    """Sentences scored together."""

    def problems(self) -> list[str]:
        return EvalOptions(batch_size=self.batch_size).problems()


@dataclass(frozen=True)
class AdaptOptions:
    """`lmtrain eval`: evaluation-time adaptation (dynamic evaluation, continuous cache pointer)."""

    dynamic_lr: float = 0.0
    """Dynamic evaluation step size (0 = off)."""
    dynamic_bptt: int = 35
    """Tokens per segment: each is scored, then used for one step."""
    dynamic_method: Literal["sgd", "rms"] = "sgd"
    """sgd, or rms (gradient / sqrt(running mean of its square))."""
    dynamic_decay: float = 0.0
    """Pull towards the trained weights each step: w += decay * (w_trained - w)."""
    cache_size: int = 0
    """Cached (hidden state, next token) pairs (0 = no cache)."""
    cache_theta: float = 0.662
    """Sharpness of the cache distribution (Grave et al.'s theta; AWD-LSTM's WikiText-2 value)."""
    cache_lambda: float = 0.1279
    """Weight of the cache in the mixture (AWD-LSTM's WikiText-2 value)."""

    @property
    def dynamic(self) -> bool:
        return self.dynamic_lr > 0

    @property
    def cache(self) -> bool:
        return self.cache_size > 0

    def problems(self) -> list[str]:
        """Every out-of-range option, each message naming its command-line option."""
        p = []
        if not (math.isfinite(self.dynamic_lr) and self.dynamic_lr >= 0):
            p.append(f"--dynamic-lr must be >= 0 and finite (0 = off), got {self.dynamic_lr}")
        elif self.dynamic_lr > FLOAT32_MAX:  # torch applies it in the weights' float32
            p.append(f"--dynamic-lr must be at most {FLOAT32_MAX:.4g}, got {self.dynamic_lr}")
        p += _count("--dynamic-bptt", self.dynamic_bptt, 1)
        if self.dynamic_method not in ("sgd", "rms"):
            p.append(f"--dynamic-method must be sgd or rms, got {self.dynamic_method!r}")
        if not 0 <= self.dynamic_decay < 1:  # also refuses nan
            p.append(f"--dynamic-decay must be in [0, 1), got {self.dynamic_decay}")
        p += _count("--cache-size", self.cache_size, 0, " (0 = off)")
        if not 0 <= self.cache_lambda < 1:
            # lambda = 1 would give every token the cache has not seen probability 0.
            p.append(f"--cache-lambda must be in [0, 1), got {self.cache_lambda}")
        if not (math.isfinite(self.cache_theta) and self.cache_theta >= 0):
            p.append(f"--cache-theta must be >= 0 and finite, got {self.cache_theta}")
        return p

    def describe(self) -> str:
        parts = []
        if self.dynamic:
            parts.append(
                f"dynamic eval ({self.dynamic_method}, lr {self.dynamic_lr:g}, segments of "
                f"{self.dynamic_bptt}, decay {self.dynamic_decay:g})"
            )
        if self.cache:
            parts.append(
                f"cache ({self.cache_size} states, theta {self.cache_theta:g}, "
                f"lambda {self.cache_lambda:g})"
            )
        return " + ".join(parts) or "none"


@dataclass(frozen=True)
class SampleOptions:
    """Decoding of `lmtrain sample` (and of the samples logged during training)."""

    max_tokens: int = 200
    """Tokens to generate."""
    temperature: float = 1.0
    """Softmax temperature (> 0)."""
    top_k: int = 0
    """Sample among the K likeliest tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    greedy: bool = False
    """Always take the likeliest token."""
    num_samples: int = 1
    """Independent samples."""
    seed: int | None = None
    """Same seed, same text; null = a fresh seed, printed so that it can be repeated."""

    def problems(self) -> list[str]:
        """Every out-of-range option, each message naming its command-line option."""
        p = []
        if not 0 <= self.max_tokens <= MAX_TOKENS:
            p.append(f"--max-tokens must be in [0, {MAX_TOKENS:,}], got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            p.append(f"--temperature must be > 0 and finite, got {self.temperature}")
        p += _count("--top-k", self.top_k, 0, " (0 = off)")
        if not 0 < self.top_p <= 1:  # also refuses nan
            p.append(f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 1 <= self.num_samples <= MAX_SAMPLES:
            p.append(f"--num-samples must be in [1, {MAX_SAMPLES:,}], got {self.num_samples}")
        elif 0 <= self.max_tokens <= MAX_TOKENS:
            total = self.max_tokens * self.num_samples
            if total > MAX_TOTAL_TOKENS:
                p.append(
                    f"--max-tokens {self.max_tokens} x --num-samples {self.num_samples} is "
                    f"{total:,} tokens, more than the {MAX_TOTAL_TOKENS:,} one call generates; "
                    "ask for fewer"
                )
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            p.append(f"--seed must be in [0, 2**63 - 1], got {self.seed}")
        return p


@dataclass(frozen=True)
class GradientFlowOptions:
    """`lmtrain diagnose gradient-flow`: the window measured and where the figure goes."""

    cell: list[str] = field(default_factory=list)
    """Config only: one curve per cell (repeatable), fresh weights each."""
    out: str = "gradient_flow.png"
    """PNG to write."""
    steps: int = 50
    """Window length T."""
    batch: int = 8
    """Rows averaged."""
    tensorboard: str | None = None
    """TensorBoard directory; default OUT's name + '-tb'."""

    def problems(self) -> list[str]:
        if self.steps < 2 or self.batch < 1:
            return ["--steps must be >= 2 and --batch >= 1"]
        return _count("--steps", self.steps, 2) + _count("--batch", self.batch, 1)


@dataclass(frozen=True)
class PlotOptions:
    """`lmtrain plot`: which validation figure against what, and where the figure goes."""

    out: str = "curves.png"
    """Figure to write: .png, or .pdf / .svg for a vector figure."""
    metric: Annotated[str, OneOf(FIGURES)] = "ppl"
    """loss, ppl, bpc (character models) or bpb (bits per byte: any tokeniser)."""
    x: Literal["step", "minutes", "tokens"] = "step"
    """step, minutes (of training) or tokens (trained on)."""


COMMAND_OPTIONS: dict[str, type] = {
    "eval": EvalOptions,
    "adapt": AdaptOptions,
    "score": ScoreOptions,
    "sample": SampleOptions,
    "device": DeviceOptions,
    "gradient_flow": GradientFlowOptions,
    "plot": PlotOptions,
}
"""The option classes by section name, in the order `lmtrain config` lists them."""
