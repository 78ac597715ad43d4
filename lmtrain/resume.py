"""Which checkpoints a run keeps, and which one `--resume auto` continues from.

Files in RUN_DIR/checkpoints:

    last.pt              the newest checkpoint, written at every evaluation and on a graceful stop
    best.pt              the checkpoint with the lowest validation loss so far
    step-00000120.pt     numbered copies of the `run.keep_last` newest saves (step number, 8 digits
                         so that names sort by step); older ones are deleted after a newer one is
                         safely on disk
    .NAME.XXXX.tmp       a write in progress; one left behind by a killed process is removed at
                         the next --resume

`--resume auto` tries last.pt, then the numbered checkpoints from newest to oldest, then best.pt,
and continues from the first one that loads, warning about each one it had to skip. If none
loads it stops with an error: a run the user asked to resume never silently starts from scratch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtrain import checkpoint as ckpt
from lmtrain.errors import CheckpointError

_STEP_FILE = re.compile(r"step-(\d+)\.pt")


def step_name(step: int) -> str:
    return f"step-{step:08d}.pt"


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


def save_copies(paths: list[Path], payload: dict[str, Any]) -> None:
    """Write `payload` to the first path and give the others the same content.

    The copies are hard links made atomically (link to a temporary name, then os.replace), so a
    numbered checkpoint, last.pt and best.pt cost one write, not three, and take no extra disk
    space. lmtrain never modifies a checkpoint in place, so the names cannot drift apart. Where
    the filesystem has no hard links, each copy is written in full.
    """
    first, *others = paths
    ckpt.save_checkpoint(first, payload)
    for path in others:
        tmp = path.with_name(f".{path.name}.link.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.link(first, tmp)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            ckpt.save_checkpoint(path, payload)
    ckpt._fsync_dir(first.parent)


def prune(directory: Path, keep_last: int) -> None:
    """Delete numbered checkpoints beyond the `keep_last` newest."""
    for _, path in numbered(directory)[keep_last:]:
        path.unlink(missing_ok=True)


def candidates(directory: Path) -> list[Path]:
    """Checkpoints to try for --resume auto, in order of preference."""
    paths = [directory / ckpt.LAST] + [p for _, p in numbered(directory)] + [directory / ckpt.BEST]
    return [p for p in paths if p.is_file()]


def remove_unfinished_writes(directory: Path, warn: Callable[[str], None]) -> None:
    """Delete temporary files a killed process left mid-save; they are never valid checkpoints."""
    if not directory.is_dir():
        return
    for tmp in sorted(directory.glob(".*.tmp")):
        tmp.unlink(missing_ok=True)
        warn(f"warning: removed {tmp}, an unfinished checkpoint write from an interrupted run")


def load_latest(run_dir: Path, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of `run_dir` that loads, skipping damaged ones with a warning."""
    directory = run_dir / ckpt.CHECKPOINT_DIR
    remove_unfinished_writes(directory, warn)
    paths = candidates(directory)
    if not paths:
        raise CheckpointError(
            f"--resume auto: no checkpoint in {directory}, so there is nothing to resume. Start "
            "without --resume to train from scratch."
        )
    skipped: list[str] = []
    for path in paths:
        try:
            payload = ckpt.load_checkpoint(path)
        except CheckpointError as e:
            skipped.append(str(e))
            warn(f"warning: --resume auto skips {path.name}: {e}")
            continue
        if skipped:
            step = payload.get("progress", {}).get("step", "?")
            warn(f"warning: --resume auto continues from {path} (step {step}) instead")
        return path, payload
    raise CheckpointError(
        f"--resume auto: none of the {len(paths)} checkpoint(s) in {directory} can be read ("
        + "; ".join(skipped)
        + "). Nothing was changed. Resume from a copy you trust with --resume PATH, or start "
        "a new run.dir."
    )
