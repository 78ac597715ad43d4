"""The config schema: frozen dataclasses that are at once the YAML format, the defaults and the help.

A config is a YAML file with four sections (`data`, `model`, `train`, `run`) plus dotted overrides
given after it on the command line (`train.lr=0.5 model.cell=gru`). Loading is strict: every
unknown key, wrong type, out-of-range value and cross-field conflict is collected, and all of them
are reported together in one `ConfigError` before any work starts.

Each field carries a one-line docstring directly under it; `field_docs()` reads those back from
this file's source so that `lmtrain config` can print them, and they cannot drift from the code.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lmtrain.errors import ConfigError
from lmtrain.files import (
    NotRegularFileError,
    UnsetVariableError,
    expand_user,
    expand_vars,
    read_bounded,
)

Cell = Literal["rnn_tanh", "rnn_relu", "lstm", "gru", "rnn_manual"]
Init = Literal["default", "orthogonal", "identity"]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop", "ntasgd"]
Schedule = Literal["constant", "plateau", "cosine"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class DataConfig:
    train: str = "builtin:python-docs"
    """Training text: a UTF-8 file path, or `builtin:python-docs` (ships with Python, no download)."""
    valid: str | None = "builtin:python-docs"
    """Validation text (file or builtin); null disables validation."""
    test: str | None = "builtin:python-docs"
    """Test text used by `lmtrain eval` when no --data is given; null for none."""
    tokenizer: Literal["char", "word", "byte"] = "char"
    """`char`: every Unicode character is a token. `word`: whitespace split, `<eos>` at line ends. `byte`: every UTF-8 byte."""
    mode: Literal["stream", "sentences"] = "stream"
    """`stream`: one token stream cut into batch_size streams; `sentences`: each line is one sequence."""
    documents: bool = False
    """Sentences mode: a sequence is a blank-line separated document instead of a line."""
    max_length: int | None = None
    """Sentences mode: cut every training sequence to this many predicted tokens; null = chunked TBPTT."""
    min_freq: int = 1
    """Word level: tokens seen fewer times than this in the training split become `<unk>`."""
    max_size: int | None = None
    """Word level: keep at most this many most frequent tokens (plus specials); null = no limit."""
    decode_errors: Literal["strict", "replace"] = "strict"
    """Invalid UTF-8 in a data file: `strict` stops with the byte offset, `replace` uses U+FFFD."""
    cache_dir: str | None = None
    """Directory of prepared token files (tokenised once, mapped by later runs); null = no cache."""


@dataclass(frozen=True)
class AdaptiveSoftmaxConfig:
    cutoffs: list[int] = field(default_factory=list)
    """Adaptive softmax cluster boundaries by vocabulary id, increasing; [] = full softmax."""
    div_value: float = 4.0
    """Each tail cluster's projection is this many times narrower than the previous one."""


