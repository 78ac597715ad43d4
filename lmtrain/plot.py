"""Figures: the gradient-flow plot of `lmtrain diagnose` and the validation curves of `lmtrain plot`.

matplotlib is an optional extra (`pip install 'lmtrain[plot]'`): training, evaluation and
sampling never draw, so they do not pay for it. Figures are built with matplotlib's
object-oriented API on the Agg canvas, never through pyplot, so drawing needs no display and
never changes the backend of a notebook or program that imports lmtrain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtrain import files
from lmtrain.errors import LmtrainError
from lmtrain.evaluation.config import FIGURES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lmtrain.diagnose import FlowCurve

INSTALL_HINT = "pip install 'lmtrain[plot]'"
METRICS = tuple(FIGURES)
X_AXES = ("step", "minutes", "tokens")

_METRIC_LABELS = FIGURES
_X_LABELS = {
    "step": "training step",
    "minutes": "training minutes (evaluation excluded)",
    "tokens": "training tokens",
}


class PlotError(LmtrainError):
    """A figure that cannot be drawn: matplotlib missing, a run without curves, an unwritable file."""


def require_matplotlib() -> None:
    """Raise PlotError saying how to install matplotlib when it is missing; else nothing."""
    _figure_class()


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(
            f"drawing figures needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    return Figure


def gradient_flow_figure(curves: Sequence[FlowCurve], title: str) -> Figure:
    """||dL_T/dh_t|| on a log scale against the distance T - t, one line per curve."""
    fig = _figure_class()(figsize=(8, 5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for curve in curves:
        # A log axis has no place for 0 (a cell whose state stops carrying gradient) or inf:
        # those points are left out, which breaks the line where they are.
        values = [n if 0 < n < math.inf else math.nan for n in curve.norms]
        ax.plot(range(len(values)), values, label=curve.label, linewidth=2)
    if any(0 < n < math.inf for curve in curves for n in curve.norms):
        ax.set_yscale("log")
    ax.set_xlabel("steps back, $T - t$")
    ax.set_ylabel(r"$\|\partial L_T \,/\, \partial h_t\|$ (mean over rows)")
    ax.set_title(title)
    ax.set_xlim(left=0)
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(title="cell")
    return fig


@dataclass
class RunCurve:
    """One run's validation curve: x and y of each evaluation, in order."""

    label: str
    x: list[float]
    y: list[float]
    kind: str = "word"
    """"char" when the evaluations carry bits per character (character models), else "word"."""


def unit_warning(curves: Sequence[RunCurve], metric: str) -> str | None:
    """A warning when character and word models share a loss or perplexity axis: per character
    and per word figures are not on the same scale, however close the numbers look."""
    kinds = {c.kind for c in curves}
    if len(kinds) < 2 or metric in ("bpc", "bpb"):  # both are per unit of text
        return None

    def runs(kind: str) -> str:
        return ", ".join(c.label.removesuffix(f" ({kind})") for c in curves if c.kind == kind)

    return (
        f"warning: the {metric} of character models ({runs('char')}) is per character and "
        f"that of word models ({runs('word')}) per word; their curves are not comparable "
        "(the legend marks each run char or word)"
    )


def run_curves(runs: Sequence[Path], metric: str = "ppl", x: str = "step") -> list[RunCurve]:
    """The validation evaluations of each run's metrics.jsonl as (x, metric) points."""
    from lmtrain.metrics import read_metrics

    if metric not in METRICS:
        raise PlotError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if x not in X_AXES:
        raise PlotError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    if not runs:
        raise PlotError("give at least one run directory")
    names = [run.resolve().name for run in runs]
    curves = []
    for run, name in zip(runs, names, strict=True):
        if not run.is_dir():
            raise PlotError(f"{run}: not a run directory; give the directory `lmtrain fit` wrote")
        evals = [
            r
            for r in read_metrics(run)
            if r["type"] == "eval" and r.get("split", "valid") == "valid"
        ]
        if not evals:
            raise PlotError(
                f"{run}: metrics.jsonl holds no validation evaluation yet; let the run reach "
                "train.eval_every, or lower it"
            )
        if metric == "bpc" and any("bpc" not in r for r in evals):
            raise PlotError(
                f"{run}: its evaluations have no bpc (bits per character exist for character "
                "models only); use --metric loss or --metric ppl"
            )
        if metric == "bpb" and any("bpb" not in r for r in evals):
            raise PlotError(
                f"{run}: its evaluations have no bpb (bits per byte; written by an older "
                "lmtrain?); use --metric loss or --metric ppl"
            )
        key = {"step": "step", "minutes": "train_seconds", "tokens": "train_tokens"}[x]
        xs = [_number(run, r, key) for r in evals]
        if x == "minutes":
            xs = [v / 60 for v in xs]
        # Two runs of the same name (a/run, b/run) keep the path as given, to tell them apart.
        label = name if names.count(name) == 1 else str(run)
        kind = "char" if all("bpc" in r for r in evals) else "word"
        curves.append(RunCurve(label, xs, [_number(run, r, metric) for r in evals], kind))
    if unit_warning(curves, metric):
        for curve in curves:
            curve.label += f" ({curve.kind})"
    return curves


def _number(run: Path, record: dict[str, Any], key: str) -> float:
    if key not in record:
        raise PlotError(
            f'{run}: an evaluation at step {record["step"]} in metrics.jsonl has no "{key}" '
            "(written by an older lmtrain?)" + ("; use --x step" if key != "step" else "")
        )
    # The metrics file writes a figure that was not finite (a diverged run) as null: a gap.
    value = record[key]
    return math.nan if value is None else float(value)


def runs_figure(curves: Sequence[RunCurve], metric: str, x: str) -> Figure:
    """One line per run, marked at each evaluation, labelled by the run directory's name."""
    fig = _figure_class()(figsize=(8, 5), dpi=120, layout="constrained")
    from matplotlib.ticker import EngFormatter, FuncFormatter, LogFormatter

    ax = fig.add_subplot()
    for curve in curves:
        ax.plot(curve.x, curve.y, marker="o", markersize=3, linewidth=1.6, label=curve.label)
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter())  # 200 k, 1.5 M: readable at a glance
    if metric == "ppl":
        # Perplexity is exp(loss): on a log axis its curve has the loss curve's shape. Ticks
        # read as plain numbers (250, 1,000), not powers of ten.
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.set_xlabel(_X_LABELS[x])
    ax.set_ylabel(_METRIC_LABELS[metric])
    ax.set_title(f"{_METRIC_LABELS[metric].capitalize()} by {_X_LABELS[x].split(' (')[0]}")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(title="run")
    return fig


FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
"""The figure format by --out's suffix."""


def figure_format(path: Path) -> str:
    """The format `path`'s suffix asks for; PlotError for any other suffix, so that a file
    called curves.pdf never holds a PNG."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PlotError(
            f"{path}: --out must end in .png, .pdf or .svg (the format follows the suffix)"
        )
    return fmt


def save_png(fig: Figure, path: Path) -> None:
    """Write `fig` at `path` as PNG, or as PDF or SVG when the suffix says so, atomically: a
    reader never sees half a file."""
    fmt = figure_format(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.sweep_temps(path.parent, (path.name,))  # what a plot killed mid-write left
        with files.atomic_write(path) as f:
            fig.savefig(f, format=fmt)
    except OSError as e:
        raise PlotError(
            f"{path}: cannot write the figure ({e.strerror or e}); choose another --out"
        ) from None


def pixels(fig: Figure) -> Any:
    """The figure rendered as an (H, W, 3) uint8 array, as TensorBoard's add_image takes it."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
