"""User-facing errors.

Everything a user can get wrong (a config, a data file, a checkpoint, a prompt) raises a subclass
of `LmtrainError`. The CLI prints its message as one paragraph and exits with `exit_code`; it never
shows a traceback for these. Internal bugs are ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations


class LmtrainError(Exception):
    """A problem the user can fix; the message says what, where, and what to do."""

    exit_code = 2


class ConfigError(LmtrainError):
    """One or more problems in a config file or its overrides, reported together."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = [f"{source}: {len(self.problems)} problem(s) found:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class DataError(LmtrainError):
    """A data file that is missing, unreadable, empty or does not fit the tokeniser."""


class CheckpointError(LmtrainError):
    """A checkpoint or run directory that is missing, damaged, untrusted or incompatible."""


class TrainingStopped(LmtrainError):
    """Training stopped early on purpose (a signal, or too many non-finite steps)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