@dataclass(frozen=True)
class ModelConfig:
    cell: Cell = "lstm"
    """Recurrent cell: rnn_tanh, rnn_relu, lstm, gru, or rnn_manual (tanh RNN, hand-written BPTT)."""
    embedding_dim: int = 128
    """Size of the token embedding."""
    hidden_size: int = 256
    """Size of each recurrent layer's hidden state."""
    num_layers: int = 2
    """Number of stacked recurrent layers."""
    dropout: float = 0.0
    """Dropout between recurrent layers and before the decoder (0 = off)."""
    tie_weights: bool = False
    """Share the embedding matrix with the decoder (needs embedding_dim == hidden_size)."""
    adaptive_softmax: AdaptiveSoftmaxConfig = field(default_factory=AdaptiveSoftmaxConfig)
    """Adaptive softmax output layer (Grave et al. 2017) for large word vocabularies."""
    layer_norm: bool = False
    """Layer-normalise the recurrent pre-activations before tanh/sigmoid (Ba et al. 2016)."""
    recurrent_dropout: float = 0.0
    """Dropout on the cell's candidate update, one mask per sequence (Semeniuta et al. 2016)."""
    locked_dropout: float = 0.0
    """Variational dropout on each layer's input and the last output, one mask per sequence."""
    embedding_dropout: float = 0.0
    """Drop whole words from the embedding matrix in training (Gal & Ghahramani 2016)."""
    leak: float = 0.0
    """rnn_tanh/rnn_relu: h_t = leak * h_{t-1} + (1 - leak) * update; 0 = the plain cell."""
    learn_leak: bool = False
    """Learn the leak per unit (starting from `leak`, which must then be in (0, 1))."""
    init: Init = "default"
    """Recurrent weights: default (PyTorch's), orthogonal, or identity (with rnn_relu: IRNN)."""
    residual: bool = False
    """Add each recurrent layer's input to its output where their sizes match."""
    learn_initial_state: bool = False
    """Learn h0 (and c0) as parameters, used at the start of every sequence."""
    weight_drop: float = 0.0
    """DropConnect probability on the hidden-to-hidden weights (AWD-LSTM weight drop; 0 = off)."""
    pretrained_embeddings: str | None = None
    """Word vectors file (GloVe text, word2vec text or binary) to initialise the embedding; null = none."""
    pretrained_format: Literal["auto", "glove", "word2vec_text", "word2vec_binary"] = "auto"
    """Format of model.pretrained_embeddings; auto detects it from the file's first bytes."""
    freeze_embeddings: bool = False
    """Keep the embedding matrix fixed during training (e.g. pretrained vectors)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    """Passes over the training split (training stops at whichever of epochs/max_steps comes first)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps; null = run all epochs."""
    max_minutes: float | None = None
    """Stop after this many minutes of training steps (evaluation excluded); null = no limit."""
    batch_size: int = 32
    """Streams (stream mode) or sequences (sentences mode) per step; the GLOBAL batch under torchrun."""
    bptt: int = 64
    """Truncated BPTT window: tokens per stream per step; state is carried across windows."""
    optimizer: Optimizer = "adam"
    """sgd (with momentum), adam, adamw, rmsprop, or ntasgd (SGD, then averaged SGD; AWD-LSTM)."""
    lr: float = 0.002
    """Peak learning rate."""
    momentum: float = 0.0
    """Momentum for sgd and rmsprop."""
    weight_decay: float = 0.0
    """L2 penalty (decoupled for adamw)."""
    schedule: Schedule = "constant"
    """Learning-rate schedule: constant, plateau (divide on stalled validation loss) or cosine."""
    warmup_steps: int = 0
    """Linear warm-up steps (cosine schedule)."""
    min_lr: float = 0.0
    """Floor of the learning rate for the cosine and plateau schedules."""
    plateau_factor: float = 0.25
    """Plateau schedule: multiply the learning rate by this when validation stops improving."""
    plateau_patience: int = 0
    """Plateau schedule: evaluations without improvement before the rate is cut."""
    clip_grad_norm: float | None = 1.0
    """Clip the global L2 norm of all gradients to this value; null = no norm clipping."""
    clip_grad_value: float | None = None
    """Clip every gradient element to [-value, value]; null = off."""
    seed: int = 1234
    """Seed for parameters, dropout and sampling; same seed + config on CPU = same losses."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    precision: Precision = "fp32"
    """fp32, or mixed precision: bf16 or fp16 (autocast; fp16 adds gradient scaling)."""
    dist_timeout: int = 600
    """Under torchrun: seconds a process waits for the others before stopping with an error."""
    eval_every: int | None = None
    """Evaluate (and checkpoint) every N steps; null = at the end of each epoch."""
    log_every: int = 50
    """Steps between console/TensorBoard training log points."""
    max_nonfinite_steps: int = 5
    """Stop (exit 3) after this many consecutive steps with a NaN/inf loss or gradient (each is skipped)."""
    num_threads: int | None = None
    """CPU threads for torch's matrix and row kernels; null = one per physical core."""
    ar_alpha: float = 0.0
    """Activation regularisation: alpha * mean square of the dropped last-layer output (0 = off)."""
    tar_beta: float = 0.0
    """Temporal activation regularisation: beta * mean square step of the last layer (0 = off)."""
    variable_bptt: bool = False
    """AWD-LSTM variable window: bptt (p 0.95) or bptt/2, length ~ N(base, 5), lr scaled by it."""
    nonmono: int = 5
    """ntasgd: switch to averaging when validation is worse than the best of all but the last N."""


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"
    """Run directory for the resolved config, checkpoints and events; `~` and `${VAR}` expand."""
    sample_tokens: int = 200
    """Tokens of text generated and logged at each evaluation (0 = none)."""
    sample_prompt: str = ""
    """Prompt for the sample logged at each evaluation."""
    tensorboard: bool = True
    """Write TensorBoard event files under run.dir/tb."""
    keep_last: int = 2
    """Also keep numbered checkpoints (checkpoints/step-NNNNNNNN.pt) of the N newest saves; 0 = none."""
    loggers: list[str] = field(default_factory=list)
    """Experiment trackers that also get every logged point: wandb, mlflow (packages not included)."""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """Where the text comes from and how it is tokenised and batched."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network: embedding -> stacked recurrent layers -> decoder."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, schedule, clipping, evaluation cadence, device."""
    run: RunConfig = field(default_factory=RunConfig)
    """Output directory, logging and samples."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# Range and cross-field checks. Each returns (dotted key, message) pairs.

# Bounds beyond which a value cannot run, or cannot mean what it says.
# Every integer is a 64-bit count, size or seed somewhere (torch sizes, generators, counters).
MAX_INT = 2**63 - 1
MAX_SEED = MAX_INT
MAX_THREADS = 1024
MAX_DIST_TIMEOUT = 7 * 24 * 3600
MAX_SAMPLE_TOKENS = 100_000


def _check_ranges(cfg: Config) -> list[str]:
    p: list[str] = []
    d, m, t, r = cfg.data, cfg.model, cfg.train, cfg.run

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            p.append(f"{key}: {msg}")

    need(d.min_freq >= 1, "data.min_freq", f"must be >= 1, got {d.min_freq}")
    need(d.max_size is None or d.max_size >= 1, "data.max_size", f"must be >= 1, got {d.max_size}")
    need(bool(d.train.strip()), "data.train", "must name a file or builtin corpus, got ''")
    need(d.max_length is None or d.max_length >= 1, "data.max_length", "must be >= 1 or null")
    if d.tokenizer == "byte":  # a fixed vocabulary: nothing to drop
        need(d.min_freq == 1, "data.min_freq", "the byte vocabulary is fixed (256 bytes); leave 1")
        need(
            d.max_size is None,
            "data.max_size",
            "the byte vocabulary is fixed (256 bytes); leave null",
        )
    if d.mode == "stream":
        need(not d.documents, "data.documents", "only applies to data.mode: sentences")
        need(d.max_length is None, "data.max_length", "only applies to data.mode: sentences")
    for name in ("embedding_dim", "hidden_size", "num_layers"):
        v = getattr(m, name)
        need(v >= 1, f"model.{name}", f"must be >= 1, got {v}")
    need(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    if m.tie_weights and m.embedding_dim != m.hidden_size:
        p.append(
            "model.tie_weights: tied weights need model.embedding_dim == model.hidden_size, "
            f"got {m.embedding_dim} and {m.hidden_size}; set them equal or tie_weights: false"
        )
    a = m.adaptive_softmax
    if a.cutoffs:
        ok = all(c is not None and c >= 1 for c in a.cutoffs) and all(
            x < y for x, y in zip(a.cutoffs, a.cutoffs[1:], strict=False)
        )
        need(ok, "model.adaptive_softmax.cutoffs", f"must be increasing ids >= 1, got {a.cutoffs}")
        need(
            a.div_value >= 1,
            "model.adaptive_softmax.div_value",
            f"must be >= 1 (each tail cluster is this many times narrower), got {a.div_value}",
        )
        need(
            _tail_widths(m.hidden_size, a) is not None,
            "model.adaptive_softmax.div_value",
            f"{a.div_value} ** {len(a.cutoffs)} (one power per tail cluster) overflows; "
            "use a smaller div_value",
        )
        if m.tie_weights:
            p.append(
                "model.tie_weights: cannot tie the embedding to an adaptive softmax; set "
                "tie_weights: false or model.adaptive_softmax.cutoffs: []"
            )
    p += _check_recurrent_options(m)
    need(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    need(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1 or null")
    need(t.max_minutes is None or t.max_minutes > 0, "train.max_minutes", "must be > 0 or null")
    need(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    need(t.bptt >= 1, "train.bptt", f"must be >= 1, got {t.bptt}")
    need(t.lr > 0 and math.isfinite(t.lr), "train.lr", f"must be a positive number, got {t.lr}")
    need(0.0 <= t.momentum < 1.0, "train.momentum", f"must be in [0, 1), got {t.momentum}")
    need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    need(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
    need(0 <= t.min_lr <= t.lr, "train.min_lr", f"must be in [0, train.lr], got {t.min_lr}")
    need(0 < t.plateau_factor < 1, "train.plateau_factor", "must be in (0, 1)")
    need(t.plateau_patience >= 0, "train.plateau_patience", "must be >= 0")
    for name in ("clip_grad_norm", "clip_grad_value"):
        v = getattr(t, name)
        need(v is None or v > 0, f"train.{name}", f"must be > 0 or null, got {v}")
    need(t.eval_every is None or t.eval_every >= 1, "train.eval_every", "must be >= 1 or null")
    need(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    known_loggers = ("wandb", "mlflow")
    for name in r.loggers:
        need(
            name in known_loggers,
            "run.loggers",
            f"{name!r} is not one of {', '.join(known_loggers)}",
        )
    need(len(set(r.loggers)) == len(r.loggers), "run.loggers", f"lists a logger twice: {r.loggers}")
    need(
        1 <= t.dist_timeout <= MAX_DIST_TIMEOUT,
        "train.dist_timeout",
        f"must be in [1, {MAX_DIST_TIMEOUT}] seconds, got {t.dist_timeout}",
    )
    need(
        0 <= t.seed <= MAX_SEED,
        "train.seed",
        f"must be in [0, 2**63 - 1] (the range torch's generators take), got {_show(t.seed)}",
    )
    need(t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1")
    need(
        t.num_threads is None or t.num_threads >= 1,
        "train.num_threads",
        f"must be >= 1 or null, got {t.num_threads}",
    )
    need(
        t.num_threads is None or t.num_threads <= MAX_THREADS,
        "train.num_threads",
        f"must be at most {MAX_THREADS} (torch would try to start that many threads), "
        f"got {t.num_threads}",
    )
    need(0.0 <= m.weight_drop < 1.0, "model.weight_drop", f"must be in [0, 1), got {m.weight_drop}")
    custom = [
        k
        for k, on in (
            ("cell=rnn_manual", m.cell == "rnn_manual"),
            ("layer_norm", m.layer_norm),
            ("recurrent_dropout", m.recurrent_dropout > 0),
            ("locked_dropout", m.locked_dropout > 0),
            ("leak", m.leak > 0 or m.learn_leak),
            ("residual", m.residual),
        )
        if on
    ]
    if m.weight_drop > 0 and custom:
        p.append(
            "model.weight_drop: applies to the nn.RNN/LSTM/GRU layers only, and model."
            + ", model.".join(custom)
            + " selects the hand-built stack; drop one of them"
        )
    if t.variable_bptt and cfg.data.mode == "sentences":
        p.append(
            "train.variable_bptt: stream mode only; sentences mode already cuts each sequence "
            "into bptt chunks (set data.mode: stream or train.variable_bptt: false)"
        )
    if m.freeze_embeddings and m.tie_weights:
        p.append(
            "model.freeze_embeddings: a frozen embedding tied to the decoder would freeze the "
            "decoder too; set tie_weights: false or freeze_embeddings: false"
        )
    for name in ("ar_alpha", "tar_beta"):
        v = getattr(t, name)
        need(v >= 0, f"train.{name}", f"must be >= 0, got {v}")
    need(t.nonmono >= 1, "train.nonmono", f"must be >= 1, got {t.nonmono}")
    if t.optimizer == "ntasgd" and cfg.data.valid is None:
        p.append("train.optimizer: 'ntasgd' switches on stalled validation; set data.valid")
    need(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
        "train.device",
        f"expected auto, cpu, cuda or cuda:N, got {t.device!r}",
    )
    if t.schedule == "plateau" and cfg.data.valid is None:
        p.append("train.schedule: 'plateau' needs validation data; set data.valid")
    need(bool(r.dir.strip()), "run.dir", "must not be empty")
    need(
        d.cache_dir is None or bool(d.cache_dir.strip()),
        "data.cache_dir",
        "must not be empty (null = no cache)",
    )
    for key, path in (
        ("data.train", d.train),
        ("data.valid", d.valid),
        ("data.test", d.test),
        ("model.pretrained_embeddings", m.pretrained_embeddings),
        ("run.dir", r.dir),
        ("data.cache_dir", d.cache_dir),
    ):
        need(path is None or "\0" not in path, key, "must not contain a NUL character")
    need(
        0 <= r.sample_tokens <= MAX_SAMPLE_TOKENS,
        "run.sample_tokens",
        f"must be in [0, {MAX_SAMPLE_TOKENS:,}], got {r.sample_tokens}",
    )
    need(r.keep_last >= 0, "run.keep_last", f"must be >= 0, got {r.keep_last}")
    return p


def _tail_widths(hidden_size: int, a: AdaptiveSoftmaxConfig) -> list[int] | None:
    """Projection width of each adaptive-softmax tail cluster, as torch computes it; None if
    a power of div_value overflows (torch would fail building the layer)."""
    try:
        return [int(hidden_size // a.div_value ** (i + 1)) for i in range(len(a.cutoffs))]
    except OverflowError:
        return None


def _check_recurrent_options(m: ModelConfig) -> list[str]:
    """The recurrent toolbox (lmtrain/models/cells.py): ranges and which cells take what."""
    p: list[str] = []
    for name in ("recurrent_dropout", "locked_dropout", "embedding_dropout"):
        v = getattr(m, name)
        if not 0.0 <= v < 1.0:
            p.append(f"model.{name}: must be in [0, 1), got {v}")
    if m.learn_leak and not 0.0 < m.leak < 1.0:
        p.append(f"model.leak: learn_leak needs a starting leak in (0, 1), got {m.leak}")
    elif not 0.0 <= m.leak < 1.0:
        p.append(f"model.leak: must be in [0, 1), got {m.leak}")
    if (m.leak > 0 or m.learn_leak) and m.cell not in ("rnn_tanh", "rnn_relu"):
        p.append(
            f"model.leak: leaky units are for rnn_tanh and rnn_relu, not {m.cell}; "
            "set model.leak=0 and model.learn_leak=false, or change model.cell"
        )
    if m.cell == "rnn_manual":
        for name, on in (
            ("layer_norm", m.layer_norm),
            ("recurrent_dropout", m.recurrent_dropout > 0),
        ):
            if on:
                p.append(
                    f"model.{name}: not available with rnn_manual, whose hand-written BPTT is "
                    "the plain tanh RNN; use rnn_tanh for it"
                )
    return p


# ---------------------------------------------------------------------------------------------
# Generic typed conversion of a plain dict into the dataclasses.


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if _is_dataclass_type(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


def _show(value: Any) -> str:
    """A short repr for messages: a huge or deeply nested value must not flood the terminal."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"<{type(value).__name__} too large to show>"


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Convert `value` to type `tp`, appending a message to `problems` on failure."""
    origin = typing.get_origin(tp)
    bad = object()
    result: Any = bad
    if _is_dataclass_type(tp):
        if isinstance(value, dict):
            return _build(tp, value, key, problems)
    elif origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(value, non_none[0], key, problems)
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{key}: expected {_type_name(tp)}, got {_show(value)}{hint}")
            return None
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_convert(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            result = value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        elif isinstance(value, float) and value.is_integer():
            result = int(value)
        if result is not bad and not -MAX_INT <= result <= MAX_INT:
            problems.append(f"{key}: {_show(value)} is out of range (at most 2**63 - 1)")
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                result = float(value)
            except OverflowError:  # an int beyond float range
                result = math.inf
        elif isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept what is plainly a number.
            with contextlib.suppress(ValueError):
                result = float(value)
        if result is not bad and not math.isfinite(result):
            problems.append(f"{key}: must be a finite number, got {_show(value)}")
            return None
    elif tp is str and isinstance(value, str):
        result = value
    if result is bad:
        problems.append(
            f"{key}: expected {_type_name(tp)}, got {_show(value)} ({type(value).__name__})"
        )
        return None
    return result


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            close = difflib.get_close_matches(str(k), list(hints), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            valid = ", ".join(hints)
            problems.append(f"{key}: unknown key{hint} (valid keys here: {valid})")
            continue
        before = len(problems)
        value = _convert(v, hints[k], key, problems)
        if len(problems) == before or _is_dataclass_type(hints[k]) and value is not None:
            kwargs[k] = value
        # else: the problem is recorded; keep the default so the other checks still run
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field of `cls`, read from the source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


# ---------------------------------------------------------------------------------------------
# YAML and overrides.


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a {type(key).__name__} cannot be a key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# A config holds about a hundred values. Anchors and aliases are allowed (`test: *valid`), but
# what they expand to is counted: a 1 KB "billion laughs" of nested aliases would otherwise expand
# into a structure far larger than memory when the sections are copied and converted.
MAX_YAML_VALUES = 10_000
# A config is a few KB of YAML; a file much larger than this is not one (or not the right one).
CONFIG_MAX_BYTES = 1024 * 1024


class _TooManyValues(Exception):
    """The YAML, with its aliases expanded, holds more than MAX_YAML_VALUES values."""


def _expanded_size(node: yaml.Node) -> int:
    """Values in `node` once every alias is expanded, counting up to just past the limit.

    Shared nodes (what an alias points at) are sized once, so this is linear in the document
    even when the expansion is exponential. A node inside itself expands without end.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise _TooManyValues("an alias refers to a node that contains it")
        open_nodes.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for child in children:
            total = min(total + size(child), MAX_YAML_VALUES + 1)
        open_nodes.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def _load_yaml(text: str) -> Any:
    """Parse one YAML document strictly; _TooManyValues when its aliases expand too far."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise _TooManyValues(
                f"its anchors and aliases expand to more than {MAX_YAML_VALUES:,} values "
                "(a config has about a hundred); write the values out instead of nesting aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return _load_yaml(text)
    except _TooManyValues as e:
        raise ConfigError([f"refused: {e}"], source) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}".replace("\n", " ")], source) from None
    except RecursionError:
        raise ConfigError(["YAML nested too deeply"], source) from None
    except ValueError as e:  # e.g. an integer literal past Python's digit limit
        raise ConfigError([f"not valid YAML: {e}"], source) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str], problems: list[str]) -> None:
    """Apply `a.b=value` overrides (value parsed as YAML) to the nested dict `raw` in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected KEY=VALUE such as train.lr=0.5")
            continue
        try:
            value = _load_yaml(text) if text.strip() else ""
        except _TooManyValues as e:
            problems.append(f"override {_show(item)}: refused: {e}")
            continue
        except (yaml.YAMLError, RecursionError, ValueError):
            value = text  # not YAML: take it as a plain string, the schema decides
        *parents, leaf = key.split(".")
        node = raw
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
                break
            node = child
        else:
            node[leaf] = value


