"""Diagnostics, figures and the recipe / export / download helpers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lmtrain import catalog
from lmtrain.cli.app import (
    OverridesArg,
    _err,
    _user_errors,
    app,
)
from lmtrain.errors import LmtrainError

if TYPE_CHECKING:  # the commands import torch lazily, so that --help stays fast
    pass


diagnose_app = typer.Typer(no_args_is_help=True, help="Diagnostics of a model or config.")
app.add_typer(diagnose_app, name="diagnose")


@diagnose_app.command("gradient-flow")
@_user_errors
def gradient_flow_cmd(
    target: Annotated[
        Path, typer.Argument(help="Run directory, checkpoint or YAML config.", show_default=False)
    ],
    overrides: OverridesArg = None,
    cell: Annotated[
        list[str] | None,
        typer.Option(help="Config only: one curve per cell (repeatable), fresh weights each."),
    ] = None,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("gradient_flow.png"),
    steps: Annotated[int, typer.Option(help="Window length T.")] = 50,
    batch: Annotated[int, typer.Option(help="Rows averaged.")] = 8,
    tensorboard: Annotated[
        Path | None, typer.Option(help="TensorBoard directory; default OUT's name + '-tb'.")
    ] = None,
) -> None:
    """Norm of dL_T/dh_t against T - t: a PNG, plus TensorBoard scalars and the figure."""
    from lmtrain import diagnose, plot

    if steps < 2 or batch < 1:
        raise LmtrainError("--steps must be >= 2 and --batch >= 1")
    plot.require_matplotlib()  # before the measurement, which can take a while
    curves = diagnose.curves_for(target, overrides or [], cell or [], steps, batch)
    figure = plot.gradient_flow_figure(
        curves, f"Gradient of the loss at step $T$ reaching $h_t$ ($T$ = {steps}, {batch} rows)"
    )
    plot.save_png(figure, out)
    tb = tensorboard or out.with_name(out.stem + "-tb")
    diagnose.write_tensorboard(curves, tb, plot.pixels(figure))
    shown = [d for d in (0, 1, 2, 5, 10, 20, 50, 100, 200) if d < steps]
    typer.echo("steps back  " + "  ".join(f"{c.label:>12s}" for c in curves))
    for d in shown:
        typer.echo(f"{d:10d}  " + "  ".join(f"{c.norms[d]:12.3e}" for c in curves))
    typer.echo(f"wrote {out} and TensorBoard scalars and figure in {tb}")


@app.command("plot")
@_user_errors
def plot_cmd(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories to compare.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option(help="Figure to write: .png, or .pdf / .svg for a vector figure.")
    ] = Path("curves.png"),
    metric: Annotated[
        str,
        typer.Option(
            help="loss, ppl, bpc (character models) or bpb (bits per byte: any tokeniser)."
        ),
    ] = "ppl",
    x: Annotated[
        str, typer.Option("--x", help="step, minutes (of training) or tokens (trained on).")
    ] = "step",
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
            help="wikitext-2 or tinyshakespeare, or a recipe's name (its corpus).",
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

    Files already present and correct are kept. Mirrors: WIKITEXT2_URL, TINYSHAKESPEARE_URL.
    """
    from lmtrain.download import default_dest, download

    root = dest.expanduser() if dest is not None else default_dest()
    download(corpus, root, echo=_err)
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
) -> None:
    """Write the model as safetensors weights, config.json, vocab.json and a README model card.

    Loading an export (lmtrain eval/sample/score EXPORT, lmtrain.load) never unpickles anything.
    """
    from lmtrain.export import FILES, export_run

    result = export_run(run, out)
    typer.echo(
        f"exported {result.checkpoint} ({result.parameters:,} parameters) to {result.out}: "
        + ", ".join(FILES)
    )
