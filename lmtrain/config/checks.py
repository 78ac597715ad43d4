"""Range and cross-field checks of a built Config; each problem is one `dotted.key: message` line.

The data, model and train sections check themselves, beside their fields (DataConfig.problems
in lmtrain/data/config.py, ModelConfig.problems in lmtrain/models/config.py, TrainConfig.problems
in lmtrain/training/config.py, which reads the data section's validation split and mode); here
are the run keys and the text of every value.
"""

from __future__ import annotations

from typing import Any

from lmtrain.config.schema import Config, RunConfig

MAX_SAMPLE_TOKENS = 100_000


def check_ranges(cfg: Config) -> list[str]:
    """Every out-of-range value and cross-field conflict of `cfg`, as `dotted.key: message`:
    each section's own (DataConfig.problems, ModelConfig.problems, TrainConfig.problems), then
    the run keys and the text of every value."""
    return (
        cfg.data.problems()
        + cfg.model.problems()
        + cfg.train.problems(cfg.data)
        + _run_problems(cfg.run)
        + _text_problems(cfg.to_dict())
    )


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