def config_from_dict(
    raw: Any,
    overrides: list[str] | None = None,
    source: str = "config",
    expand_paths: bool = False,
    checks: Callable[[Config], list[str]] | None = None,
) -> Config:
    """Build and validate a Config from a plain mapping plus dotted overrides.

    `expand_paths` expands `~` and `${VAR}` in run.dir and data.cache_dir, as a config a person
    wrote needs (load_config sets it). The result keeps the expanded directories, so the config
    saved in the run works later without the variable; a saved config is already expanded and
    is rebuilt as it is. Data paths keep their `${VAR}` so that a saved config stays portable; they are
    expanded when read. `checks` adds problems found outside the schema (files, device,
    memory), so that `lmtrain validate` reports them in the same list.
    """
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"the top level must be a mapping of sections, got {type(raw).__name__}"], source
        )
    try:
        raw = _deep_copy_dicts(raw)
    except RecursionError:  # a mapping that contains itself (YAML anchors can build one)
        raise ConfigError(["nested too deeply or refers to itself"], source) from None
    for name, value in raw.items():
        if name in _hints(Config) and value is None:
            raw[name] = {}  # an empty section (`train:` with nothing under it) means defaults
    apply_overrides(raw, overrides or [], problems)
    cfg = _build(Config, raw, "", problems)
    if expand_paths:
        cfg = _expand_run_dir(cfg, problems)
    # Range checks run on the values that converted; a key already reported is not re-reported.
    reported = {p.split(":", 1)[0] for p in problems}
    problems += [p for p in _check_ranges(cfg) if p.split(":", 1)[0] not in reported]
    if checks is not None:
        reported = {p.split(":", 1)[0] for p in problems}
        problems += [p for p in checks(cfg) if p.split(":", 1)[0] not in reported]
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _expand_run_dir(cfg: Config, problems: list[str]) -> Config:
    """`cfg` with `~` and `${VAR}` expanded in run.dir and data.cache_dir (an unset variable is a
    problem) and in the data paths where their variables are set (see expand_path_if_set)."""
    try:
        expanded = expand_user(expand_vars(cfg.run.dir))
    except UnsetVariableError as e:
        problems.append(
            f"run.dir: {cfg.run.dir!r} uses ${{{e.name}}}, which is not set; "
            f"export {e.name}=... or write the directory out"
        )
        return cfg
    except ValueError as e:
        problems.append(f"run.dir: {e}")
        return cfg
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=expanded))
    d = cfg.data
    cache_dir = d.cache_dir
    if cache_dir is not None:
        try:
            cache_dir = expand_user(expand_vars(cache_dir))
        except UnsetVariableError as e:
            problems.append(
                f"data.cache_dir: {cache_dir!r} uses ${{{e.name}}}, which is not set; "
                f"export {e.name}=... or write the directory out"
            )
        except ValueError as e:
            problems.append(f"data.cache_dir: {e}")
    data = dataclasses.replace(
        d,
        train=expand_path_if_set(d.train),
        valid=_maybe(d.valid),
        test=_maybe(d.test),
        cache_dir=cache_dir,
    )
    vectors = _maybe(cfg.model.pretrained_embeddings)
    return dataclasses.replace(
        cfg, data=data, model=dataclasses.replace(cfg.model, pretrained_embeddings=vectors)
    )


