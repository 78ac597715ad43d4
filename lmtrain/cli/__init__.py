"""The `lmtrain` command: thin Typer commands that parse, call the library and map errors.

Exit codes: 0 success; 2 a user error (config, data, checkpoint, prompt), printed as one
paragraph without a traceback; 3 training stopped after too many consecutive non-finite steps;
130 / 143 training interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import sys

# isort: off
# Importing the command modules registers their commands on `app`, in the order of --help.
from lmtrain.cli import train  # noqa: F401
from lmtrain.cli import evaluate  # noqa: F401
from lmtrain.cli import tools  # noqa: F401

# isort: on
from lmtrain.cli.app import _err, app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
