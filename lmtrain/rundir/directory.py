"""RunDirectory: run.dir, owned for the duration of one `fit`: its lock, its manifest, the names
this session writes, and its checkpoints (saved as hard links of one write, then pruned).

How a session opens it (new, continue, fork, rewind) is decided in lmtrain/rundir/start.py.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from lmtrain import files
from lmtrain.checkpoint import BEST, CHECKPOINT_DIR, LAST, Checkpoint
from lmtrain.config import Config
from lmtrain.rundir import resume as resume_mod
from lmtrain.rundir.layout import (
    BOOKKEEPING,
    MANIFEST,
    RunDirectoryError,
    Warn,
    exists,
    same_file,
)
from lmtrain.rundir.lock import RunLock
from lmtrain.rundir.manifest import Manifest

_REMOVED = "warning: removed {}, an unfinished{} write from an interrupted run"


def sweep(path: Path, warn: Warn) -> None:
    """Remove what writes of dead processes left in run directory `path` (files.sweep_temps in
    the run directory, its checkpoints and its bookkeeping), saying so for each."""
    for directory, what in (
        (path, ""),
        (path / CHECKPOINT_DIR, " checkpoint"),
        (path / BOOKKEEPING, ""),
    ):
        for tmp in files.sweep_temps(directory):
            warn(_REMOVED.format(tmp, what))


class RunDirectory:
    """run.dir, owned for the duration of one `fit`: its lock, its manifest, its checkpoints."""

    def __init__(
        self, path: Path, manifest: Manifest, lock: RunLock | None, warn: Warn = print
    ) -> None:
        self.path = path
        self.manifest = manifest
        self._lock = lock
        self.warn = warn
        self.best_step: int | None = None
        """Step of the lowest validation loss of this lineage, if it is on disk."""
        self.created: list[Path] = []
        """Directories this process made, removed on close if left unused."""

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @classmethod
    def follower(cls, path: Path, run_id: str) -> RunDirectory:
        """A torchrun rank other than 0: knows the run, holds no lock, writes nothing."""
        return cls(path, Manifest(run_id=run_id, created=""), None)

    # -- housekeeping when a session opens the directory ---------------------------------------

    def discard_unsaved_run(self) -> None:
        """Remove what a run that stopped before its first checkpoint logged (it was killed, or
        failed), so that starting again gives a run whose logs hold only itself. Without this the
        directory could be neither started (its metrics.jsonl exists) nor resumed (no checkpoint).
        Only files lmtrain wrote are removed; config.yaml is rewritten by the new run."""
        removed = []
        for rel in ("metrics.jsonl", "results.json", "tb"):
            path = self.path / rel
            if not (self.manifest.owns(rel) and exists(path)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            del self.manifest.files[rel]
            removed.append(rel)
        if removed:
            self.write_manifest()
            self.warn(
                f"warning: {self.path} holds a run that stopped before its first checkpoint; "
                f"starting it again from scratch (removed its {', '.join(removed)})"
            )

    # -- what this session may write -------------------------------------------------------------

    def claim_session(self, cfg: Config) -> None:
        """Claim the names this session will write; refuse where something else holds one."""
        names = ["config.yaml", CHECKPOINT_DIR, "metrics.jsonl", "results.json"]
        if cfg.run.tensorboard:
            names.append("tb")
        foreign = [n for n in names if exists(self.path / n) and not self.manifest.owns(n)]
        if self.checkpoints.is_dir():
            foreign += [
                f"{CHECKPOINT_DIR}/{n}"
                for n in (LAST, BEST)
                if exists(self.checkpoints / n) and not self.manifest.owns(f"{CHECKPOINT_DIR}/{n}")
            ]
        if foreign:
            raise RunDirectoryError(
                f"run directory {self.path} holds {', '.join(foreign)}, which lmtrain did not "
                "write and would have to replace; nothing was changed. Move them out of the run "
                "directory, or choose another run.dir."
            )
        for n in names:
            self.manifest.files.setdefault(n, {})

    def claim(self, rel: str) -> Path:
        """The path of `rel` (relative to RUN), recorded as lmtrain's before it is written.

        For the writers of metrics.jsonl, results.json, export/: call it before the first write.
        A name that something other than lmtrain already uses is refused.
        """
        path = self.path / rel
        if self.manifest.owns(rel):
            return path
        if exists(path):
            raise RunDirectoryError(
                f"{path} exists and was not written by lmtrain; it is left untouched. Move it "
                "out of the run directory, or choose another run.dir."
            )
        self.manifest.files[rel] = {}
        self.write_manifest()
        return path

    def write_text(self, rel: str, text: str) -> None:
        """Write a small text file of the run (config.yaml) atomically."""
        files.write_text(self.claim(rel), text)

    def write_manifest(self) -> None:
        """Write the manifest atomically (only the process holding the lock writes)."""
        assert self._lock is not None, "only the process holding the lock writes"
        files.write_text(self.path / BOOKKEEPING / MANIFEST, self.manifest.to_json() + "\n")

    def rel(self, path: Path) -> str | None:
        """`path` relative to RUN, as the manifest names it; None for a path outside RUN."""
        # checkpoints/ may be a symlink to another disk: a file in it is still this run's.
        real = path.resolve()
        for base, prefix in ((self.checkpoints, CHECKPOINT_DIR), (self.path, "")):
            try:
                inside = real.relative_to(base.resolve())
            except ValueError:
                continue
            return (Path(prefix) / inside).as_posix()
        return None

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, ck: Checkpoint, best: bool, keep_last: int) -> None:
        """Write `ck` as last.pt (and the numbered copy, and best.pt when `best`), then prune.

        One write: the other names are hard links to it (resume.save_copies). A name that holds
        a file lmtrain did not write is skipped with a warning, never overwritten.
        """
        step = ck.progress.step
        names = [resume_mod.step_name(step)] if keep_last > 0 else []
        names.append(LAST)
        if best:
            names.append(BEST)
        paths: list[Path] = []
        for name in names:
            rel = f"{CHECKPOINT_DIR}/{name}"
            if exists(self.path / rel) and not self.manifest.owns(rel):
                self.warn(
                    f"warning: {self.path / rel} was not written by lmtrain; it is left untouched "
                    f"and the step-{step} checkpoint is not saved under that name"
                )
                continue
            paths.append(self.path / rel)
            self.manifest.files.setdefault(rel, {})
        if not paths:
            return
        self.checkpoints.mkdir(exist_ok=True)
        self.write_manifest()  # the names first: a crash never leaves an unlisted file
        resume_mod.save_copies(paths, ck)
        if best:
            self.best_step = step
        for p in paths:
            self.manifest.files[f"{CHECKPOINT_DIR}/{p.name}"] = {
                "step": step,
                "best_step": self.best_step,
            }
        if keep_last > 0:
            self.prune(keep_last)
        self.write_manifest()

    def _numbered(self) -> list[tuple[int, str]]:
        """The lineage's numbered checkpoints lmtrain wrote, newest first."""
        return [
            (step, f"{CHECKPOINT_DIR}/{p.name}")
            for step, p in resume_mod.numbered(self.checkpoints)
            if self.manifest.owns(f"{CHECKPOINT_DIR}/{p.name}")
        ]

    def prune(self, keep_last: int) -> None:
        """Keep the `keep_last` newest numbered checkpoints, and for each of them the checkpoint
        of its lineage's lowest validation loss (so that a rewind to any kept checkpoint finds
        its best.pt), and the branch points of rewinds."""
        numbered = self._numbered()
        keep = {rel for _, rel in numbered[:keep_last]} | set(self.manifest.pinned)
        for rel in list(keep):
            best = self.manifest.files.get(rel, {}).get("best_step")
            if best is not None:
                keep.add(f"{CHECKPOINT_DIR}/{resume_mod.step_name(best)}")
        for _, rel in numbered:
            if rel not in keep:
                (self.path / rel).unlink(missing_ok=True)
                del self.manifest.files[rel]

    def step_of(self, rel: str) -> int | None:
        """The step of checkpoint `rel`: from its name, else from the numbered checkpoint it is
        a hard link of, else from the manifest. The manifest comes last because a save whose
        final manifest write failed (a full disk) leaves it naming last.pt's previous step."""
        number = resume_mod.step_of_name(rel.rsplit("/", 1)[-1])
        if number is not None:
            return number
        path = self.path / rel
        for step, numbered in resume_mod.numbered(path.parent):
            if same_file(numbered, path):
                return step
        return self.manifest.files.get(rel, {}).get("step")

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the lock. A directory this process created and never wrote to is removed."""
        if self._lock is None:
            return
        unused = bool(self.created) and not self.manifest.existing(self.path)
        if unused:
            with contextlib.suppress(OSError):
                (self.path / BOOKKEEPING / MANIFEST).unlink(missing_ok=True)
        self._lock.release(remove=unused)
        self._lock = None
        if unused:
            for d in reversed(self.created):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty: never removes anything else
