"""Range and cross-field checks of a built Config; each problem is one `dotted.key: message` line.

The module is longer than most because every rule of the config's values is here, in one list
a reader scans for a key: ranges, conflicts between keys, and the bounds beyond which a value
would fail inside torch or the tokenizers library instead of here (exit 2, before any work).
"""

from __future__ import annotations

import math
import re
from typing import Any

from lmtrain.config.schema import AdaptiveSoftmaxConfig, Config, DataConfig, ModelConfig
from lmtrain.records import MAX_INT, show_value

# Bounds beyond which a value cannot run, or cannot mean what it says.
MAX_SEED = MAX_INT
MAX_THREADS = 1024
MAX_DIST_TIMEOUT = 7 * 24 * 3600
MAX_SAMPLE_TOKENS = 100_000
# torch applies the learning rate, weight decay and clipping value in the weights' dtype; beyond
# float32's range that is a RuntimeError in the first step.
FLOAT32_MAX = 3.4028234663852886e38


def check_ranges(cfg: Config) -> list[str]:
    """Every out-of-range value and cross-field conflict of `cfg`, as `dotted.key: message`."""
    p: list[str] = []
    d, m, t, r = cfg.data, cfg.model, cfg.train, cfg.run

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            p.append(f"{key}: {msg}")

    need(d.min_freq >= 1, "data.min_freq", f"must be >= 1, got {d.min_freq}")
    need(d.max_size is None or d.max_size >= 1, "data.max_size", f"must be >= 1, got {d.max_size}")
    need(bool(d.train.strip()), "data.train", "must name a file or builtin corpus, got ''")
    need(d.max_length is None or d.max_length >= 1, "data.max_length", "must be >= 1 or null")
    need(
        d.max_length is None or d.max_length < MAX_INT,
        "data.max_length",
        "must be below 2**63 - 1 (a sequence adds its start marker) or null",
    )
    if d.tokenizer == "byte":  # a fixed vocabulary: nothing to drop
        need(d.min_freq == 1, "data.min_freq", "the byte vocabulary is fixed (256 bytes); leave 1")
        need(
            d.max_size is None,
            "data.max_size",
            "the byte vocabulary is fixed (256 bytes); leave null",
        )
    p += _check_tokenizer(d)
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
    if a.cutoffs or a.auto:
        ok = all(c is not None and c >= 1 for c in a.cutoffs) and all(
            x < y for x, y in zip(a.cutoffs, a.cutoffs[1:], strict=False)
        )
        need(ok, "model.adaptive_softmax.cutoffs", f"must be increasing ids >= 1, got {a.cutoffs}")
        if a.div_value < 1:
            p.append(
                "model.adaptive_softmax.div_value: must be >= 1 (each tail cluster is this many "
                f"times narrower), got {a.div_value}"
            )
        elif tail_widths(m.hidden_size, a) is None:
            p.append(
                f"model.adaptive_softmax.div_value: {a.div_value} ** "
                f"{len(a.cutoffs) or AUTO_MAX_CLUSTERS} (one power per tail cluster) overflows; "
                "use a smaller div_value"
            )
        if m.tie_weights:
            p.append(
                "model.tie_weights: cannot tie the embedding to an adaptive softmax; set "
                "tie_weights: false or model.adaptive_softmax.cutoffs: []"
                + (" and auto: false" if a.auto else "")
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
    for name in ("lr", "weight_decay", "clip_grad_value"):
        v = getattr(t, name)
        need(
            v is None or v <= FLOAT32_MAX,
            f"train.{name}",
            f"must be at most {FLOAT32_MAX:.4g} (the largest float32, the weights' type), got {v}",
        )
    need(t.eval_every is None or t.eval_every >= 1, "train.eval_every", "must be >= 1 or null")
    need(
        t.early_stopping is None or t.early_stopping >= 1,
        "train.early_stopping",
        f"must be >= 1 or null, got {t.early_stopping}",
    )
    if t.early_stopping is not None and cfg.data.valid is None:
        p.append("train.early_stopping: counts evaluations on validation data; set data.valid")
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
        f"must be in [0, 2**63 - 1] (the range torch's generators take), got {show_value(t.seed)}",
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
        ("data.tokenizer_file", d.tokenizer_file),
    ):
        need(path is None or "\0" not in path, key, "must not contain a NUL character")
    need(
        0 <= r.sample_tokens <= MAX_SAMPLE_TOKENS,
        "run.sample_tokens",
        f"must be in [0, {MAX_SAMPLE_TOKENS:,}], got {r.sample_tokens}",
    )
    need(r.keep_last >= 0, "run.keep_last", f"must be >= 0, got {r.keep_last}")
    return p + _text_problems(cfg.to_dict())


