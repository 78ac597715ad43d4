"""The Typer application, its error handling and the argument types the commands share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from lmtrain import __version__
from lmtrain.errors import LmtrainError


class _PlainHelp:
    """--help in the words of every other command-line tool: `lmtrain eval [OPTIONS] RUN`, and
    a flag with no value shown after it. Typer's own `{run}` for a required argument and `<bool>`
    after `--json` read as syntax to type."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if isinstance(p, TyperArgument) and p.metavar is None and p.name:
                p.metavar = p.name.upper()
            elif isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
                p.metavar = ""  # a flag takes no value: nothing to show in the type column
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = p.metavar if p.required else f"[{p.metavar}]"
                pieces.append(name + ("..." if p.nargs != 1 else ""))
        if isinstance(self, TyperGroup):
            pieces.append(self.subcommand_metavar)
        return pieces


class Command(_PlainHelp, TyperCommand):
    pass


class Group(_PlainHelp, TyperGroup):
    pass


class Typer(typer.Typer):
    """typer.Typer whose commands and groups print the plain --help above."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return super().command(*args, cls=Command, **kwargs)


app = Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train, evaluate and sample recurrent language models from a YAML config.",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"lmtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Options that come before the command."""


F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """Turn LmtrainError into its message on stderr and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LmtrainError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            # A second Ctrl-C / SIGTERM (lmtrain.interrupt) or one outside training: stop now.
            # Checkpoint writes are atomic, so files already written stay complete.
            typer.echo(
                "error: interrupted; stopped at once (checkpoints on disk are intact)", err=True
            )
            raise typer.Exit(getattr(e, "exit_code", 130)) from None

    return wrapper  # type: ignore[return-value]


def _err(line: str) -> None:
    typer.echo(line, err=True)


ConfigArg = Annotated[
    # A str, not a Path: Path("./x") is Path("x"), and "./x" says "a file, not a recipe's name".
    str,
    typer.Argument(
        help="YAML config file, or the name of a shipped recipe (lmtrain recipes).",
        show_default=False,
    ),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides such as train.lr=0.5 model.cell=gru.", show_default=False
    ),
]
ConfigOverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Dotted overrides: train.lr=0.5, --train.lr 0.5 or --train.lr=0.5.",
        show_default=False,
    ),
]
# fit and validate pass options they do not know (`--train.lr 0.1`) through to their overrides
# argument, where _config_overrides turns dotted ones into KEY=VALUE and refuses the rest.
_DOTTED_OPTIONS = {"ignore_unknown_options": True}


def _is_dotted(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and all(parts)


def _unknown_option(ctx: typer.Context, option: str) -> LmtrainError:
    import difflib

    names = [o for param in ctx.command.params for o in getattr(param, "opts", []) if "-" in o]
    close = difflib.get_close_matches(option.split("=", 1)[0], names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return LmtrainError(
        f"no such option: {option}{hint}; config keys are set as section.key=VALUE or "
        f"--section.key VALUE (lmtrain config lists them); see lmtrain {ctx.command.name} --help"
    )


def _config_overrides(ctx: typer.Context, config: str, tokens: list[str]) -> list[str]:
    """The overrides as KEY=VALUE; `--a.b VALUE` and `--a.b=VALUE` are accepted as `a.b=VALUE`.

    An option that is not a dotted key (a typo such as `--resum`) is refused with the closest
    real option, so a mistake never passes silently as a config value.
    """
    first = str(config)
    if first.startswith("-"):
        if _is_dotted(first.lstrip("-").split("=", 1)[0]):
            raise LmtrainError(
                f"{first}: the config file comes first, then the overrides: "
                f"lmtrain {ctx.command.name} CONFIG {first} ..."
            )
        raise _unknown_option(ctx, first)
    result: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-"):
            result.append(token)
            continue
        name, sep, value = token.lstrip("-").partition("=")
        if not token.startswith("--") or not _is_dotted(name):
            raise _unknown_option(ctx, token)
        if not sep:
            if i == len(tokens) or tokens[i].startswith("--"):
                raise LmtrainError(f"option {token} needs a value: {token} VALUE or {token}=VALUE")
            value = tokens[i]
            i += 1
        result.append(f"{name}={value}")
    return result


ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for torch's kernels (as fit's train.num_threads); default: torch's "
        "own choice.",
        show_default=False,
    ),
]

RunArg = Annotated[
    Path,
    typer.Argument(help="Run directory, checkpoint file or export folder.", show_default=False),
]
