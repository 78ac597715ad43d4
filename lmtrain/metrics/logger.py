"""The logger the training loop talks to: the console (a progress bar or plain lines), the run
files (lmtrain/metrics/files.py), TensorBoard and the optional loggers (backends.py).

The logger computes no figure: an evaluation's come from its result (`figures()`), a training
loss's from the evaluation's `Unit` (lmtrain.evaluation), so a new figure reaches every
destination without a change here.

A little long (about 300 lines) because RunLogger is one class, the only object the loop logs
through: every destination of a figure is decided here, in one place.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from lmtrain.metrics.backends import (
    SINKS,
    TB_DIR,
    TensorBoardWriter,
    TrackerHome,
    check_loggers,
    flat,
    start_error,
)
from lmtrain.metrics.console import Meter
from lmtrain.metrics.files import (
    RESULTS_VERSION,
    MetricsError,
    MetricsFile,
    config_sha256,
    write_results,
)


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


class Unit(Protocol):
    """How a training loss becomes figures (lmtrain.evaluation.Unit); `headline` is the one
    progress lines and TensorBoard's curves chart show."""

    headline: str

    def figures(self, loss: float) -> dict[str, float]: ...
    def show(self, figures: dict[str, float]) -> str: ...


class Evaluated(Protocol):
    """What the logger reads of an evaluation (lmtrain.evaluation.EvalResult)."""

    tokens: int

    def figures(self) -> dict[str, float]: ...
    def summary(self) -> str: ...


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
    writes metrics.jsonl and results.json. `trackers`: what the run directory keeps for the
    optional loggers (None without one: nothing is claimed, kept or continued).

    A logger that fails to start raises MetricsError (one paragraph) after every output already
    opened is closed and every tracker already started is finished.
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
        unit: Unit,
        write_files: bool = False,
        config_yaml: str = "",
        loggers: Sequence[str] = (),
        trackers: TrackerHome | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.echo = echo
        self.quiet = quiet
        self.unit = unit
        self.total_steps = total_steps
        self.initial_step = initial_step
        self.config_yaml = config_yaml
        self.started = time.perf_counter()
        self.step = initial_step
        self.tokens = 0
        modules = check_loggers(loggers)
        self.metrics: MetricsFile | None = None
        self.evals: list[dict[str, Any]] = []
        self.writer: TensorBoardWriter | None = None
        self.sinks: list[Any] = []
        try:
            if write_files:
                self.metrics = MetricsFile(self.run_dir, purge_step - 1 if purge_step else None)
                self.evals = [r for r in self.metrics.kept if r["type"] == "eval"]
            if tensorboard:
                self.writer = TensorBoardWriter(self.run_dir, purge_step, unit.headline)
            for name, module in zip(loggers, modules, strict=True):
                self._start(name, module, _yaml_dict(config_yaml), trackers)
        except BaseException:
            self._close_outputs(failed=True)  # nothing is left half-started
            raise
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
        # An evaluation has its own progress: a second bar, or lines (a log otherwise sits
        # silent through it), or nothing under `quiet`.
        self.meter = Meter(self.message, bar=not self.bar.disable, lines=not quiet)
        self.message(f"run directory: {self.run_dir}")
        if self.writer is not None:
            self.message(f"TensorBoard: tensorboard --logdir {self.run_dir / TB_DIR}")

    def _start(
        self, name: str, module: Any, config: dict[str, Any], trackers: TrackerHome | None
    ) -> None:
        """Start optional logger `name` (continuing its tracking run when one is kept) and keep
        its run id."""
        cls = SINKS[name]
        folder = getattr(cls, "folder", None)
        if trackers is not None and folder is not None:
            trackers.claim(folder)  # the name first: a crash never leaves an unlisted folder
        resume_id = None if trackers is None else trackers.run_ids.get(name)
        try:
            if resume_id is None:
                sink = cls(module, self.run_dir, config)
            else:
                sink = cls(module, self.run_dir, config, resume_id=resume_id)
        except Exception as e:  # the tracker's own error, whatever its type
            raise start_error(name, getattr(cls, "fix", "its settings"), e, resume_id) from None
        self.sinks.append(sink)
        run_id = getattr(sink, "run_id", None)
        if trackers is not None and run_id and run_id != resume_id:
            trackers.keep(name, str(run_id))

    # -- values -------------------------------------------------------------------------------

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.scalar(tag, v, step)
        for sink in list(self.sinks):
            try:
                sink.log(step, values)
            except Exception as e:  # a remote logger's trouble must not stop training
                self.sinks.remove(sink)
                self.message(f"warning: {sink.name} logging failed ({e}); turned off")

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.text(tag, text, step)

    def train_point(self, point: TrainPoint) -> None:
        figures = self.unit.figures(point.loss)
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
        shown = self.unit.show(figures)
        if not self.bar.disable:
            self.bar.set_postfix_str(
                f"loss {point.loss:.3f}, {shown}, {point.tokens_per_sec:,.0f} tok/s"
            )
            return
        done = point.step - self.initial_step
        elapsed = time.perf_counter() - self.started
        eta = (self.total_steps - point.step) * elapsed / max(done, 1)
        if self.quiet:
            return
        self.message(
            f"step {point.step}/{self.total_steps} | epoch {point.epoch + 1} | "
            f"loss {point.loss:.4f} | {shown} | lr {point.lr:.3g} | "
            f"{point.tokens_per_sec:,.0f} tokens/s | elapsed {_clock(elapsed)} | "
            f"ETA {_clock(eta)}"
        )

    def advance(self, n: int = 1, tokens: int | None = None) -> None:
        """`n` more steps done; `tokens`: training tokens consumed so far."""
        self.step += n
        self.bar.update(n)
        if tokens is not None:
            self.tokens = tokens

    def evaluation_progress(self) -> Callable[[int, int], None]:
        """The progress callback of a validation now (lmtrain.evaluation's Progress)."""
        label = "validation" if self.meter.bar else f"step {self.step} | validation"
        return self.meter.track(label)

    def evaluation(
        self, step: int, epoch: int, train_seconds: float, result: Evaluated, best: bool
    ) -> None:
        figures = result.figures()  # loss first
        self.scalars(step, {f"val/{k}": v for k, v in figures.items()})
        record = {
            "type": "eval",
            "step": step,
            "epoch": epoch + 1,
            "split": "valid",
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
        """What results.json holds (the table of its fields is in docs/watching.md)."""
        import torch

        from lmtrain import __version__

        def figures(record: dict[str, Any] | None) -> dict[str, Any] | None:
            if record is None:
                return None
            keys = ("step", "loss", "ppl", "bpc", "bpb")  # what the eval line held
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
            self.writer.hparams(results, hyperparameters(_yaml_dict(self.config_yaml)))
        for sink in self.sinks:
            try:
                sink.finish(results)
            except Exception as e:  # the run is done; a logger's trouble is only reported
                self.message(f"warning: {sink.name} summary failed ({e})")
        self.sinks = []

    def close(self, failed: bool = False) -> None:
        """Flush and close everything; `failed`: an error is on its way out, so a second one
        met while closing is dropped rather than hiding the first."""
        self.bar.close()
        self._close_outputs(failed)

    def _close_outputs(self, failed: bool) -> None:
        """Finish the optional loggers (as failed: a finished run has given its results to
        `finish` already), then close the metrics file and TensorBoard."""
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
                writer.close()
        except MetricsError:
            if not failed:
                raise


NOT_HYPERPARAMETERS = (
    "data.train", "data.valid", "data.test", "data.tokenizer_file", "data.cache_dir",
    "data.decode_errors", "model.pretrained_embeddings", "model.pretrained_format",
    "train.device", "train.precision", "train.dist_timeout", "train.log_every",
    "train.max_nonfinite_steps", "train.num_threads", "run.",
)  # fmt: skip
"""Config keys (a trailing "." names a whole section) that say where files are and how the
machine runs, not what was trained: TensorBoard's HParams table leaves them out, so that its
columns compare runs by what makes them differ."""


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The HParams table of a run: its config's hyperparameters by dotted key, each value as the
    table shows it well: numbers as they are, booleans as "true"/"false" (the plugin would
    show 1.0000 / 0.0000), None as "null", lists as JSON."""

    def readable(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return json.dumps(value)
        if isinstance(value, (int, float, str)):
            return value
        return json.dumps(value)

    return {
        key: readable(value)
        for key, value in flat(config).items()
        if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_HYPERPARAMETERS)
    }


def _yaml_dict(text: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text) if text else {}
    return data if isinstance(data, dict) else {}
