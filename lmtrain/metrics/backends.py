"""Where logged values go besides the console and the run files: TensorBoard, and the optional
loggers chosen by name from SINKS (Weights & Biases, MLflow). A logger is a class with its
`name` and pip `package`, added by `register` (a new one: its class here or in a plugin's module).

A tracker (W&B, MLflow) keeps its files in the run directory (RUN/wandb, RUN/mlruns) unless the
user's environment names a place (WANDB_DIR, a tracking URI), and a resumed run continues the
tracking run it started: its id is kept in the run directory (TrackerHome). One that fails to
start stops fit before training with one paragraph (start_error), after the trackers already
started are finished.

TensorBoard groups tags by the text before the first "/" and orders groups and the tags within
them by name (natural order). The groups are therefore `best` (the best validation figures, one
point each, written at the end), `train` and `val` (loss and the figures the evaluation gives:
ppl, bpc for character models, bpb), then `watch` (lr, grad_norm, grad_norm_max,
tokens_per_sec); `train/nonfinite_steps` appears when a step was skipped. The one-point charts
have their own group so that `val` opens on its curves.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lmtrain.metrics.config import LOGGERS
from lmtrain.metrics.files import RESULTS_FILE, MetricsError, write_error

TB_DIR = "tb"


class TensorBoardWriter:
    """RUN/tb: scalars, texts and the hparams summary. A full disk (raised by the writer's
    thread) stops the run with a MetricsError."""

    def __init__(self, run_dir: Path, purge_step: int | None, headline: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run_dir / TB_DIR
        # purge_step: after a resume, events a crashed run wrote past the checkpoint are
        # hidden, so every step appears exactly once.
        self.writer = self._tb(lambda: SummaryWriter(str(self.dir), purge_step=purge_step))
        self._tb(lambda: self.writer.add_custom_scalars(_layout(headline)))

    def _tb(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except OSError as e:
            raise write_error(self.dir, e) from None

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._tb(lambda: self.writer.add_scalar(tag, value, step))

    def text(self, tag: str, text: str, step: int) -> None:
        # Indented: TensorBoard renders text as Markdown, which would eat line breaks.
        body = "    " + text.replace("\n", "\n    ")
        self._tb(lambda: self.writer.add_text(tag, body, step))

    def hparams(self, results: dict[str, Any], config: dict[str, Any]) -> None:
        """The hparams plugin's summary, written into this run's own tb directory (where
        SummaryWriter.add_hparams would make a new subdirectory per call)."""
        from torch.utils.tensorboard.summary import hparams

        best = results["best_val"]
        metrics = {f"best/{k}": float(v) for k, v in best.items() if k != "step"}
        params = {
            k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in flat(config).items()
        }
        exp, ssi, sei = hparams(params, metrics)
        step = results["steps"]

        def write() -> None:
            for summary in (exp, ssi, sei):
                self.writer.file_writer.add_summary(summary, step)
            for tag, v in metrics.items():
                self.writer.add_scalar(tag, v, step)

        self._tb(write)

    def close(self) -> None:
        self._tb(self.writer.flush)
        self._tb(self.writer.close)


def _layout(figure: str) -> dict[str, Any]:
    """The custom-scalars tab: training and validation curves on one chart each."""
    return {
        "lmtrain": {
            f"{figure} (train and val)": ["Multiline", [f"train/{figure}", f"val/{figure}"]],
            "loss (train and val)": ["Multiline", ["train/loss", "val/loss"]],
        }
    }


_FINISHED = ("completed", "time_limit")
"""results.json statuses of a run that ended as planned."""

SINKS: dict[str, Any] = {}
"""The class of each logger of LOGGERS (lmtrain/metrics/config.py), by the same name: built as
`cls(module, run_dir, config)` from the module of its package, with `log(step, values)` and
`finish(results)`. A tracker may also have a `folder` (the name under RUN it writes, recorded as
lmtrain's before it starts) and a `run_id` once started: that id is kept in the run directory,
and a resumed run builds it again with `resume_id=` that id."""

S = TypeVar("S", bound=type)


def register(cls: S) -> S:
    """Add the logger `cls` under `cls.name`: the class to SINKS and its pip package
    (`cls.package`, also the module imported) to LOGGERS, the names run.loggers takes."""
    name: str = cls.name  # type: ignore[attr-defined]
    if name in SINKS or name in LOGGERS:
        raise ValueError(f"a logger named {name!r} is already registered")
    LOGGERS[name], SINKS[name] = cls.package, cls  # type: ignore[attr-defined]
    return cls


@dataclass(frozen=True)
class TrackerHome:
    """What the run directory keeps for the trackers across sessions; the training setup builds
    it from the run directory (lmtrain.rundir, which this package does not import)."""

    run_ids: dict[str, str]
    """Tracker name -> the tracking run this session continues; empty for a new run or a fork."""
    claim: Callable[[str], Path]
    """Record a name at the top of RUN as lmtrain's before a tracker writes there."""
    keep: Callable[[str, str], None]
    """Record the id of a tracker's run (name, id) in the run directory."""


def start_error(
    name: str,
    fix: str,
    e: Exception,
    continuing: str | None = None,
    failed: str = "could not start",
) -> MetricsError:
    """The one paragraph fit stops with when tracker `name` does not start: what failed, the
    tracker's own reason (its first line), what to do. `continuing`: the id of the tracking run
    a resumed session was continuing."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    if len(reason) > 300:
        reason = reason[:297] + "..."
    which = "" if continuing is None else f" (this session continues its run {continuing})"
    return MetricsError(
        f"run.loggers: {name} {failed}{which} ({reason}); nothing was trained. Fix {fix}, or "
        f"remove {name} from run.loggers."
    )


def _artefacts(run_dir: Path) -> list[Path]:
    """What a tracker attaches at the end: the resolved config.yaml, results.json, and the
    export folder when `lmtrain export` wrote one into the run directory."""
    found = [p for p in (run_dir / "config.yaml", run_dir / RESULTS_FILE) if p.is_file()]
    export = run_dir / "export"
    return found + ([export] if export.is_dir() and not export.is_symlink() else [])


@register
class Wandb:
    name = "wandb"
    package = "wandb"
    folder = "wandb"
    fix = (
        "its settings (wandb login or WANDB_API_KEY; WANDB_MODE=offline logs without a server; "
        "WANDB_PROJECT, WANDB_ENTITY)"
    )

    def __init__(
        self, module: Any, run_dir: Path, config: dict[str, Any], resume_id: str | None = None
    ) -> None:
        self.module = module
        self.run_dir = Path(run_dir)
        settings: dict[str, Any] = {"name": self.run_dir.resolve().name, "config": config}
        if not os.environ.get("WANDB_DIR"):
            settings["dir"] = str(self.run_dir)  # RUN/wandb, not ./wandb
        if resume_id is not None:
            settings.update(id=resume_id, resume="allow")
        self.run = module.init(**settings)
        self.run_id: str | None = getattr(self.run, "id", None)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.module.log(values, step=step)

    def finish(self, results: dict[str, Any]) -> None:
        try:
            self.run.summary.update(flat(results))
            if results["status"] != "failed":
                self._attach()
        finally:  # the run is finished whatever failed above: W&B keeps no unfinished run
            self.module.finish(exit_code=0 if results["status"] in _FINISHED else 1)

    def _attach(self) -> None:
        for path in _artefacts(self.run_dir):
            if path.is_dir():
                name = re.sub(r"[^\w.-]", "-", f"{self.run_dir.resolve().name}-{path.name}")
                artifact = self.module.Artifact(name, type="model")
                artifact.add_dir(str(path))
                self.run.log_artifact(artifact)
            else:
                self.module.save(str(path), base_path=str(self.run_dir), policy="now")


_OUR_URIS: set[str] = set()
"""Tracking URIs set here (a run directory's mlruns): not the user's choice, so a later fit in
the same process puts its own store in its own run directory."""


@register
class Mlflow:
    name = "mlflow"
    package = "mlflow"
    folder = "mlruns"
    fix = "its settings (MLFLOW_TRACKING_URI and the store it names, MLFLOW_EXPERIMENT_NAME)"

    def __init__(
        self, module: Any, run_dir: Path, config: dict[str, Any], resume_id: str | None = None
    ) -> None:
        self.module = module
        self.run_dir = Path(run_dir)
        if not _user_tracking_uri(module):
            uri = (self.run_dir / "mlruns").resolve().as_uri()  # RUN/mlruns, not ./mlruns
            _OUR_URIS.add(uri)
            module.set_tracking_uri(uri)
        if resume_id is not None:
            active = module.start_run(run_id=resume_id)
        else:
            active = module.start_run(run_name=self.run_dir.resolve().name)
        try:
            self.run_id: str | None = active.info.run_id
            if resume_id is None:  # a resumed run keeps the parameters it started with
                module.log_params({k: str(v) for k, v in flat(config).items()})
        except BaseException:
            module.end_run(status="FAILED")  # started, then failed: not left running
            raise

    def log(self, step: int, values: dict[str, float]) -> None:
        self.module.log_metrics(values, step=step)

    def finish(self, results: dict[str, Any]) -> None:
        try:
            if results["status"] != "failed":
                final = {
                    k: v
                    for k, v in flat(results).items()
                    if isinstance(v, float) and math.isfinite(v)
                }
                self.module.log_metrics(final, step=results["steps"])  # at the final step
                for path in _artefacts(self.run_dir):
                    if path.is_dir():
                        self.module.log_artifacts(str(path), artifact_path=path.name)
                    else:
                        self.module.log_artifact(str(path))
        finally:
            if results["status"] in _FINISHED:
                self.module.end_run(status="FINISHED")
            else:
                status = "KILLED" if results["status"] == "stopped" else "FAILED"
                self.module.end_run(status=status)


def _user_tracking_uri(module: Any) -> bool:
    """Whether the user chose where MLflow tracks: MLFLOW_TRACKING_URI, or set_tracking_uri
    called by the program that runs fit (not by a previous fit in this process)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return True
    is_set = getattr(module, "is_tracking_uri_set", None)
    return bool(is_set is not None and is_set() and module.get_tracking_uri() not in _OUR_URIS)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
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
            modules.append(importlib.import_module(LOGGERS[name]))
        except ImportError:
            missing.append(name)
        except Exception as e:  # installed, but its import fails (a broken dependency)
            fix = f"its installation (pip install --upgrade {LOGGERS[name]})"
            raise start_error(name, fix, e, failed="is installed but its import failed") from None
    if missing:
        packages = " ".join(LOGGERS[n] for n in missing)
        raise MetricsError(
            f"run.loggers asks for {', '.join(missing)}, which is not installed; nothing was "
            f"trained. Install it (pip install {packages}) or remove it from run.loggers."
        )
    return modules
