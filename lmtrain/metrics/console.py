"""Console output that survives its reader going away."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import TextIO


def console(echo: Callable[[str], None], stream: TextIO | None = None) -> Callable[[str], None]:
    """`echo` that outlives its reader: once the pipe it writes to is closed (`| head`, a `tee`
    or ssh session that died), lines are dropped and training goes on to its checkpoints and
    results.json instead of dying at its next log line. `stream`, the file `echo` writes to, is
    then pointed at the null device, so that the interpreter's last flush does not fail either.
    """
    closed = False

    def write(line: str) -> None:
        nonlocal closed
        if closed:
            return
        try:
            echo(line)
        except BrokenPipeError:
            closed = True
            if stream is not None:
                silence(stream)

    return write


def silence(stream: TextIO) -> None:
    """Point `stream`'s file descriptor at the null device (its reader has gone)."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
