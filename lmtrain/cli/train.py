"""Commands that build runs: fit, validate, prepare, config."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lmtrain import catalog
from lmtrain import config as config_mod
from lmtrain.cli.app import (
    _DOTTED_OPTIONS,
    ConfigArg,
    ConfigOverridesArg,
    _config_overrides,
    _err,
    _user_errors,
    app,
)
from lmtrain.errors import LmtrainError, TrainingStopped

if TYPE_CHECKING:  # the commands import torch lazily, so that --help stays fast
    from lmtrain.config import Config
    from lmtrain.training import FitResult


def _config_file(config: str) -> Path:
    """The file CONFIG names; when it was a name (./NAME.yaml or a recipe), a first line on
    stderr says which file that is."""
    source = catalog.find_config(config)
    if source.note is not None:
        _err(source.note)
    return source.path


@app.command(context_settings=_DOTTED_OPTIONS)
@_user_errors
def fit(
    ctx: typer.Context,
    config: ConfigArg,
    overrides: ConfigOverridesArg = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue a run: 'auto' (run.dir's newest readable checkpoint), a run "
            "directory (its newest readable checkpoint) or a checkpoint file. A checkpoint of "
            "another run starts a fork into a new or empty run.dir; an older checkpoint of "
            "run.dir rewinds it (newer checkpoints move to checkpoints/abandoned-*/)."
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No progress bar or progress lines; evaluations, warnings, errors and the "
            "final summary still print.",
        ),
    ] = False,
) -> None:
    """Train a model from a YAML config or a recipe's name (lmtrain recipes).

    Checkpoints, metrics.jsonl, results.json, TensorBoard events and the resolved config go to
    run.dir.
    """
    from lmtrain.training import fit as run_fit

    settings = _config_overrides(ctx, config, overrides or [])
    cfg = config_mod.load_config(_config_file(config), settings)
    config_mod.check_resources(cfg)
    from lmtrain.metrics import console, silence

    # A closed pipe (`lmtrain fit ... 2>&1 | head`) must not stop the training.
    echo = console(_err, sys.stderr)
    try:
        result = run_fit(cfg, resume=resume, quiet=quiet, echo=echo)
    except TrainingStopped as e:
        if e.exit_code == NONFINITE_EXIT:
            raise  # it gave up: an error
        # SIGINT/SIGTERM: the run stopped as asked and saved where it continues from, which is
        # not an error; the way on is this very command with --resume auto.
        echo(str(e).replace("lmtrain fit CONFIG", _this_command(config, settings)))
        raise typer.Exit(e.exit_code) from None
    if not result.is_main:
        return  # under torchrun, rank 0 reports for the job
    try:
        _fit_summary(cfg, result)
    except BrokenPipeError:
        # The reader is gone (`| head`); the run is complete and saved, which is what counts.
        silence(sys.stdout)


NONFINITE_EXIT = 3
"""fit's exit status after too many consecutive non-finite steps (a failure, unlike a signal)."""


def _this_command(config: str, settings: list[str]) -> str:
    """`lmtrain fit CONFIG` as it was typed: the config and its overrides, quoted for a shell."""
    return shlex.join(["lmtrain", "fit", config, *settings])


