"""What a run directory holds, its error, and the small path checks the rest of this package
shares. Which names lmtrain may touch is the manifest's business (manifest.py)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from lmtrain.checkpoint import CHECKPOINT_DIR
from lmtrain.errors import CheckpointError

BOOKKEEPING = ".lmtrain"
MANIFEST = "manifest.json"
LOCK = "lock"
OWNED_NAMES = (
    "config.yaml",
    CHECKPOINT_DIR,
    "tb",
    "metrics.jsonl",
    "results.json",
    "export",
    BOOKKEEPING,
)
"""The only names lmtrain ever creates at the top of a run directory."""
TREES = ("tb", "export")
"""Directories whose whole content belongs to the one part of lmtrain that writes them."""

Warn = Callable[[str], None]


class RunDirectoryError(CheckpointError):
    """A run directory that is in use, holds something else, or cannot be written."""


def now() -> str:
    """The current UTC time, as the manifest and the lock record it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def exists(path: Path) -> bool:
    """Whether `path` exists; a dangling symbolic link counts, since it still takes the name."""
    return path.exists() or path.is_symlink()


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file (a hard link counts); False when either is missing."""
    try:
        return a.samefile(b)
    except OSError:
        return False


def same_dir(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one directory, compared by path when either is missing."""
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def make_bookkeeping(target: Path) -> bool:
    """Create RUN/.lmtrain if needed; True when this call created it."""
    directory = target / BOOKKEEPING
    if directory.is_symlink():
        # The lock and the manifest would be written wherever the link points.
        raise RunDirectoryError(
            f"{directory} is a symbolic link, not lmtrain's directory; lmtrain will not write "
            "through it, and nothing was changed. Remove the link, or choose another run.dir."
        )
    if directory.is_dir():
        return False
    try:
        directory.mkdir()
    except OSError as e:
        reason = "it exists and is not lmtrain's directory" if exists(directory) else e.strerror
        raise RunDirectoryError(
            f"{directory} cannot be created ({reason}); nothing was changed. Move it away, or "
            "choose another run.dir."
        ) from None
    return True