def expand_path_if_set(spec: str) -> str:
    """A data path with `~` and `${VAR}` expanded when every variable is set, else unchanged.

    The run's saved config then names the files themselves, so `lmtrain eval RUN` reads
    data.test later without the variable; an unset one is left for the read to report, naming
    the file, as it did before (a config whose data.test is never read still trains).
    """
    try:
        return expand_user(expand_vars(spec))
    except (UnsetVariableError, ValueError):
        return spec


def _maybe(spec: str | None) -> str | None:
    return None if spec is None else expand_path_if_set(spec)


def _deep_copy_dicts(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy_dicts(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    checks: Callable[[Config], list[str]] | None = None,
) -> Config:
    """Read a YAML config file, apply dotted overrides and validate everything at once.

    `~` and `${VAR}` in run.dir are expanded; `checks` as in config_from_dict.
    """
    path = Path(path)
    source = str(path)
    try:
        data, more = read_bounded(path, CONFIG_MAX_BYTES)
    except FileNotFoundError:
        raise ConfigError(["file not found; check the path"], source) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory; give a YAML file"], source) from None
    except NotRegularFileError as e:
        raise ConfigError([e.advice], source) from None
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror}"], source) from None
    if more:
        raise ConfigError(
            [
                f"larger than {CONFIG_MAX_BYTES // 1024} KB; a config is a few KB of YAML "
                "(is this the right file?)"
            ],
            source,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text (byte offset {e.start})"], source) from None
    return config_from_dict(_parse_yaml(text, source), overrides, source, True, checks)


# ---------------------------------------------------------------------------------------------
# Memory estimate: refuse a model that cannot fit before anything is built.

_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "rnn_manual": 1, "gru": 3, "lstm": 4}