def _fit_summary(cfg: Config, result: FitResult) -> None:
    """The closing lines of `lmtrain fit` on stdout: figures, files and what to run next."""
    p = result.progress
    best = f"best val loss {p.best_val_loss:.4f}" if p.best_val_loss < float("inf") else "no val"
    # Seconds and tokens/s of this session's training steps, evaluation and checkpoints excluded.
    session = (
        f"{result.train_tokens:,} tokens in {result.train_seconds:.1f}s of training "
        f"({result.tokens_per_sec:,.0f} tokens/s)"
    )
    if result.results.get("tokens", result.train_tokens) != result.train_tokens:
        # A resumed run: the step count is the whole run's, the tokens and seconds only this
        # session's, so say so rather than print a misleading tokens-per-step figure.
        total = result.results["tokens"]
        done = f"done: step {p.step}, {total:,} tokens in all; this session {session}"
    else:
        done = f"done: {p.step} steps, {session}"
    typer.echo(f"{done}, {best}; run in {result.run_dir}")
    run = shlex.quote(str(result.run_dir))
    best_val = result.results.get("best_val")
    if best_val is not None:
        figure = f"bpc {best_val['bpc']:.4f}" if "bpc" in best_val else f"ppl {best_val['ppl']:.2f}"
        typer.echo(f"best validation: {figure} at step {best_val['step']}")
    typer.echo(f"figures: {result.run_dir / 'results.json'}, {result.run_dir / 'metrics.jsonl'}")
    typer.echo(f"evaluate: lmtrain eval {run}")
    prompt = f" --prompt {shlex.quote(cfg.run.sample_prompt)}" if cfg.run.sample_prompt else ""
    typer.echo(f"sample:   lmtrain sample {run}{prompt}")


@app.command(context_settings=_DOTTED_OPTIONS)
@_user_errors
def validate(ctx: typer.Context, config: ConfigArg, overrides: ConfigOverridesArg = None) -> None:
    """Check a config, its files, device and memory without training.

    Exit 2 listing every problem: each data, tokenizer and vectors file must be a
    readable regular file (opened, not read), train.device must exist here, run.dir
    must be creatable and the model must fit in memory. Prints the config that fit
    would save, with run.dir expanded.
    """
    from lmtrain.preflight import validate_config

    settings = _config_overrides(ctx, config, overrides or [])
    cfg = validate_config(_config_file(config), settings)
    typer.echo(f"{config}: OK")
    typer.echo(cfg.to_yaml().rstrip())


@app.command(context_settings=_DOTTED_OPTIONS)
@_user_errors
def prepare(
    ctx: typer.Context,
    config: ConfigArg,
    overrides: ConfigOverridesArg = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Hash every text and prepared file in full, instead of trusting a file whose "
            "size, times and inode are unchanged; a damaged or stale entry is rebuilt.",
        ),
    ] = False,
) -> None:
    """Tokenise the training and validation text once into data.cache_dir (prepared ids).

    Later fits, resumes and torchrun ranks with the same data.cache_dir map the prepared ids
    instead of reading the text. Exit 2 when data.cache_dir is null (the cache is off).
    """
    from lmtrain.data.corpus import is_builtin
    from lmtrain.data.prepare import prepare_corpus, resolve_cache_dir

    settings = _config_overrides(ctx, config, overrides or [])
    cfg = config_mod.load_config(_config_file(config), settings)
    cache_dir = resolve_cache_dir(cfg.data.cache_dir)
    if cache_dir is None:
        raise LmtrainError(
            "data.cache_dir is not set (null turns the cache off), so there is nowhere to "
            "prepare the text; set data.cache_dir=auto (the default) or any folder in the "
            "command or config, and use the same setting for lmtrain fit"
        )
    pc = prepare_corpus(cfg.data, cache_dir, None, _err, verify)
    splits = [("train", cfg.data.train, pc.train)]
    if pc.valid is not None and cfg.data.valid is not None:
        splits.append(("valid", cfg.data.valid, pc.valid))
    typer.echo(f"vocabulary {len(pc.vocab):,} ({pc.vocab.kind}); cache {cache_dir}")
    for role, spec, split in splits:
        typer.echo(
            f"{role}: {spec}: {split.ids.numel():,} tokens as {str(split.ids.dtype)[6:]}, "
            f"{split.text_bytes:,} bytes of text"
            + (", verified in full" if verify and not is_builtin(spec) else "")
        )


@app.command("config")
def show_config() -> None:
    """Print every config key with its default and a one-line description.

    Then, as comments, the options of eval, score, sample and diagnose with their defaults.

    The output is itself a valid config: `lmtrain config > my.yaml` starts one to edit.

    `lmtrain init RECIPE` copies a tuned recipe instead (lmtrain recipes lists them).
    """
    typer.echo(config_mod.describe())
