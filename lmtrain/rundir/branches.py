"""How a run's lineage branches on disk: a rewind moves the checkpoints it abandons aside
(never overwriting or deleting them), and a fork inherits its parent's best checkpoint."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from lmtrain.checkpoint import BEST, CHECKPOINT_DIR, LAST, Checkpoint
from lmtrain.rundir import resume as resume_mod
from lmtrain.rundir.directory import RunDirectory
from lmtrain.rundir.layout import exists, now, same_file
from lmtrain.rundir.manifest import Manifest


def newer_than(run: RunDirectory, step: int, source: Path) -> list[str]:
    """The lineage's checkpoints from after `step`: what a rewind to `step` abandons."""
    newer = []
    for p in resume_mod.candidates(run.checkpoints):
        rel = f"{CHECKPOINT_DIR}/{p.name}"
        known = run.step_of(rel)
        owned = run.manifest.owns(rel)
        if owned and known is not None and known > step and not p.samefile(source):
            newer.append(rel)
    return newer


def rewind(run: RunDirectory, source: Path, ck: Checkpoint, newer: list[str]) -> None:
    """Move the abandoned branch aside; make the source the lineage's head again."""
    step = ck.progress.step
    head = max(run.step_of(rel) or step for rel in newer)
    name = f"abandoned-{step:08d}-{head:08d}"
    aside, n = run.checkpoints / name, 1
    while exists(aside):
        n += 1
        aside = run.checkpoints / f"{name}-{n}"
    moved = {rel: f"{CHECKPOINT_DIR}/{aside.name}/{rel.rsplit('/', 1)[1]}" for rel in newer}
    source_rel = run.rel(source)
    assert source_rel is not None
    last_rel = f"{CHECKPOINT_DIR}/{LAST}"
    best_rel = f"{CHECKPOINT_DIR}/{BEST}"
    # Listed before anything moves, so that a crash midway leaves only files lmtrain knows.
    run.manifest.files[f"{CHECKPOINT_DIR}/{aside.name}"] = {}
    for old, new in moved.items():
        run.manifest.files[new] = dict(run.manifest.files[old])
    # The branch point is kept for good under its numbered name (last.pt and best.pt move
    # on); a pin whose file moves aside is dropped, or it would hold on to whatever the new
    # branch later writes under that name.
    numbered = f"{CHECKPOINT_DIR}/{resume_mod.step_name(step)}"
    pin = source_rel
    if run.manifest.owns(numbered) and same_file(run.path / numbered, source):
        pin = numbered
    run.manifest.pinned = [p for p in run.manifest.pinned if p not in moved]
    if pin not in run.manifest.pinned:
        run.manifest.pinned.append(pin)
    run.write_manifest()
    aside.mkdir()
    for old, new in moved.items():
        os.replace(run.path / old, run.path / new)
        del run.manifest.files[old]
    if last_rel in moved or not exists(run.path / last_rel):
        # --resume auto must find the new branch, even before its first save.
        run.manifest.files[last_rel] = dict(run.manifest.files.get(source_rel, {}), step=step)
        run.write_manifest()
        resume_mod.link_or_copy(run.path / source_rel, run.path / last_rel)
    best_note = ""
    if best_rel in moved:
        best = lineage_best(run, ck)
        if best is not None:
            run.manifest.files[best_rel] = {
                "step": run.best_step,
                "best_step": run.best_step,
            }
            run.write_manifest()
            resume_mod.link_or_copy(run.path / best, run.path / best_rel)
        else:
            best_note = (
                "; this lineage's best checkpoint is no longer on disk, so best.pt will be "
                f"written at the first evaluation below {ck.progress.best_val_loss:.4f}"
            )
    run.manifest.history.append(
        {"event": "moved aside", "files": sorted(moved.values()), "time": now()}
    )
    run.warn(
        f"rewind to step {step}: {len(moved)} checkpoint(s) of the abandoned branch (up to "
        f"step {head}) were moved to {aside}, unchanged{best_note}"
    )


def lineage_best(run: RunDirectory, ck: Checkpoint) -> str | None:
    """The file of this lineage's lowest validation loss, among the kept checkpoints."""
    if run.best_step is None or not math.isfinite(ck.progress.best_val_loss):
        return None
    rel = f"{CHECKPOINT_DIR}/{resume_mod.step_name(run.best_step)}"
    return rel if run.manifest.owns(rel) and (run.path / rel).is_file() else None


def inherit_best(
    run: RunDirectory, checkpoint: Checkpoint, source: Path, parent: Manifest | None
) -> None:
    """A fork's best.pt: the parent lineage's best as of the fork point (`checkpoint`, read from
    `source`), copied in."""
    p = checkpoint.progress
    if not math.isfinite(p.best_val_loss):
        return
    found: Path | None = None
    best_step = None
    if p.last_val_loss == p.best_val_loss and p.last_eval_step == p.step:
        found, best_step = source, p.step
    elif parent is not None:
        src_rel = Path(source.parent.name, source.name).as_posix()
        best_step = parent.files.get(src_rel, {}).get("best_step")
        root = source.parent.parent
        for rel, entry in parent.files.items():
            if (
                best_step is not None
                and entry.get("step") == best_step
                and rel.endswith(".pt")
                and (root / rel).is_file()
            ):
                found = root / rel
                break
    if found is None:
        run.warn(
            "fork: the parent's best checkpoint as of the fork point was not found; best.pt "
            f"will be written at the first evaluation below {p.best_val_loss:.4f}"
        )
        return
    rel = f"{CHECKPOINT_DIR}/{BEST}"
    run.manifest.files[rel] = {"step": best_step, "best_step": best_step}
    run.write_manifest()
    if same_file(found, source):
        # The fork point itself: a link to the new last.pt, not a second copy of the file
        # (which the parent's disk could share with last.pt but another disk cannot).
        found = run.checkpoints / LAST
    resume_mod.link_or_copy(found, run.path / rel)
    run.best_step = best_step


def undo_fork(run: RunDirectory) -> None:
    """A fork that failed half-way (a full disk, say) leaves no half-made run behind, which
    would refuse the retry: its checkpoints are only links or copies of the parent's."""
    for name in (LAST, BEST):
        rel = f"{CHECKPOINT_DIR}/{name}"
        if rel in run.manifest.files:
            with contextlib.suppress(OSError):
                (run.path / rel).unlink(missing_ok=True)
            del run.manifest.files[rel]
    with contextlib.suppress(OSError):
        run.checkpoints.rmdir()  # only if empty
        del run.manifest.files[CHECKPOINT_DIR]