def _optimizer_slots(t: TrainConfig) -> int:
    """Tensors of the parameters' size the optimiser keeps."""
    if t.optimizer in ("adam", "adamw"):
        return 2  # first and second moments
    if t.optimizer == "rmsprop":
        return 1 + (t.momentum > 0)
    if t.optimizer == "ntasgd":
        return 1  # the running average, once averaging starts
    return int(t.momentum > 0)  # sgd's momentum buffer


@dataclass(frozen=True)
class MemoryEstimate:
    """A lower bound on what one training step holds in memory (fp32 weights)."""

    parameters: int
    state_bytes: int
    """Weights, gradients and optimiser state."""
    activation_bytes: int
    """Activations kept for the backward pass of one step, logits included."""

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def estimate_memory(cfg: Config, vocab_size: int, world_size: int = 1) -> MemoryEstimate:
    """Memory a training step of `cfg` needs at least, from the config alone.

    Counted: embedding, recurrent and decoder parameters with their gradients and optimiser
    slots, and per token of the step the embedding, each layer's gates and state, and the
    logits with their gradient. Workspace, caches and allocator slack are not, so a model this
    estimate refuses can never fit, while one it accepts may still be tight.
    """
    m, t = cfg.model, cfg.train
    gates = _GATES[m.cell]
    embedding = vocab_size * m.embedding_dim
    # Layer 0 reads the embedding, the others the layer below; each has two bias vectors.
    h = m.hidden_size
    recurrent = gates * h * (m.embedding_dim + h + 2) + (m.num_layers - 1) * gates * h * (2 * h + 2)
    cutoffs = m.adaptive_softmax.cutoffs
    if cutoffs:
        head = cutoffs[0] + len(cutoffs)  # the frequent words and one entry per tail cluster
        bounds = [*cutoffs, max(vocab_size, cutoffs[-1] + 1)]
        decoder = m.hidden_size * head
        widths = _tail_widths(m.hidden_size, m.adaptive_softmax) or [0] * len(cutoffs)
        for i, width in enumerate(widths):
            decoder += width * (m.hidden_size + bounds[i + 1] - bounds[i])
        logits = head
    else:
        decoder = vocab_size + (0 if m.tie_weights else m.hidden_size * vocab_size)
        logits = vocab_size
    parameters = embedding + recurrent + decoder
    slots = _optimizer_slots(t)
    trained = parameters - (embedding if m.freeze_embeddings else 0)
    state = 4 * (parameters + trained * (1 + slots))
    tokens = t.batch_size * t.bptt // max(world_size, 1)
    per_token = m.embedding_dim + m.num_layers * (gates + 1) * m.hidden_size + 2 * logits
    activations = tokens * per_token * (4 if t.precision == "fp32" else 2)
    return MemoryEstimate(parameters, state, activations)


