"""Where logged values go besides the console and the run files: TensorBoard, and the optional
loggers chosen by name from SINKS (Weights & Biases, MLflow). A logger is a class with its
`name` and pip `package`, added by `register` (a new one: its class here or in a plugin's module).

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lmtrain.metrics.config import LOGGERS
from lmtrain.metrics.files import MetricsError, write_error

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
`finish(results)`."""

S = TypeVar("S", bound=type)


def register(cls: S) -> S:
    """Add the logger `cls` under `cls.name`: the class to SINKS and its pip package
    (`cls.package`, also the module imported) to LOGGERS, the names run.loggers takes."""
    name: str = cls.name  # type: ignore[attr-defined]
    if name in SINKS or name in LOGGERS:
        raise ValueError(f"a logger named {name!r} is already registered")
    LOGGERS[name], SINKS[name] = cls.package, cls  # type: ignore[attr-defined]
    return cls


@register
class Wandb:
    name = "wandb"
    package = "wandb"

    def __init__(self, module: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.module = module
        self.run = module.init(name=Path(run_dir).resolve().name, config=config)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.module.log(values, step=step)

    def finish(self, results: dict[str, Any]) -> None:
        self.run.summary.update(flat(results))
        self.module.finish(exit_code=0 if results["status"] in _FINISHED else 1)


@register
class Mlflow:
    name = "mlflow"
    package = "mlflow"

    def __init__(self, module: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.module = module
        module.start_run(run_name=Path(run_dir).resolve().name)
        module.log_params({k: str(v) for k, v in flat(config).items()})

    def log(self, step: int, values: dict[str, float]) -> None:
        self.module.log_metrics(values, step=step)

    def finish(self, results: dict[str, Any]) -> None:
        final = {
            k: v for k, v in flat(results).items() if isinstance(v, float) and math.isfinite(v)
        }
        self.module.log_metrics(final)
        if results["status"] in _FINISHED:
            self.module.end_run(status="FINISHED")
        else:
            self.module.end_run(status="KILLED" if results["status"] == "stopped" else "FAILED")


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
    if missing:
        packages = " ".join(LOGGERS[n] for n in missing)
        raise MetricsError(
            f"run.loggers asks for {', '.join(missing)}, which is not installed; nothing was "
            f"trained. Install it (pip install {packages}) or remove it from run.loggers."
        )
    return modules
