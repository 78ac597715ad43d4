"""Console output that survives its reader going away, and the progress of a long pass."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Unit:
    """What a Meter counts, as its lines and its bar show it."""

    name: str = "tokens"
    """The word after an amount: "24,874 tokens", "190.2 MB"."""
    scale: float = 1.0
    """Counted items per shown unit (1e6 for bytes shown in MB)."""
    verb: str = "to read"
    """What the first line says is to be done: "24,874 tokens to read"."""
    bar: str = "token"
    """tqdm's unit; with a scale other than 1 the bar scales it itself (kB, MB)."""

    def amount(self, n: float) -> str:
        return f"{n / self.scale:,.0f}" if self.scale == 1 else f"{n / self.scale:,.1f}"


TOKENS = Unit()
MEGABYTES = Unit("MB", 1e6, "to fetch", "B")


class Meter:
    """The progress of long passes (an evaluation over a text, a download), for a person
    watching.

    `track(label)` is the callback of one pass, `progress(done, total)` in the unit's items:
    called with 0 done before the first step, then after each. With `bar` (stderr is a terminal)
    it draws a tqdm bar, which goes when the pass ends; else, with `lines`, it writes to `echo`
    a line when the pass starts, one every `every` seconds, and one when it ends, with its
    duration, so a log never sits silent through a long pass. Neither: nothing (fit --quiet).
    """

    def __init__(
        self,
        echo: Callable[[str], None],
        *,
        bar: bool,
        lines: bool,
        every: float = PROGRESS_SECONDS,
        unit: Unit = TOKENS,
    ) -> None:
        self.echo = echo
        self.bar = bar
        self.lines = lines and not bar
        self.every = every
        self.unit = unit

    def track(self, label: str) -> Callable[[int, int], None]:
        """The progress callback of one pass called `label` ("evaluation")."""
        u = self.unit
        shown = started = time.perf_counter()
        bar: tqdm | None = None
        last = 0
        ended = False

        def progress(done: int, total: int) -> None:
            nonlocal shown, started, bar, last, ended
            if done == 0:
                # Every pass starts at 0; a bar left by one stopped part-way goes first.
                if bar is not None:
                    bar.close()
                shown = started = time.perf_counter()
                last = 0
                if self.bar:
                    bar = tqdm(
                        total=total, desc=label, unit=u.bar, unit_scale=u.scale != 1,
                        leave=False, file=sys.stderr, dynamic_ncols=True,
                    )  # fmt: skip
                elif self.lines:
                    self.echo(f"{label}: {u.amount(total)} {u.name} {u.verb}")
            elif ended:
                return  # its end was shown: a repeated last call says nothing new
            ended = done >= total
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
            # "per second", not "/s": a training progress line is the one that reads "tokens/s".
            speed = f"{u.amount(rate)} {u.name} per second"
            if done >= total:
                self.echo(f"{label}: done in {_seconds(now - started)} ({speed})")
            elif now - shown >= self.every:
                shown = now
                left = _seconds((total - done) / max(rate, 1e-9))
                self.echo(
                    f"{label}: {u.amount(done)}/{u.amount(total)} {u.name} ({done / total:.0%}) "
                    f"| {speed} | {left} left"
                )

        return progress


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f} min"
