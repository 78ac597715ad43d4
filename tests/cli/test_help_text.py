"""--help reads like every other command-line tool's: arguments in capitals, flags bare."""

from __future__ import annotations

import re

import pytest
import typer

from conftest import invoke
from lmtrain.cli import app


def _commands(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, typer.core.TyperGroup):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "lmtrain")
def test_help_shows_no_python_types_after_flags_nor_braces(cli, path: tuple[str, ...]) -> None:
    r = cli.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.stdout
    usage = next(line for line in r.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage


@pytest.mark.parametrize(
    ("path", "usage"),
    [
        (("eval",), "[OPTIONS] RUN"),
        (("fit",), "[OPTIONS] CONFIG [OVERRIDES]..."),
        (("init",), "[OPTIONS] RECIPE [PATH]"),
        (("score",), "[OPTIONS] RUN [SENTENCES]..."),
        (("diagnose", "gradient-flow"), "[OPTIONS] TARGET [OVERRIDES]..."),
        ((), "[OPTIONS] COMMAND [ARGS]..."),
    ],
)
def test_usage_line_names_arguments_in_capitals(cli, path: tuple[str, ...], usage: str) -> None:
    r = cli.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    line = next(line for line in r.stdout.splitlines() if "Usage:" in line)
    # The program's name is the runner's ("root" in tests, "lmtrain" installed).
    assert line.strip().endswith(" ".join([*path, usage])), line


def test_flag_rows_end_at_their_help_text(cli) -> None:
    r = cli.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    row = next(line for line in r.stdout.splitlines() if line.startswith("│ --json"))
    assert re.search(r"--json\s+Print one JSON object\.", row), row
    assert re.search(r"\*\s+RUN\s+<path>", r.stdout)


def test_a_missing_argument_is_named_as_help_shows_it(cli) -> None:
    r = invoke(cli, "eval")
    assert r.exit_code == 2
    assert "Missing argument 'RUN'" in r.output