def _text_problems(value: Any, key: str = "") -> list[str]:
    """Every string of `cfg.to_dict()` must be Unicode text that UTF-8 can write.

    A byte that is not UTF-8 in a shell argument (`run.dir=$'\\xff'`) or an environment variable
    reaches Python as a lone surrogate, which config.yaml, TensorBoard and the checkpoint cannot
    store; it is refused here, not as a traceback halfway through a run.
    """
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _text_problems(v, f"{key}{k}.")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _text_problems(v, f"{key[:-1]}[{i}].")]
    try:
        str(value).encode("utf-8")
        return []
    except UnicodeEncodeError as e:
        code = ord(str(value)[e.start])  # U+DC80..U+DCFF: Python's spelling of byte 0x80..0xFF
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        return [
            f"{key[:-1]}: holds {what} (character {e.start + 1}), which is not UTF-8 text; "
            "lmtrain stores config values as UTF-8 (config.yaml, TensorBoard, checkpoints): "
            "use a UTF-8 name or text"
        ]


# A byte-level BPE vocabulary holds the specials (<pad>, <unk>, <eos>) and the 256 byte symbols
# before its first merge; a smaller one could not spell every text.
MIN_BPE_VOCAB = 260
# The tokenizers trainer reserves its tables for data.vocab_size entries before it reads a line
# (about 66 bytes each: 2**32 entries abort in Rust asking for 283 GB), and ids are stored as
# uint32. 2**24 reserves about 1 GB and is 64 times the largest released vocabulary (262,144).
MAX_BPE_VOCAB = 2**24


def _check_tokenizer(d: DataConfig) -> list[str]:
    """data.vocab_size and data.tokenizer_file: only with bpe, which needs one of them."""
    p: list[str] = []
    if d.tokenizer != "bpe":
        for key, value in (("vocab_size", d.vocab_size), ("tokenizer_file", d.tokenizer_file)):
            if value is not None:
                p.append(f"data.{key}: only applies to data.tokenizer: bpe; leave it null")
        return p
    if d.vocab_size is None and d.tokenizer_file is None:
        p.append(
            "data.tokenizer: bpe needs data.vocab_size (to train one on the training split) "
            "or data.tokenizer_file (a tokenizer.json)"
        )
    if d.vocab_size is not None and d.tokenizer_file is not None:
        p.append(
            "data.vocab_size: data.tokenizer_file brings its own vocabulary; set one of "
            "vocab_size and tokenizer_file"
        )
    if d.vocab_size is not None and d.vocab_size < MIN_BPE_VOCAB:
        p.append(
            f"data.vocab_size: must be >= {MIN_BPE_VOCAB} (3 specials and 256 byte symbols come "
            f"before the first merge), got {d.vocab_size}"
        )
    elif d.vocab_size is not None and d.vocab_size > MAX_BPE_VOCAB:
        p.append(
            f"data.vocab_size: must be in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB:,}] (the BPE trainer "
            f"reserves memory for every entry up front), got {d.vocab_size:,}"
        )
    if d.tokenizer_file is not None and not d.tokenizer_file.strip():
        p.append("data.tokenizer_file: must name a tokenizer.json file, got ''")
    if d.max_size is not None:
        p.append("data.max_size: bpe sets its size with data.vocab_size; leave max_size null")
    return p


# model.adaptive_softmax.auto: the most tail clusters a vocabulary within the config's integer
# range gets (2,000 x 5 ** k < 2 ** 63), for the div_value overflow check.
AUTO_MAX_CLUSTERS = 23


def tail_widths(hidden_size: int, a: AdaptiveSoftmaxConfig) -> list[int] | None:
    """Projection width of each adaptive-softmax tail cluster, as torch computes it; None if
    a power of div_value overflows (torch would fail building the layer) or div_value is below
    1. With `auto` and no explicit cutoffs, as many clusters as the largest vocabulary would get."""
    clusters = len(a.cutoffs) or (AUTO_MAX_CLUSTERS if a.auto else 0)
    if not a.div_value >= 1:
        return None
    try:
        return [int(hidden_size // a.div_value ** (i + 1)) for i in range(clusters)]
    except OverflowError:
        return None


def _check_recurrent_options(m: ModelConfig) -> list[str]:
    """The recurrent toolbox (lmtrain/models/cells.py): ranges and which cells take what."""
    p: list[str] = []
    for name in ("recurrent_dropout", "locked_dropout", "embedding_dropout"):
        v = getattr(m, name)
        if not 0.0 <= v < 1.0:
            p.append(f"model.{name}: must be in [0, 1), got {v}")
    if not 0.0 < m.init_gain <= 1.0:
        p.append(f"model.init_gain: must be in (0, 1], got {m.init_gain}")
    elif m.init_gain != 1.0 and m.init == "default":
        p.append("model.init_gain: scales init identity or orthogonal; set model.init too")
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
