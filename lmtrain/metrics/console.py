"""Console output that survives its reader going away, and the progress of a long pass."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

PROGRESS_SECONDS = 30.0
"""Seconds between the progress lines of a long pass off a terminal (a WikiText-103 evaluation
on a CPU takes minutes); a pass shorter than this prints only its first and last line."""


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


class Meter:
    """The progress of passes over a text (an evaluation), for a person watching.

    `track(label)` is the callback of one pass, `progress(done, total)` in tokens: called with 0
    done before the first window, then after each. With `bar` (stderr is a terminal) it draws a
    tqdm bar, which goes when the pass ends; else, with `lines`, it writes to `echo` a line when
    the pass starts, one every PROGRESS_SECONDS, and one when it ends, with its duration, so a
    log never sits silent through a long evaluation. Neither: nothing (fit --quiet).
    """

    def __init__(
        self,
        echo: Callable[[str], None],
        *,
        bar: bool,
        lines: bool,
        every: float = PROGRESS_SECONDS,
    ) -> None:
        self.echo = echo
        self.bar = bar
        self.lines = lines and not bar
        self.every = every

    def track(self, label: str) -> Callable[[int, int], None]:
        """The progress callback of one pass called `label` ("evaluation")."""
        shown = started = time.perf_counter()
        bar: tqdm | None = None
        last = 0

        def progress(done: int, total: int) -> None:
            nonlocal shown, started, bar, last
            if done == 0:
                # Every pass starts at 0; a bar left by one stopped part-way goes first.
                if bar is not None:
                    bar.close()
                shown = started = time.perf_counter()
                last = 0
                if self.bar:
                    bar = tqdm(
                        total=total, desc=label, unit="token", leave=False,
                        file=sys.stderr, dynamic_ncols=True,
                    )  # fmt: skip
                elif self.lines:
                    self.echo(f"{label}: {total:,} tokens to read")
            if bar is not None:
                bar.update(done - last)
                last = done
                if done >= total:
                    bar.close()
                    bar = None
                return
            if not self.lines or done == 0:
                return
            now = time.perf_counter()
            rate = done / max(now - started, 1e-9)
            if done >= total:
                self.echo(f"{label}: done in {_seconds(now - started)} ({rate:,.0f} tokens/s)")
            elif now - shown >= self.every:
                shown = now
                left = _seconds((total - done) / max(rate, 1e-9))
                self.echo(
                    f"{label}: {done:,}/{total:,} tokens ({done / total:.0%}) | "
                    f"{rate:,.0f} tokens/s | {left} left"
                )

        return progress


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f} min"
