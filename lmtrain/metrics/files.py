"""The two run files this package owns: RUN/metrics.jsonl and RUN/results.json. Nothing else
writes or reads them.

RUN/metrics.jsonl holds one JSON object per line, "type" first:

    {"type": "train", "step", "epoch", "loss", "ppl", "lr", "grad_norm", "grad_norm_max",
     "tokens_per_sec", "tokens", "train_seconds"}            (+ "bpc" for character models)
    {"type": "eval", "step", "epoch", "split": "valid", "loss", "ppl", "tokens", "best",
     "train_seconds", "train_tokens"}          (+ "bpc" for character models, "bpb" when known)

"ppl", "bpc" and "bpb" are the figures the evaluation gives (Unit, EvalResult.figures): this
file names none of them, and reads any such key as a figure, a finite number or null.

A train line sums the `train.log_every` steps up to `step`: loss is their token-weighted mean
NLL (nats), grad_norm the last step's norm before clipping and grad_norm_max the largest in the
window, tokens the training tokens consumed since the start of the run, tokens_per_sec the
window's tokens over the window's training seconds. An eval line's "tokens" counts the tokens it
scored; "train_tokens" the training tokens consumed by then. "epoch" is 1-based, as printed.
Figures that are not finite are written as null. Every line is flushed as it is written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lmtrain import files
from lmtrain.errors import LmtrainError
from lmtrain.records import Count, FileDialect, RecordError, build_record, joined

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
RESULTS_VERSION = 1
_RESULTS_MAX_BYTES = 1 << 20
"""results.json holds a few dozen figures: a larger file is not one lmtrain wrote."""

Warn = Callable[[str], None]


class MetricsError(LmtrainError):
    """A metrics file that cannot be read or written (not ours, damaged, or the disk is full)."""


def write_error(path: Path, e: OSError) -> MetricsError:
    """The error a failed write of a run file stops training with."""
    reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
    return MetricsError(
        f"cannot write {path}: {reason}. Training stopped; the checkpoints already saved are "
        "intact. Free some space (or choose another run.dir), then continue with "
        "`lmtrain fit CONFIG --resume auto`."
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of RUN/metrics.jsonl in order (MetricsError if missing or not lmtrain's)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        with files.open_regular(path) as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise MetricsError(
            f"{path} not found; give a run directory that `lmtrain fit` wrote"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise MetricsError(f"{path} cannot be read ({reason})") from None
    return _parse(path, text)


@dataclass
class _Record:
    """One line of metrics.jsonl as the module docstring lists it. Every other key is a figure
    (ppl, bpc, bpb: whatever the evaluation's Unit and EvalResult.figures give, listed there
    only). Figures that were not finite are null."""

    type: Literal["train", "eval"]
    step: Count
    epoch: Count | None = None
    split: str | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    grad_norm_max: float | None = None
    tokens_per_sec: float | None = None
    tokens: Count | None = None
    best: bool | None = None
    train_seconds: float | None = None
    train_tokens: Count | None = None
    figures: dict[str, float | None] = field(default_factory=dict)


_FIELDS = frozenset(f.name for f in fields(_Record)) - {"figures"}
_DIALECT = FileDialect(mapping="an object", finite_floats=True, item="{name}")


def _parse(path: Path, text: str) -> list[dict[str, Any]]:
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except (ValueError, RecursionError):
            if number == len(lines):
                break  # a last line without its newline: a write cut short by a crash
            raise MetricsError(
                f"{path}, line {number}: not JSON; this file was not written by lmtrain or "
                "was edited"
            ) from None
        given = raw
        if isinstance(raw, dict):  # the keys no field names are the line's figures
            given = {k: v for k, v in raw.items() if k in _FIELDS}
            given["figures"] = {k: v for k, v in raw.items() if k not in _FIELDS}
        try:
            record = build_record(_Record, given, "", dialect=_DIALECT)
        except RecordError as e:
            raise MetricsError(
                f"{path}, line {number}: not an lmtrain metrics record ({joined(e.problems, 3)}); "
                "this file was not written by lmtrain or was edited"
            ) from None
        # Converted ("1.5" is 1.5), in the line's order.
        records.append({k: getattr(record, k) if k in _FIELDS else record.figures[k] for k in raw})
    return records


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such figures are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class MetricsFile:
    """RUN/metrics.jsonl, append-only: each record is written and flushed at once, so a crash
    keeps every line logged before it. On resume a torn last line (a crash mid-write) is cut
    off, and the lines past the checkpoint's step are dropped (as TensorBoard's purge_step
    does), so every step appears once and nothing is appended onto half a line."""

    def __init__(self, run_dir: Path, resume_step: int | None, warn: Warn = _stderr) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.kept: list[dict[str, Any]] = []
        """Records of earlier sessions still valid after a resume."""
        if resume_step is None:
            if self.path.exists():
                raise MetricsError(
                    f"{self.path} already exists but this is a new run; nothing was changed. "
                    "Continue that run with --resume auto, or choose a new run.dir."
                )
        elif self.path.exists():
            records = read_metrics(self.path.parent)  # refuses a file that is not ours
            try:
                dropped = files.repair_tail(self.path)
            except OSError as e:
                raise write_error(self.path, e) from None
            if dropped:
                warn(
                    f"warning: {self.path} ended in a torn line ({dropped} bytes, a write cut "
                    "short by a crash or a full disk); removed it, every complete record is kept"
                )
            self.kept = [r for r in records if r["step"] <= resume_step]
            if len(self.kept) < len(records):
                self._rewrite(self.kept)
        try:
            self.file, _ = files.open_append(self.path)
        except OSError as e:
            raise write_error(self.path, e) from None

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        try:
            files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))
        except OSError as e:
            raise write_error(self.path, e) from None

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _finite(v) for k, v in record.items()})
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except OSError as e:
            raise write_error(self.path, e) from None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError as e:
            raise write_error(self.path, e) from None


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    """RUN/results.json, replaced atomically (files.write_json)."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        files.write_json(path, _clean(results))
    except OSError as e:
        raise write_error(path, e) from None
    return path


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    try:
        raw, more = files.read_bounded(path, _RESULTS_MAX_BYTES)
        data = None if more else json.loads(raw)
    except FileNotFoundError:
        raise MetricsError(f"{path} not found; the run has not finished a session yet") from None
    except (OSError, ValueError, RecursionError) as e:
        raise MetricsError(f"{path} cannot be read ({e})") from None
    if not isinstance(data, dict) or data.get("version") != RESULTS_VERSION:
        raise MetricsError(f"{path}: not an lmtrain results file (version {RESULTS_VERSION})")
    return data


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return _finite(value)


def config_sha256(config_yaml: str) -> str:
    """The hash of the resolved config as written to RUN/config.yaml."""
    return hashlib.sha256(config_yaml.encode("utf-8")).hexdigest()
