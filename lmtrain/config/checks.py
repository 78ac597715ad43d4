"""Range and cross-field checks of a built Config; each problem is one `dotted.key: message` line.

The data and model sections check themselves, beside their fields (DataConfig.problems in
lmtrain/data/config.py, ModelConfig.problems in lmtrain/models/config.py); here are the train and
run keys, the rules that join sections, and the bounds beyond which a value would fail inside
torch instead of here (exit 2, before any work).
"""

from __future__ import annotations

import math
import re
from typing import Any

from lmtrain.config.schema import Config, RunConfig
from lmtrain.records import MAX_INT, show_value

# Bounds beyond which a value cannot run, or cannot mean what it says.
MAX_SEED = MAX_INT  # torch.Generator.manual_seed takes 0 .. 2**63 - 1 on every device
MAX_THREADS = 1024
MAX_DIST_TIMEOUT = 7 * 24 * 3600
MAX_SAMPLE_TOKENS = 100_000
# torch applies the learning rate, weight decay and clipping value in the weights' dtype; beyond
# float32's range that is a RuntimeError in the first step.
FLOAT32_MAX = 3.4028234663852886e38


def check_ranges(cfg: Config) -> list[str]:
    """Every out-of-range value and cross-field conflict of `cfg`, as `dotted.key: message`:
    each section's own (DataConfig.problems, ModelConfig.problems), then the training and run
    keys and the rules that join sections."""
    return (
        cfg.data.problems()
        + cfg.model.problems()
        + _train_problems(cfg)
        + _run_problems(cfg.run)
        + _text_problems(cfg.to_dict())
    )


def _train_problems(cfg: Config) -> list[str]:
    """The train section, and its rules that read data.valid and data.mode."""
    p: list[str] = []
    t = cfg.train

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            p.append(f"{key}: {msg}")

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
    if t.variable_bptt and cfg.data.mode == "sentences":
        p.append(
            "train.variable_bptt: stream mode only; sentences mode already cuts each sequence "
            "into bptt chunks (set data.mode: stream or train.variable_bptt: false)"
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
    return p


def _run_problems(r: RunConfig) -> list[str]:
    """The run section."""
    # Here, not at the top: the metrics package's __init__ loads the loggers, which
    # `lmtrain --help` and `lmtrain config` need not.
    from lmtrain.metrics.config import logger_problems

    p: list[str] = []

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            p.append(f"{key}: {msg}")

    p += logger_problems(r.loggers)  # the names of metrics' own table
    need(bool(r.dir.strip()), "run.dir", "must not be empty")
    need("\0" not in r.dir, "run.dir", "must not contain a NUL character")
    need(
        0 <= r.sample_tokens <= MAX_SAMPLE_TOKENS,
        "run.sample_tokens",
        f"must be in [0, {MAX_SAMPLE_TOKENS:,}], got {r.sample_tokens}",
    )
    need(r.keep_last >= 0, "run.keep_last", f"must be >= 0, got {r.keep_last}")
    return p


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
