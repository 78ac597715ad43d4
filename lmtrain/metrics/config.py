"""The metrics package's part of the config: the optional loggers `run.loggers` may name, and the
check of that key. It imports nothing of lmtrain, so the config can read it.

LOGGERS is filled by backends.py's `register(cls)`, from each logger's class (its `name` and
`package`), which also puts the class in SINKS: a logger's name is written once, on its class.
The package's __init__ imports backends.py, so the table is full whenever this module is read.
"""

from __future__ import annotations

from collections.abc import Sequence

LOGGERS: dict[str, str] = {}
"""Optional loggers by config name, with the pip package (and module) each needs."""


def logger_problems(names: Sequence[str]) -> list[str]:
    """run.loggers' problems as `dotted.key: message` lines: names not in LOGGERS, repeats."""
    p = [
        f"run.loggers: {n!r} is not one of {', '.join(LOGGERS)}" for n in names if n not in LOGGERS
    ]
    if len(set(names)) != len(names):
        p.append(f"run.loggers: lists a logger twice: {list(names)}")
    return p
