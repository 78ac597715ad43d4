"""The checkpoints folder: names, listing and linking. Which files a run may touch is the
manifest's business (manifest.py); which checkpoint a resume starts from is decided in start.py.

Files in RUN_DIR/checkpoints:

    last.pt              the newest checkpoint, written at every evaluation and on a graceful stop
    best.pt              the checkpoint with the lowest validation loss of this lineage
    step-00000120.pt     numbered copies of the `run.keep_last` newest saves (step number, 8 digits
                         so that names sort by step), plus the checkpoints best.pt would be after a
                         rewind to one of them, and the branch points of rewinds; older ones are
                         deleted after a newer one is safely on disk
    abandoned-S-E/       the checkpoints a rewind to step S gave up (up to step E), unchanged
    .NAME.PID.XXXX.tmp   a write in progress (files.atomic_write); one left behind by a killed
                         process is removed when lmtrain next opens the run

`--resume auto` tries last.pt, then the numbered checkpoints from newest to oldest, then best.pt,
and continues from the first one that loads, warning about each one it had to skip. If none
loads it stops with an error: a run the user asked to resume never silently starts from scratch.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lmtrain import checkpoint as ckpt
from lmtrain import files
from lmtrain.checkpoint import Checkpoint
from lmtrain.errors import CheckpointError

_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def step_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def step_of_name(name: str) -> int | None:
    """The step in a numbered checkpoint's name; None for any other name."""
    m = _STEP_FILE.fullmatch(name)
    return int(m.group(1)) if m else None


def numbered(directory: Path) -> list[tuple[int, Path]]:
    """Numbered checkpoints in `directory`, newest (highest step) first."""
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _STEP_FILE.fullmatch(p.name)) and p.is_file()
    ]
    return sorted(found, reverse=True)


def save_copies(paths: list[Path], ck: Checkpoint) -> None:
    """Write `ck` to the first path and give the others the same content.

    The copies are hard links made atomically (files.replace_with_link), so a numbered
    checkpoint, last.pt and best.pt cost one write, not three, and take no extra disk space.
    lmtrain never modifies a checkpoint in place, so the names cannot drift apart. Where the
    filesystem has no hard links, each copy is written in full.
    """
    first, *others = paths
    ckpt.save_checkpoint(first, ck)
    for path in others:
        if not files.replace_with_link(first, path):
            ckpt.save_checkpoint(path, ck)


def link_or_copy(source: Path, path: Path) -> None:
    """Give `path` the content of checkpoint `source` atomically: a hard link, else a copy."""
    if files.replace_with_link(source, path):
        return
    try:
        with files.open_regular(source) as f, files.atomic_write(path) as out:
            shutil.copyfileobj(f, out, 1 << 20)
    except OSError as e:
        raise CheckpointError(
            f"{path}: could not copy {source} there ({e.strerror or e}); nothing else was "
            "changed. Free some disk space or choose another run.dir."
        ) from None


def candidates(directory: Path) -> list[Path]:
    """Checkpoints to try for --resume auto, in order of preference."""
    paths = [directory / ckpt.LAST] + [p for _, p in numbered(directory)] + [directory / ckpt.BEST]
    return [p for p in paths if p.is_file()]
