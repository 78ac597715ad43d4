"""Where numbers go: the console, RUN/metrics.jsonl, RUN/results.json, TensorBoard, and the
optional Weights & Biases / MLflow loggers. This module is the only one that writes or reads the
two run files.

RUN/metrics.jsonl holds one JSON object per line, "type" first:

    {"type": "train", "step", "epoch", "loss", "ppl", "lr", "grad_norm", "grad_norm_max",
     "tokens_per_sec", "tokens", "train_seconds"}            (+ "bpc" for character models)
    {"type": "eval", "step", "epoch", "split": "valid", "loss", "ppl", "tokens", "best",
     "train_seconds", "train_tokens"}                        (+ "bpc" for character models)

A train line sums the `train.log_every` steps up to `step`: loss is their token-weighted mean
NLL (nats), grad_norm the last step's norm before clipping and grad_norm_max the largest in the
window, tokens the training tokens consumed since the start of the run, tokens_per_sec the
window's tokens over the window's training seconds. An eval line's "tokens" counts the tokens it
scored; "train_tokens" the training tokens consumed by then. "epoch" is 1-based, as printed.
Figures that are not finite are written as null. Every line is flushed as it is written.

TensorBoard groups tags by the text before the first "/" and orders groups and the tags within
them by name (natural order). The groups are therefore `train` and `val` (loss, ppl, and bpc for
character models), which open first, then `watch` (lr, grad_norm, grad_norm_max,
tokens_per_sec); `train/nonfinite_steps` appears when a step was skipped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from lmtrain import files
from lmtrain.errors import LmtrainError
from lmtrain.evaluation.stream import EvalResult

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
RESULTS_VERSION = 1
TB_DIR = "tb"
LOGGERS = {"wandb": "wandb", "mlflow": "mlflow"}
"""Optional loggers by config name, with the pip package each needs."""


class MetricsError(LmtrainError):
    """A metrics file that cannot be read or written (not ours, damaged, or the disk is full)."""


def _write_error(path: Path, e: OSError) -> MetricsError:
    reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
    return MetricsError(
        f"cannot write {path}: {reason}. Training stopped; the checkpoints already saved are "
        "intact. Free some space (or choose another run.dir), then continue with "
        "`lmtrain fit CONFIG --resume auto`."
    )


def console(echo: Callable[[str], None], stream: TextIO | None = None) -> Callable[[str], None]:
    """`echo` that outlives its reader: once the pipe it writes to is closed (`| head`, a `tee`
    or ssh session that died), lines are dropped and training goes on to its checkpoints and
    results.json instead of dying at its next log line. `stream`, the file `echo` writes to, is
    then pointed at the null device, so that the interpreter's last flush does not fail either.
    """
    closed = False

    def write(line: str) -> None:
        nonlocal closed
        if closed:
            return
        try:
            echo(line)
        except BrokenPipeError:
            closed = True
            if stream is not None:
                silence(stream)

    return write


def silence(stream: TextIO) -> None:
    """Point `stream`'s file descriptor at the null device (its reader has gone)."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of RUN/metrics.jsonl in order (MetricsError if missing or not lmtrain's)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetricsError(
            f"{path} not found; give a run directory that `lmtrain fit` wrote"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise MetricsError(f"{path} cannot be read ({reason})") from None
    return _parse(path, text)


def _parse(path: Path, text: str) -> list[dict[str, Any]]:
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break  # a last line without its newline: a write cut short by a crash
            raise MetricsError(
                f"{path}, line {number}: not JSON; this file was not written by lmtrain or "
                "was edited"
            ) from None
        if (
            not isinstance(record, dict)
            or record.get("type") not in ("train", "eval")
            or not isinstance(record.get("step"), int)
        ):
            raise MetricsError(
                f'{path}, line {number}: not an lmtrain metrics record (needs "type": '
                '"train" or "eval" and an integer "step")'
            )
        records.append(record)
    return records


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such figures are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _open_append(path: Path) -> TextIO:
    # One place that opens the file for appending, so a test can hand in a full device.
    return path.open("a", encoding="utf-8")


class MetricsFile:
    """RUN/metrics.jsonl, append-only: each record is written and flushed at once, so a crash
    keeps every line logged before it. On resume the lines past the checkpoint's step are
    dropped first (as TensorBoard's purge_step does), so every step appears once."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
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
            self.kept = [r for r in records if r["step"] <= resume_step]
            if len(self.kept) < len(records):
                self._rewrite(self.kept)
        try:
            self.file = _open_append(self.path)
        except OSError as e:
            raise _write_error(self.path, e) from None

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        _replace_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _finite(v) for k, v in record.items()})
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except OSError as e:
            raise _write_error(self.path, e) from None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError as e:
            raise _write_error(self.path, e) from None


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    """RUN/results.json, replaced atomically (temporary file, fsync, rename)."""
    path = Path(run_dir) / RESULTS_FILE
    _replace_text(path, json.dumps(_clean(results), indent=2) + "\n")
    return path


def _replace_text(path: Path, text: str) -> None:
    try:
        files.replace_text(path, text)
    except OSError as e:
        raise _write_error(path, e) from None


def read_results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetricsError(f"{path} not found; the run has not finished a session yet") from None
    except (OSError, ValueError) as e:
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


# ---------------------------------------------------------------------------------------------
# Optional loggers

_FINISHED = ("completed", "time_limit")
"""results.json statuses of a run that ended as planned."""


class _Wandb:
    name = "wandb"

    def __init__(self, module: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.module = module
        self.run = module.init(name=Path(run_dir).resolve().name, config=config)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.module.log(values, step=step)

    def finish(self, results: dict[str, Any]) -> None:
        self.run.summary.update(_flat(results))
        self.module.finish(exit_code=0 if results["status"] in _FINISHED else 1)


class _Mlflow:
    name = "mlflow"

    def __init__(self, module: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.module = module
        module.start_run(run_name=Path(run_dir).resolve().name)
        module.log_params({k: str(v) for k, v in _flat(config).items()})

    def log(self, step: int, values: dict[str, float]) -> None:
        self.module.log_metrics(values, step=step)

    def finish(self, results: dict[str, Any]) -> None:
        final = {
            k: v for k, v in _flat(results).items() if isinstance(v, float) and math.isfinite(v)
        }
        self.module.log_metrics(final)
        if results["status"] in _FINISHED:
            self.module.end_run(status="FINISHED")
        else:
            self.module.end_run(status="KILLED" if results["status"] == "stopped" else "FAILED")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_loggers(names: Sequence[str]) -> list[Any]:
    """The modules of the optional loggers asked for; MetricsError (before any training) naming
    the pip package of each that is not installed."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise MetricsError(
            f"run.loggers: unknown logger(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(LOGGERS)}"
        )
    modules, missing = [], []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        packages = " ".join(LOGGERS[n] for n in missing)
        raise MetricsError(
            f"run.loggers asks for {', '.join(missing)}, which is not installed; nothing was "
            f"trained. Install it (pip install {packages}) or remove it from run.loggers."
        )
    return modules


