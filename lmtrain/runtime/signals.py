"""Graceful interruption: SIGINT / SIGTERM ask training to stop at the next step boundary.

The first signal only sets a flag. The loop checks it after each optimiser step, writes a
checkpoint there (so `--resume auto` continues exactly) and raises `TrainingStopped` with the
conventional code 128 + signal number: 130 for Ctrl-C, 143 for SIGTERM (what `kill`, Slurm and
Kubernetes send before they preempt a job). Evaluation checks the flag between windows too, so a
signal during a long evaluation stops within one window, not after the whole text.

A second signal stops at once by raising `ImmediateStop` wherever the program is; every
checkpoint write is atomic and removes its temporary file on the way out, so this never damages
a checkpoint that already exists. Further signals after that are ignored, so that a third
Ctrl-C cannot interrupt the clean-up itself.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ImmediateStop(KeyboardInterrupt):
    """A second signal: stop now. A KeyboardInterrupt so that nothing swallows it by accident."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received twice")
        self.exit_code = 128 + signum


class StopRequest:
    """The flag the training loop polls; `signum` is the first signal received, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.immediate = False
        """A second signal came and ImmediateStop was raised."""

    def __call__(self) -> bool:
        """Whether a stop was requested: the check evaluation loops poll."""
        return self.signum is not None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        assert self.signum is not None
        return 128 + self.signum

    @property
    def name(self) -> str:
        assert self.signum is not None
        return signal.Signals(self.signum).name

    def request(self, signum: int) -> None:
        self.signum = signum


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Install the two-stage SIGINT/SIGTERM handlers for the duration of the block.

    Outside the main thread (where Python cannot install handlers) the request is returned
    unarmed and signals keep their usual effect.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.immediate:
            return  # already stopping at once; let the clean-up finish
        if request.requested:
            request.immediate = True
            raise ImmediateStop(signum)
        request.request(signum)
        print(
            f"\n{signal.Signals(signum).name} received: stopping after the current step (an "
            "evaluation in progress is abandoned) and saving a checkpoint; send it again to stop "
            "at once.",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
