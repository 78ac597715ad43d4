"""How a session starts: the one place that answers "are we resuming, and from what?".

`open_directory` locks run.dir and decides: new, continue, fork (a checkpoint of another run
directory, into a new or empty one) or rewind (an older checkpoint of this run: the newer ones
are moved aside, never overwritten or deleted). On error nothing was changed. The answer, a
`Start`, is passed down to the training loop.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from lmtrain.checkpoint import CHECKPOINT_DIR, LAST, Checkpoint, check_resumable, load_checkpoint
from lmtrain.config import Config
from lmtrain.errors import CheckpointError
from lmtrain.rundir import resume as resume_mod
from lmtrain.rundir.branches import inherit_best, newer_than, rewind, undo_fork
from lmtrain.rundir.directory import RunDirectory, sweep
from lmtrain.rundir.layout import (
    BOOKKEEPING,
    LOCK,
    RunDirectoryError,
    Warn,
    exists,
    make_bookkeeping,
    now,
    same_dir,
)
from lmtrain.rundir.lock import RunLock
from lmtrain.rundir.manifest import Manifest, parent_manifest, read_any_manifest
from lmtrain.rundir.refusals import check_fresh, check_texts, refuse_export, refuse_own_copy

Kind = Literal["new", "continue", "fork", "rewind"]
T = TypeVar("T")


class Ranks(Protocol):
    """The processes of a run (lmtrain/runtime/distributed.py's contexts), as open_run uses them."""

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 and give every rank its result."""
        ...


@dataclass(frozen=True)
class Start:
    """How this session starts: the one answer to "are we resuming, and from what?"."""

    kind: Kind
    checkpoint: Checkpoint | None = None
    """The checkpoint to continue from (None for a new run)."""
    source: Path | None = None
    """The file it was read from."""
    notes: tuple[str, ...] = ()
    """Settings that changed on resume, as check_resumable describes them."""

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None


def open_directory(
    cfg: Config, resume: str | None, warn: Warn = print
) -> tuple[RunDirectory, Start]:
    """Lock run.dir and decide how this session starts; on error nothing was changed."""
    target = Path(cfg.run.dir)
    if resume is None:
        return _open_fresh(target, cfg, None, warn)
    spec = target if resume == "auto" else Path(resume)
    label = "--resume auto" if resume == "auto" else f"--resume {resume}"
    if spec.name == CHECKPOINT_DIR and spec.is_dir() and not exists(spec / BOOKKEEPING):
        spec = spec.parent  # RUN/checkpoints means the run RUN
    if resume == "auto" or (spec.is_dir() and same_dir(spec, target)):
        return _open_own(target, cfg, None, label, warn)
    refuse_export(spec, label)
    if spec.is_dir():
        source_manifest = read_any_manifest(spec)
        if source_manifest is None:
            raise CheckpointError(
                f"{label}: {spec} is not an lmtrain run directory (it holds no "
                f"{CHECKPOINT_DIR}/ written by lmtrain); nothing was changed. Give a "
                "checkpoint file or a run directory."
            )
        path, ck = _load_newest(spec, source_manifest, label, warn)
    else:
        path = spec
        ck = load_checkpoint(path)
    if _inside(path, target):
        return _open_own(target, cfg, (path, ck), label, warn)
    refuse_own_copy(path, ck, target, label)
    notes = tuple(check_resumable(cfg, ck, path))
    return _open_fresh(target, cfg, Start("fork", ck, path, notes), warn)


def _open_fresh(
    target: Path, cfg: Config, fork: Start | None, warn: Warn
) -> tuple[RunDirectory, Start]:
    """A new run, or a fork, into a directory that is new, empty or ours and unused."""
    check_fresh(target, fork.source if fork else None)
    parent = parent_manifest(fork.source) if fork and fork.source else None
    texts = check_texts(cfg, parent, f"--resume {fork.source}" if fork else "fit")
    created: list[Path] = []
    try:
        for d in (*reversed(target.parents), target):
            if not d.exists():
                d.mkdir()
                created.append(d)
    except OSError as e:
        raise RunDirectoryError(
            f"run directory {target} cannot be written ({e.strerror or e}); choose another run.dir"
        ) from None
    if make_bookkeeping(target):
        created.append(target / BOOKKEEPING)
    lock = RunLock.acquire(target / BOOKKEEPING / LOCK, target, warn)
    run = RunDirectory(target, Manifest(run_id=uuid.uuid4().hex, created=now()), lock, warn)
    run.created = created
    try:
        # Under the lock, so that no other lmtrain writes here (a pid cannot tell that of a
        # process of another host or container): what a killed one left is not the user's.
        sweep(target, warn)
        # Again, now that no other lmtrain can change it.
        check_fresh(target, fork.source if fork else None)
        previous = read_any_manifest(target)
        if previous is not None:  # a run that never saved a checkpoint: keep its files ours
            run.manifest.files = {rel: {} for rel in previous.existing(target)}
            run.discard_unsaved_run()
        start = fork or Start("new")
        if fork is not None:
            assert fork.checkpoint is not None and fork.source is not None
            run.manifest.parent = {
                "run_id": fork.checkpoint.run_id or None,
                "checkpoint": str(fork.source.resolve()),
                "step": fork.checkpoint.progress.step,
            }
            warn(
                f"fork: a new run in {target} continues from {fork.source} (step "
                f"{fork.checkpoint.progress.step}); the source is only read, never changed"
            )
            for note in fork.notes:
                warn(note)
        run.claim_session(cfg)
        run.manifest.history.append(_event(start, texts))
        run.write_manifest()
        if fork is not None:
            run.checkpoints.mkdir(exist_ok=True)
            # The fork point as the new run's last.pt: --resume auto works from the start.
            last = f"{CHECKPOINT_DIR}/{LAST}"
            run.manifest.files[last] = {"step": fork.checkpoint.progress.step}
            run.write_manifest()
            resume_mod.link_or_copy(fork.source, run.path / last)
            inherit_best(run, fork.checkpoint, fork.source, parent)
            run.manifest.files[last]["best_step"] = run.best_step
            run.write_manifest()
    except BaseException:
        if fork is not None:
            undo_fork(run)
        run.close()
        raise
    return run, start


def _open_own(
    target: Path,
    cfg: Config,
    given: tuple[Path, Checkpoint] | None,
    label: str,
    warn: Warn,
) -> tuple[RunDirectory, Start]:
    """Continue (or rewind) the run in `target` itself."""
    if not target.is_dir() or read_any_manifest(target) is None:
        raise CheckpointError(
            f"{label}: no checkpoint in {target / CHECKPOINT_DIR}, so there is nothing "
            "to resume. Start without --resume to train from scratch."
        )
    make_bookkeeping(target)
    lock = RunLock.acquire(target / BOOKKEEPING / LOCK, target, warn)
    try:
        manifest = read_any_manifest(target)  # again, under the lock
        if manifest is None:
            raise CheckpointError(f"{label}: no checkpoint in {target / CHECKPOINT_DIR}")
        run = RunDirectory(target, manifest, lock, warn)
    except BaseException:
        lock.release()
        raise
    try:
        if not manifest.run_id:  # adopted from the layout of an older lmtrain
            manifest.run_id = uuid.uuid4().hex
            manifest.created = now()
        if given is None:
            path, ck = _load_newest(target, manifest, label, warn)
        else:
            path, ck = given
            rel = run.rel(path)
            if rel is None or not manifest.owns(rel):
                raise CheckpointError(
                    f"{label}: {path} was not written by lmtrain for the run in {target} "
                    "(its manifest does not list it); lmtrain will not continue this run "
                    "from it. Fork it into a new run.dir instead: lmtrain fit CONFIG "
                    f"run.dir=NEW --resume {path}"
                )
            if path.resolve().parent != run.checkpoints.resolve():
                raise CheckpointError(
                    f"{label}: {path} belongs to a branch of this run abandoned by a rewind; "
                    "to continue it, fork it into a new run.dir: lmtrain fit CONFIG "
                    f"run.dir=NEW --resume {path}"
                )
        notes = tuple(check_resumable(cfg, ck, path))
        texts = check_texts(cfg, manifest, label)
        step = ck.progress.step
        newer = newer_than(run, step, path)
        start = Start("rewind" if newer else "continue", ck, path, notes)
        for note in notes:
            warn(note)
        run.claim_session(cfg)
        sweep(run.path, run.warn)  # under the lock: no other lmtrain writes here now
        entry = manifest.files.get(run.rel(path) or "", {})
        run.best_step = entry.get("best_step")
        if newer:
            rewind(run, path, ck, newer)
        if cfg.run.keep_last > 0:
            # A lower run.keep_last applies now, not after the next save: on a full disk that
            # save would fail before the prune that makes room for it.
            run.prune(cfg.run.keep_last)
        manifest.history.append(_event(start, texts))
        run.write_manifest()
    except BaseException:
        run.close()
        raise
    return run, start


def _event(start: Start, texts: dict[str, str]) -> dict[str, Any]:
    event: dict[str, Any] = {"event": start.kind, "time": now(), "pid": os.getpid()}
    if start.checkpoint is not None:
        event["step"] = start.checkpoint.progress.step
        event["source"] = str(start.source)
    event["data"] = texts
    return event


def _inside(path: Path, run_path: Path) -> bool:
    """Whether checkpoint `path` lies in `run_path`'s checkpoints folder (or one below it)."""
    try:
        path.resolve().relative_to((run_path / CHECKPOINT_DIR).resolve())
    except ValueError:
        return False
    return True


def _load_newest(
    run_path: Path, manifest: Manifest, label: str, warn: Warn
) -> tuple[Path, Checkpoint]:
    """The newest checkpoint of `run_path` lmtrain wrote that loads; damaged ones are skipped
    with a warning, never deleted. Reads only."""
    directory = run_path / CHECKPOINT_DIR
    paths = [
        p for p in resume_mod.candidates(directory) if manifest.owns(f"{CHECKPOINT_DIR}/{p.name}")
    ]
    if not paths:
        raise CheckpointError(
            f"{label}: no checkpoint in {directory}, so there is nothing to resume. Start "
            "without --resume to train from scratch."
        )
    skipped: list[str] = []
    for path in paths:
        try:
            ck = load_checkpoint(path)
        except CheckpointError as e:
            skipped.append(str(e))
            warn(f"warning: {label} skips {path.name}: {e}")
            continue
        if skipped:
            warn(f"warning: {label} continues from {path} (step {ck.progress.step}) instead")
        return path, ck
    raise CheckpointError(
        f"{label}: none of the {len(paths)} checkpoint(s) in {directory} can be read ("
        + "; ".join(skipped)
        + "). Nothing was changed. Resume from a copy you trust with --resume PATH, or start "
        "a new run.dir."
    )


@contextlib.contextmanager
def open_run(
    cfg: Config, resume: str | None, warn: Warn, ctx: Ranks | None = None
) -> Iterator[tuple[RunDirectory, Start]]:
    """open_directory for the life of a `with` block. Under torchrun (ctx) rank 0 opens and
    decides, and the other ranks receive the decision and a RunDirectory that writes nothing."""
    if ctx is None:
        run, start = open_directory(cfg, resume, warn)
    else:
        opened: list[RunDirectory] = []

        def on_main() -> tuple[Path, str, Start]:
            run, start = open_directory(cfg, resume, warn)
            opened.append(run)
            return run.path, run.run_id, start

        path, run_id, start = ctx.on_main(on_main)
        run = opened[0] if opened else RunDirectory.follower(path, run_id)
    try:
        yield run, start
    finally:
        run.close()