# ---------------------------------------------------------------------------------------------
# The logger the training loop talks to


@dataclass(frozen=True)
class TrainPoint:
    """One logged training window (see the module docstring for each field)."""

    step: int
    epoch: int
    """0-based, as Progress counts."""
    loss: float
    lr: float
    grad_norm: float
    grad_norm_max: float
    tokens_per_sec: float
    tokens: int
    train_seconds: float


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class RunLogger:
    """Console, metrics files, TensorBoard and optional loggers, fed by the training loop.

    Progress is a tqdm bar on stderr when stderr is a terminal, otherwise a plain line to `echo`
    every logged window; `quiet` drops both. Every other line (`message`: the run directory,
    evaluations, warnings) goes to `echo` in any case. `write_files` (rank 0 of a real run)
    writes metrics.jsonl and results.json.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        total_steps: int,
        initial_step: int,
        quiet: bool,
        echo: Callable[[str], None],
        purge_step: int | None = None,
        *,
        kind: str = "word",
        write_files: bool = False,
        config_yaml: str = "",
        loggers: Sequence[str] = (),
    ) -> None:
        self.run_dir = Path(run_dir)
        self.echo = echo
        self.quiet = quiet
        self.kind = kind
        self.total_steps = total_steps
        self.initial_step = initial_step
        self.config_yaml = config_yaml
        self.started = time.perf_counter()
        self.tokens = 0
        sinks_modules = check_loggers(loggers)
        self.metrics: MetricsFile | None = None
        self.evals: list[dict[str, Any]] = []
        if write_files:
            self.metrics = MetricsFile(self.run_dir, purge_step - 1 if purge_step else None)
            self.evals = [r for r in self.metrics.kept if r["type"] == "eval"]
        self.writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: after a resume, events a crashed run wrote past the checkpoint are
            # hidden, so every step appears exactly once.
            tb = self.run_dir / TB_DIR
            self.writer = self._tb(lambda: SummaryWriter(str(tb), purge_step=purge_step))
            self._tb(lambda: self.writer.add_custom_scalars(self._layout()))
        self.sinks: list[Any] = []
        for name, module in zip(loggers, sinks_modules, strict=True):
            sink = _Wandb if name == "wandb" else _Mlflow
            self.sinks.append(sink(module, self.run_dir, _yaml_dict(config_yaml)))
        # The bar goes to stderr, so it is drawn whenever stderr is a terminal.
        self.bar = tqdm(
            total=total_steps,
            initial=initial_step,
            disable=quiet or not sys.stderr.isatty(),
            unit="step",
            dynamic_ncols=True,
            leave=False,
            file=sys.stderr,
        )
        self.message(f"run directory: {self.run_dir}")
        if self.writer is not None:
            self.message(f"TensorBoard: tensorboard --logdir {self.run_dir / TB_DIR}")

    def _layout(self) -> dict[str, Any]:
        """The custom-scalars tab: training and validation curves on one chart each."""
        figure = "bpc" if self.kind == "char" else "ppl"
        return {
            "lmtrain": {
                f"{figure} (train and val)": ["Multiline", [f"train/{figure}", f"val/{figure}"]],
                "loss (train and val)": ["Multiline", ["train/loss", "val/loss"]],
            }
        }

    def _tb(self, call: Callable[[], Any]) -> Any:
        """A TensorBoard call; a full disk (raised here by the writer's thread) stops the run."""
        try:
            return call()
        except OSError as e:
            raise _write_error(self.run_dir / TB_DIR, e) from None

    # -- values -------------------------------------------------------------------------------

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, v in values.items():
                self._tb(lambda tag=tag, v=v: self.writer.add_scalar(tag, v, step))
        for sink in list(self.sinks):
            try:
                sink.log(step, values)
            except Exception as e:  # a remote logger's trouble must not stop training
                self.sinks.remove(sink)
                self.message(f"warning: {sink.name} logging failed ({e}); turned off")

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            # Indented: TensorBoard renders text as Markdown, which would eat line breaks.
            body = "    " + text.replace("\n", "\n    ")
            self._tb(lambda: self.writer.add_text(tag, body, step))

    def _figures(self, loss: float) -> dict[str, float]:
        """ppl, and bpc for character models, of a mean NLL in nats."""
        out = {"ppl": math.exp(min(loss, 700.0)) if math.isfinite(loss) else math.nan}
        if self.kind == "char":
            out["bpc"] = loss / math.log(2)
        return out

    def train_point(self, point: TrainPoint) -> None:
        figures = self._figures(point.loss)
        self.scalars(
            point.step,
            {
                "train/loss": point.loss,
                **{f"train/{k}": v for k, v in figures.items()},
                "watch/lr": point.lr,
                "watch/grad_norm": point.grad_norm,
                "watch/grad_norm_max": point.grad_norm_max,
                "watch/tokens_per_sec": point.tokens_per_sec,
            },
        )
        if self.metrics is not None:
            self.metrics.append(
                {
                    "type": "train",
                    "step": point.step,
                    "epoch": point.epoch + 1,
                    "loss": point.loss,
                    **figures,
                    "lr": point.lr,
                    "grad_norm": point.grad_norm,
                    "grad_norm_max": point.grad_norm_max,
                    "tokens_per_sec": point.tokens_per_sec,
                    "tokens": point.tokens,
                    "train_seconds": point.train_seconds,
                }
            )
        shown = (
            ("bpc", figures["bpc"], ".3f")
            if self.kind == "char"
            else ("ppl", figures["ppl"], ".2f")
        )
        if not self.bar.disable:
            self.bar.set_postfix_str(
                f"loss {point.loss:.3f}, {shown[0]} {shown[1]:{shown[2]}}, "
                f"{point.tokens_per_sec:,.0f} tok/s"
            )
            return
        done = point.step - self.initial_step
        elapsed = time.perf_counter() - self.started
        eta = (self.total_steps - point.step) * elapsed / max(done, 1)
        if self.quiet:
            return
        self.message(
            f"step {point.step}/{self.total_steps} | epoch {point.epoch + 1} | "
            f"loss {point.loss:.4f} | {shown[0]} {shown[1]:{shown[2]}} | lr {point.lr:.3g} | "
            f"{point.tokens_per_sec:,.0f} tokens/s | elapsed {_clock(elapsed)} | "
            f"ETA {_clock(eta)}"
        )

    def advance(self, n: int = 1, tokens: int | None = None) -> None:
        """`n` more steps done; `tokens`: training tokens consumed so far."""
        self.bar.update(n)
        if tokens is not None:
            self.tokens = tokens

    def evaluation(
        self, step: int, epoch: int, train_seconds: float, result: EvalResult, best: bool
    ) -> None:
        figures = self._figures(result.loss)
        if result.bpb is not None:
            figures["bpb"] = result.bpb
        self.scalars(step, {"val/loss": result.loss, **{f"val/{k}": v for k, v in figures.items()}})
        record = {
            "type": "eval",
            "step": step,
            "epoch": epoch + 1,
            "split": "valid",
            "loss": result.loss,
            **figures,
            "tokens": result.tokens,
            "best": best,
            "train_seconds": train_seconds,
            "train_tokens": self.tokens,
        }
        self.evals.append(record)
        if self.metrics is not None:
            self.metrics.append(record)
        mark = " | new best" if best else ""
        # Training minutes so far (evaluation excluded): what time-to-quality is read from.
        self.message(
            f"step {step} | epoch {epoch + 1} | {train_seconds / 60:.1f} min | "
            f"val {result.summary()}{mark}"
        )

    # -- lines --------------------------------------------------------------------------------

    def message(self, line: str) -> None:
        """A line for the person running the job (every line but the progress ones)."""
        if self.bar.disable:
            self.echo(line)
        else:
            with tqdm.external_write_mode(file=sys.stderr):  # clears the bar, then redraws it
                self.echo(line)

    # -- the end ------------------------------------------------------------------------------

    def results(
        self, status: str, step: int, tokens: int, train_seconds: float, nonfinite_steps: int
    ) -> dict[str, Any]:
        """What results.json holds (see the README's table of its fields)."""
        import torch

        from lmtrain import __version__

        def figures(record: dict[str, Any] | None) -> dict[str, Any] | None:
            if record is None:
                return None
            keys = ("step", "loss", "ppl", "bpc")
            return {k: record[k] for k in keys if k in record}

        best = min(
            (r for r in self.evals if r.get("loss") is not None),
            key=lambda r: (r["loss"], r["step"]),
            default=None,
        )
        return {
            "version": RESULTS_VERSION,
            "status": status,
            "steps": step,
            "tokens": tokens,
            "train_seconds": train_seconds,
            "tokens_per_sec": tokens / train_seconds if train_seconds > 0 else None,
            "best_val": figures(best),
            "last_val": figures(self.evals[-1] if self.evals else None),
            "nonfinite_steps": nonfinite_steps,
            "config_sha256": config_sha256(self.config_yaml),
            "lmtrain_version": __version__,
            "torch_version": torch.__version__,
        }

    def finish(self, results: dict[str, Any]) -> None:
        """Write results.json, the hparams summary and the optional loggers' summaries."""
        if self.metrics is not None:
            write_results(self.run_dir, results)
        if self.writer is not None and results["best_val"] is not None:
            self._write_hparams(results)
        for sink in self.sinks:
            try:
                sink.finish(results)
            except Exception as e:  # the run is done; a logger's trouble is only reported
                self.message(f"warning: {sink.name} summary failed ({e})")
        self.sinks = []

    def _write_hparams(self, results: dict[str, Any]) -> None:
        """The hparams plugin's summary, written into this run's own tb directory (where
        SummaryWriter.add_hparams would make a new subdirectory per call)."""
        from torch.utils.tensorboard.summary import hparams

        best = results["best_val"]
        metrics = {f"val/best_{k}": float(best[k]) for k in ("loss", "ppl", "bpc") if k in best}
        params = {
            k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in _flat(_yaml_dict(self.config_yaml)).items()
        }
        exp, ssi, sei = hparams(params, metrics)
        step = results["steps"]

        def write() -> None:
            for summary in (exp, ssi, sei):
                self.writer.file_writer.add_summary(summary, step)
            for tag, v in metrics.items():
                self.writer.add_scalar(tag, v, step)

        self._tb(write)

    def close(self, failed: bool = False) -> None:
        """Flush and close everything; `failed`: an error is on its way out, so a second one
        met while closing is dropped rather than hiding the first."""
        self.bar.close()
        for sink in self.sinks:
            with contextlib.suppress(Exception):  # the run is failing already
                sink.finish({"status": "failed"})
        self.sinks = []
        try:
            if self.metrics is not None:
                self.metrics.close()
                self.metrics = None
            if self.writer is not None:
                writer, self.writer = self.writer, None
                self._tb(writer.flush)
                self._tb(writer.close)
        except MetricsError:
            if not failed:
                raise


def _yaml_dict(text: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text) if text else {}
    return data if isinstance(data, dict) else {}
