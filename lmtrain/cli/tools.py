"""Diagnostics, figures and the recipe / export / download helpers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lmtrain import catalog
from lmtrain.cli.app import (
    OverridesArg,
    ThreadsOption,
    Typer,
    _err,
    _user_errors,
    app,
)
from lmtrain.config import (
    DeviceOptions,
    GradientFlowOptions,
    PlotOptions,
    field_docs,
    require_valid,
)

diagnose_app = Typer(no_args_is_help=True, help="Diagnostics of a model or config.")
app.add_typer(diagnose_app, name="diagnose")


_FLOW = GradientFlowOptions()
_FLOW_DOCS = field_docs(GradientFlowOptions)


@diagnose_app.command("gradient-flow")
@_user_errors
def gradient_flow_cmd(
    target: Annotated[
        Path, typer.Argument(help="Run directory, checkpoint or YAML config.", show_default=False)
    ],
    overrides: OverridesArg = None,
    cell: Annotated[list[str] | None, typer.Option(help=_FLOW_DOCS["cell"])] = None,
    out: Annotated[Path, typer.Option(help=_FLOW_DOCS["out"])] = Path(_FLOW.out),
    steps: Annotated[int, typer.Option(help=_FLOW_DOCS["steps"])] = _FLOW.steps,
    batch: Annotated[int, typer.Option(help=_FLOW_DOCS["batch"])] = _FLOW.batch,
    tensorboard: Annotated[Path | None, typer.Option(help=_FLOW_DOCS["tensorboard"])] = None,
    threads: ThreadsOption = DeviceOptions.threads,
) -> None:
    """Norm of dL_T/dh_t against T - t: a PNG, plus TensorBoard scalars and the figure."""
    from lmtrain import diagnose, plot
    from lmtrain.runtime.threads import command_threads

    options = GradientFlowOptions(
        cell or [], str(out), steps, batch, None if tensorboard is None else str(tensorboard)
    )
    require_valid(options, DeviceOptions(threads=threads))
    command_threads(threads)
    plot.require_matplotlib()  # before the measurement, which can take a while
    curves = diagnose.curves_for(target, overrides or [], options)
    figure = plot.gradient_flow_figure(curves, diagnose.title(options))
    plot.save_png(figure, out)
    tb = diagnose.tensorboard_dir(options)
    diagnose.write_tensorboard(curves, tb, plot.pixels(figure))
    for line in diagnose.table(curves, steps):
        typer.echo(line)
    typer.echo(f"wrote {out} and TensorBoard scalars and figure in {tb}")


_PLOT = PlotOptions()
_PLOT_DOCS = field_docs(PlotOptions)


@app.command("plot")
@_user_errors
def plot_cmd(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories to compare.", show_default=False)
    ],
    out: Annotated[Path, typer.Option(help=_PLOT_DOCS["out"])] = Path(_PLOT.out),
    metric: Annotated[str, typer.Option(help=_PLOT_DOCS["metric"])] = _PLOT.metric,
    x: Annotated[str, typer.Option("--x", help=_PLOT_DOCS["x"])] = _PLOT.x,
) -> None:
    """Validation curves of several runs in one figure, one line per run (from RUN/metrics.jsonl)."""
    from lmtrain import plot

    plot.require_matplotlib()
    out = out.expanduser()  # `--out=~/c.png`: the shell leaves that `~` alone
    plot.figure_format(out)
    curves = plot.run_curves(runs, metric, x)
    if warning := plot.unit_warning(curves, metric):
        _err(warning)
    plot.save_png(plot.runs_figure(curves, metric, x), out)
    typer.echo(f"wrote {out}")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the recipes shipped with lmtrain: task, data, hardware and measured result."""
    typer.echo(catalog.table(catalog.recipes()))
    _err(
        "run one: lmtrain fit NAME; copy one to edit: lmtrain init NAME [PATH]; "
        "fetch its data: lmtrain download NAME"
    )


@app.command("init")
@_user_errors
def init_cmd(
    recipe: Annotated[
        str, typer.Argument(help="Recipe name (lmtrain recipes).", show_default=False)
    ],
    path: Annotated[
        # A str, not a Path: Path drops the trailing "/" of `new/`, which asks for a folder.
        str | None,
        typer.Argument(
            help="File or folder (an existing one, or a path ending in /) to write; default "
            "./RECIPE.yaml. Never overwritten.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a copy of a shipped recipe to edit, then run it with `lmtrain fit PATH`.

    To start from every key and its default instead: lmtrain config > my.yaml
    """
    target = catalog.copy_recipe(recipe, path)
    typer.echo(f"wrote {target}; edit it, then: lmtrain fit {target}")


@app.command("download")
@_user_errors
def download_cmd(
    corpus: Annotated[
        str,
        typer.Argument(
            help="wikitext-2, tinyshakespeare, wikitext-103, wikitext-103-raw or enwik8, or a "
            "recipe's name (its corpus).",
            show_default=False,
        ),
    ],
    dest: Annotated[
        Path | None,
        typer.Argument(
            help="Folder that receives CORPUS/; default $LMTRAIN_DATA, else ./data.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Fetch a corpus of the recipes from a pinned commit and check its sha256.

    A file is moved into place only when its checksum matches; a mismatch deletes it, exit 2.
    A failed download (offline, say) leaves no folder it created.

    Files already present and correct are kept. Mirrors: WIKITEXT2_URL, TINYSHAKESPEARE_URL,
    WIKITEXT103_URL, WIKITEXT103_RAW_URL, ENWIK8_URL.
    """
    from lmtrain.download import default_dest, download
    from lmtrain.metrics.console import MEGABYTES, Meter

    root = dest.expanduser() if dest is not None else default_dest()
    # A bar on a terminal; off one, a line as each file starts, every 30 s, and as it ends.
    meter = Meter(_err, bar=sys.stderr.isatty(), lines=True, unit=MEGABYTES)
    download(corpus, root, echo=_err, progress=meter.track)
    typer.echo(f"done: export LMTRAIN_DATA={root.resolve()}")


@app.command("export")
@_user_errors
def export_cmd(
    run: Annotated[
        Path,
        typer.Argument(
            help="Run directory (its best checkpoint) or checkpoint file.", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder to write; default RUN/export. Only a previous export is replaced."
        ),
    ] = None,
    license: Annotated[
        str | None,
        typer.Option(
            help="Licence identifier for the model card's header (mit, apache-2.0, "
            "cc-by-sa-4.0, ...); default: none stated."
        ),
    ] = None,
) -> None:
    """Write the model as safetensors weights, config.json, vocab.json and a README model card.

    The card opens with the metadata header model hubs read (library, licence, tags, metrics);
    neither it nor config.json names a folder of this machine. Loading an export (lmtrain
    eval/sample/score EXPORT, lmtrain.load) never unpickles anything.
    """
    from lmtrain.export import FILES, export_run

    result = export_run(run, out, license)
    typer.echo(
        f"exported {result.checkpoint} ({result.parameters:,} parameters) to {result.out}: "
        + ", ".join(FILES)
    )
