"""What a session refuses to start from or into, before anything is changed: an export given
as a training state, a copy of a run's own checkpoint kept outside it, a directory that already
holds a run or files lmtrain did not write, and a training text edited since the run used it."""

from __future__ import annotations

import os
from pathlib import Path

from lmtrain import files
from lmtrain.checkpoint import CHECKPOINT_DIR, Checkpoint
from lmtrain.checkpoint.export_format import is_export_dir
from lmtrain.config import Config
from lmtrain.data.prepare import text_hashes
from lmtrain.errors import CheckpointError
from lmtrain.rundir import resume as resume_mod
from lmtrain.rundir.layout import BOOKKEEPING, RunDirectoryError, exists
from lmtrain.rundir.manifest import Manifest, read_any_manifest


def refuse_export(spec: Path, label: str) -> None:
    """An export (or a file of one) is weights for eval and sample, not a training state."""
    folder = spec if spec.is_dir() else spec.parent
    if is_export_dir(folder):
        raise CheckpointError(
            f"{label}: {folder} is an export written by `lmtrain export` (weights, config and "
            "vocabulary for eval and sample); it holds no optimiser state, counters or random "
            "state, so training cannot continue from it. Nothing was changed. Resume from the "
            "run's checkpoint instead (RUN/checkpoints/last.pt, or the run directory)."
        )


def refuse_own_copy(path: Path, ck: Checkpoint, target: Path, label: str) -> None:
    """A copy of one of run.dir's own checkpoints kept outside its checkpoints/ folder."""
    if not ck.run_id or not target.is_dir():
        return
    try:
        manifest = Manifest.read(target)
    except RunDirectoryError:
        return  # check_fresh reports the damaged manifest
    if manifest is None or manifest.run_id != ck.run_id:
        return
    own = target / CHECKPOINT_DIR / resume_mod.step_name(ck.progress.step)
    instead = f"--resume {own}" if own.is_file() else "--resume auto"
    raise RunDirectoryError(
        f"{label}: {path} is a copy of a checkpoint of the run in {target} (step "
        f"{ck.progress.step}) kept outside {target / CHECKPOINT_DIR}, so lmtrain cannot tell "
        f"where it stands in the run's history; nothing was changed. Resume from the run's own "
        f"file ({instead}), or fork the copy into a new run.dir: lmtrain fit CONFIG "
        f"run.dir=NEW --resume {path}"
    )


def check_fresh(target: Path, fork_source: Path | None) -> None:
    """Refuse a directory that holds a run or files lmtrain did not write; `fork_source`: the
    checkpoint a fork starts from (None for a new run)."""
    if not exists(target):
        return
    if not target.is_dir():
        what = (
            f"a symbolic link to {os.readlink(target)}, which does not exist"
            if target.is_symlink() and not target.exists()
            else "a file, not a directory"
        )
        raise RunDirectoryError(
            f"run directory {target} cannot be written (it is {what}); nothing was changed. "
            "Choose another run.dir, or create the directory the link points to."
        )
    manifest = read_any_manifest(target)
    owned = manifest.existing(target) if manifest is not None else []
    checkpoints = [rel for rel in owned if rel.endswith(".pt")]
    if checkpoints:
        if fork_source is not None:
            raise RunDirectoryError(
                f"run directory {target} already holds a different run, so the fork from "
                f"{fork_source} was refused; nothing was changed. Fork into a new or empty "
                "run.dir (e.g. run.dir=runs/NAME)."
            )
        raise RunDirectoryError(
            f"run directory {target} already holds a run; nothing was changed. Continue it "
            "with --resume auto, or choose a new run.dir (e.g. run.dir=runs/NAME)."
        )
    stale = {p.name for p in files.stale_temps(target)}  # swept under the lock
    foreign = sorted(
        p.name
        for p in target.iterdir()
        if p.name not in (BOOKKEEPING, *stale) and (manifest is None or not manifest.owns(p.name))
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise RunDirectoryError(
            f"run directory {target} holds files lmtrain did not write ({shown}); a new run "
            "needs a new or empty directory, and lmtrain never deletes what it did not write. "
            "Nothing was changed. Choose another run.dir (e.g. run.dir=runs/NAME)."
        )


def check_texts(cfg: Config, manifest: Manifest | None, label: str) -> dict[str, str]:
    """The sha256 of the run's training and validation texts (`text_hashes`), refused when one
    is not what the run's sessions so far recorded: an edited file is a `data.*` change."""
    texts = text_hashes(cfg.data)
    events = manifest.history if manifest is not None else []
    found = (e["data"] for e in reversed(events) if isinstance(e, dict) and "data" in e)
    recorded = next((d for d in found if isinstance(d, dict)), {})
    changed = [k for k in texts if k in recorded and recorded[k] != texts[k]]
    if changed:
        which = ", ".join(f"{k} ({getattr(cfg.data, k[5:])})" for k in changed)
        raise CheckpointError(
            f"{label}: {which} changed since the run was trained on it (its contents are not "
            "those the run recorded, whatever its size and date say); the vocabulary and the "
            "token stream depend on it, so the run cannot continue on it. Nothing was changed. "
            "Put back the text the run was trained on, or train on the new text as a new run "
            "(a new run.dir, without --resume)."
        )
    return texts
