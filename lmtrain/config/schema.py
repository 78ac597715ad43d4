"""The config schema: frozen dataclasses that are at once the YAML format, the defaults and the help.

A config is a YAML file with four sections (`data`, `model`, `train`, `run`). Each field carries a
one-line docstring directly under it, which `field_docs()` reads back from the source, so that
`lmtrain config` prints the docs of the code itself. Defaults are written only here; loading and
checking live in lmtrain/config/load.py and checks.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

Cell = Literal["rnn_tanh", "rnn_relu", "lstm", "gru", "rnn_manual"]
Init = Literal["default", "orthogonal", "identity"]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop", "ntasgd"]
Schedule = Literal["constant", "plateau", "cosine"]
ScheduleSpan = Literal["auto", "steps"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]


@dataclass(frozen=True)
class DataConfig:
    train: str = "builtin:python-docs"
    """Training text: a UTF-8 file path, or `builtin:python-docs` (ships with Python, no download)."""
    valid: str | None = "builtin:python-docs"
    """Validation text (file or builtin); null disables validation."""
    test: str | None = "builtin:python-docs"
    """Test text used by `lmtrain eval` when no --data is given; null for none."""
    tokenizer: Literal["char", "word", "byte", "bpe"] = "char"
    """`char`: every Unicode character is a token. `word`: whitespace split, `<eos>` at line ends. `byte`: every UTF-8 byte. `bpe`: byte-level BPE subwords."""
    vocab_size: int | None = None
    """bpe: vocabulary size to train on the training split, specials included (at least 260); null with tokenizer_file."""
    tokenizer_file: str | None = None
    """bpe: a tokenizer.json read from disk (never downloaded) instead of training one; `~` and `${VAR}` expand."""
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
    cache_dir: str | None = "auto"
    """Prepared token files (tokenised once, mapped by later runs): `auto` = $LMTRAIN_CACHE_DIR, else $XDG_CACHE_HOME/lmtrain, else ~/.cache/lmtrain; null = off."""


@dataclass(frozen=True)
class AdaptiveSoftmaxConfig:
    cutoffs: list[int] = field(default_factory=list)
    """Adaptive softmax cluster boundaries by vocabulary id, increasing; [] = full softmax."""
    div_value: float = 4.0
    """Each tail cluster's projection is this many times narrower than the previous one."""
    auto: bool = False
    """Choose the cutoffs from the vocabulary size when `cutoffs` is [] (a 2,000-word head; none under 4,000 words)."""

    def cutoffs_for(self, vocab_size: int) -> list[int]:
        """The cutoffs a vocabulary of `vocab_size` entries gets: the explicit list without the
        ids it does not hold, else (with `auto`) the rule below, else [] (full softmax).

        The rule follows Grave et al. 2017's published settings: a head of 2,000 words (their
        Penn Treebank and text8 runs, and this project's WikiText-2 recipe), each further
        cluster 5 times the one before, kept while it starts in the first half of the
        vocabulary. That gives [2000] for 10,000 words, [2000, 10000] for 33,278 or 44,000, and
        no clusters under 4,000 words, where the full softmax is cheap.
        """
        if self.cutoffs:
            return [c for c in self.cutoffs if c < vocab_size]
        if not self.auto:
            return []
        chosen: list[int] = []
        cutoff = AUTO_HEAD
        while cutoff <= vocab_size // 2:
            chosen.append(cutoff)
            cutoff *= AUTO_GROWTH
        return chosen


AUTO_HEAD = 2000
"""model.adaptive_softmax.auto: words in the head (the most frequent ones)."""
AUTO_GROWTH = 5
"""model.adaptive_softmax.auto: each cluster is this many times the size of the one before."""


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
    """Adaptive softmax (Grave et al. 2017): `cutoffs` ids ([] = full softmax; ids past the vocabulary are dropped) or `auto: true` to choose them from the vocabulary size."""
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
    init_gain: float = 1.0
    """Scale of the identity or orthogonal recurrent init, in (0, 1]; an IRNN on a stream trains at 0.5 (1 never forgets, so its carried state grows)."""
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
    schedule_span: ScheduleSpan = "auto"
    """Cosine decay over `auto`: the planned steps or train.max_minutes, whichever ends first (the rate follows the clock); `steps`: the steps only (same seed, same losses)."""
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
    """fp32, mixed bf16 or fp16 (autocast; fp16 adds loss scaling), or auto: bf16 where native."""
    dist_timeout: int = 600
    """Under torchrun: seconds a process waits for the others before stopping with an error."""
    eval_every: int | None = None
    """Evaluate (and checkpoint) every N steps; null = at the end of each epoch."""
    early_stopping: int | None = None
    """Stop after this many evaluations in a row without a new best validation loss; null = off."""
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