_SIZE_KEYS = (
    ("model", "embedding_dim"),
    ("model", "hidden_size"),
    ("model", "num_layers"),
    ("train", "batch_size"),
    ("train", "bptt"),
)


def _key_to_lower(cfg: Config, vocab_size: int, world_size: int) -> str:
    """The size key whose default would shrink the estimate most: the one to name."""
    best, best_total = "data.max_size", estimate_memory(cfg, vocab_size, world_size).total_bytes
    for section, name in _SIZE_KEYS:
        part = getattr(cfg, section)
        default = getattr(type(part)(), name)
        if getattr(part, name) <= default:
            continue
        smaller = dataclasses.replace(
            cfg, **{section: dataclasses.replace(part, **{name: default})}
        )
        total = estimate_memory(smaller, vocab_size, world_size).total_bytes
        if total < best_total:
            best, best_total = f"{section}.{name}", total
    return best


def _format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _physical_memory() -> int:
    """RAM this process may use: physical memory, or a lower cgroup (container) limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit_file).read_text().strip()))
    return total


def memory_available(device: object = "cpu") -> tuple[int, str]:
    """(bytes, description) of the memory that holds the model on `device`.

    `device` is a torch.device or its spec ("cpu", "cuda:1", "auto"); a GPU's total memory
    when one is named (or "auto" finds one), otherwise this machine's RAM.
    """
    spec = str(device)
    if spec == "auto" or spec.startswith("cuda"):
        import torch  # only here: loading a config must not pay for torch

        if torch.cuda.is_available():
            index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
            if index < torch.cuda.device_count():
                props = torch.cuda.get_device_properties(index)
                return props.total_memory, f"cuda:{index} ({props.name}) has " + _format_bytes(
                    props.total_memory
                )
    ram = _physical_memory()
    return ram, f"this machine has {_format_bytes(ram)} of RAM"


def resource_problems(
    cfg: Config, vocab_size: int | None = None, device: object = None, world_size: int | None = None
) -> list[str]:
    """Problems (one line each) when `cfg` cannot train within the memory of `device`.

    Before the data is read `vocab_size` is unknown (None): the smallest vocabulary the config
    allows is assumed, so only what is certain is refused. `device` defaults to train.device;
    `world_size` to WORLD_SIZE, which torchrun sets (each process holds its share of the batch).
    """
    m = cfg.model
    if world_size is None:
        world_size = 1
        with contextlib.suppress(ValueError):
            world_size = max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    if vocab_size is None:
        vocab_size = max([2, *(c + 1 for c in m.adaptive_softmax.cutoffs)])
        vocabulary = f"the smallest vocabulary the config allows ({vocab_size:,})"
    else:
        vocabulary = f"a vocabulary of {vocab_size:,}"
    est = estimate_memory(cfg, vocab_size, world_size)
    available, where = memory_available(cfg.train.device if device is None else device)
    if est.total_bytes <= available:
        return []
    key = _key_to_lower(cfg, vocab_size, world_size)
    todo = (
        "limit the vocabulary with data.max_size or data.min_freq"
        if key == "data.max_size"
        else f"lower {key}"
    )
    return [
        f"{key}: training this model needs at least {_format_bytes(est.total_bytes)} "
        f"({est.parameters:,} parameters: {_format_bytes(est.state_bytes)} for weights, "
        f"gradients and {cfg.train.optimizer} state; {_format_bytes(est.activation_bytes)} of "
        f"activations for a step of {cfg.train.batch_size} x {cfg.train.bptt} tokens with "
        f"{vocabulary}), but {where}; {todo}"
    ]


def check_resources(
    cfg: Config, vocab_size: int | None = None, device: object = None, world_size: int | None = None
) -> None:
    """ConfigError naming the key to lower when `cfg` clearly cannot fit in memory.

    Called before anything is built (vocab_size None) and again once the vocabulary is known.
    """
    if problems := resource_problems(cfg, vocab_size, device, world_size):
        raise ConfigError(problems, "config")


def describe() -> str:
    """Every key with its default and its one-line doc, as commented YAML."""
    lines: list[str] = []
    for section in dataclasses.fields(Config):
        cls = _hints(Config)[section.name]
        lines.append(f"{section.name}:  # {field_docs(Config)[section.name]}")
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if dataclasses.is_dataclass(default):
                default = dataclasses.asdict(default)  # a nested section such as adaptive_softmax
            value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...")
            lines.append(f"  {f.name}: {value.strip()}  # {docs.get(f.name, '')}")
    return "\n".join(lines)
