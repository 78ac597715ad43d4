"""The run directory: one object owns `run.dir` for the whole run.

    RUN/
      config.yaml                the resolved config of the newest session
      checkpoints/               last.pt, best.pt, step-NNNNNNNN.pt (see resume.py)
        abandoned-S-E/           a branch given up by a rewind: its checkpoints after step S, to E
      tb/                        TensorBoard events
      metrics.jsonl, results.json, export/
      .lmtrain/lock              held by the process that trains in RUN; names its pid
      .lmtrain/manifest.json     the run's id, its parent (for a fork), every file lmtrain wrote

Rules, each enforced here and nowhere else:

- One process at a time. The lock (flock) is held from the start of `fit` to its end; a second
  `fit` on the same directory stops with exit 2 naming the holder's pid before touching anything.
  A lock left by a process that died is taken over, with a warning.
- lmtrain reads as its own, overwrites, prunes and deletes only files its manifest lists. Names
  are added to the manifest *before* the file is written, so a crash never leaves a file lmtrain
  wrote that it does not know about. A new run refuses a directory holding anything else.
- Resume is decided once, by `RunDirectory.open`: new, continue, fork (a checkpoint of another
  run directory, into a new or empty one) or rewind (an older checkpoint of this run: the newer
  ones are moved aside, never overwritten or deleted).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import re
import shutil
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmtrain import checkpoint as ckpt
from lmtrain import export, files
from lmtrain.checkpoint import Checkpoint
from lmtrain.config import Config
from lmtrain.errors import CheckpointError
from lmtrain.rundir import resume as resume_mod
from lmtrain.runtime.distributed import DistContext

BOOKKEEPING = ".lmtrain"
MANIFEST = "manifest.json"
LOCK = "lock"
MANIFEST_FORMAT = "lmtrain-run"
MANIFEST_VERSION = 1
OWNED_NAMES = (
    "config.yaml",
    ckpt.CHECKPOINT_DIR,
    "tb",
    "metrics.jsonl",
    "results.json",
    "export",
    BOOKKEEPING,
)
"""The only names lmtrain ever creates at the top of a run directory."""
TREES = ("tb", "export")
"""Directories whose whole content belongs to the one part of lmtrain that writes them."""

Kind = Literal["new", "continue", "fork", "rewind"]
Warn = Callable[[str], None]


class RunDirectoryError(CheckpointError):
    """A run directory that is in use, holds something else, or cannot be written."""


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


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Manifest


@dataclass
class Manifest:
    """What .lmtrain/manifest.json holds. `files` maps a path relative to RUN to what is known
    about it: checkpoints record their `step` and `best_step` (the step of the lowest validation
    loss of their lineage when they were written)."""

    run_id: str
    created: str
    parent: dict[str, Any] | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)
    """Checkpoints never pruned: the branch points of rewinds."""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "version": MANIFEST_VERSION,
                "run_id": self.run_id,
                "created": self.created,
                "parent": self.parent,
                "files": dict(sorted(self.files.items())),
                "pinned": sorted(self.pinned),
                "history": self.history,
            },
            indent=1,
        )

    @classmethod
    def read(cls, run_path: Path) -> Manifest | None:
        """The manifest of `run_path`; None where there is none."""
        path = run_path / BOOKKEEPING / MANIFEST
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls._from_json(raw)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RunDirectoryError(
                f"{path} is damaged ({e}); without it lmtrain cannot tell which files in "
                f"{run_path} it wrote, so it changes nothing there. Restore the file, or fork the "
                f"run into a new directory: lmtrain fit CONFIG run.dir=NEW --resume "
                f"{run_path / ckpt.CHECKPOINT_DIR / ckpt.LAST}"
            ) from None

    @classmethod
    def _from_json(cls, raw: Any) -> Manifest:
        """Check every field's type: the manifest decides what lmtrain may move and delete, so
        a hand-edited value of the wrong kind must stop the run here, not as a traceback later
        or, worse, by pointing lmtrain at a file outside the run."""
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise ValueError("not an lmtrain run manifest")
        version = raw.get("version")
        if type(version) is not int:
            raise ValueError(f"'version' should be a whole number, not {version!r}")
        if version > MANIFEST_VERSION:
            raise ValueError(f"written by a newer lmtrain (version {version})")
        problems: list[str] = []
        for key, kinds, name in (
            ("run_id", (str,), "a string"),
            ("created", (str,), "a string"),
            ("parent", (dict, type(None)), "an object or null"),
            ("files", (dict,), "an object"),
            ("pinned", (list,), "a list"),
            ("history", (list,), "a list"),
        ):
            if key not in raw:
                problems.append(f"'{key}' is missing")
            elif not isinstance(raw[key], kinds):
                problems.append(f"'{key}' should be {name}, not {raw[key]!r:.60}")
        if problems:
            raise ValueError("; ".join(problems))
        for rel, entry in raw["files"].items():
            if not _safe_rel(rel):
                problems.append(f"files: {rel!r} is not a path inside the run directory")
            elif not isinstance(entry, dict):
                problems.append(f"files[{rel!r}] should be an object, not {entry!r:.60}")
            else:
                problems += [
                    f"files[{rel!r}].{k} should be a whole number >= 0 or null, not {v!r:.60}"
                    for k, v in entry.items()
                    if k in ("step", "best_step")
                    and v is not None
                    and (type(v) is not int or v < 0)
                ]
        problems += [
            f"pinned: {p!r} is not a path inside the run directory"
            for p in raw["pinned"]
            if not _safe_rel(p)
        ]
        if problems:
            raise ValueError("; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
        return cls(
            run_id=raw["run_id"],
            created=raw["created"],
            parent=raw["parent"],
            files={k: dict(v) for k, v in raw["files"].items()},
            pinned=list(raw["pinned"]),
            history=list(raw["history"]),
        )

    def owns(self, rel: str) -> bool:
        top = rel.split("/", 1)[0]
        return rel in self.files or (top in TREES and top in self.files)

    def existing(self, run_path: Path) -> list[str]:
        return [rel for rel in self.files if _exists(run_path / rel)]


def _safe_rel(rel: Any) -> bool:
    """A relative path that stays inside the run directory ("a/b", never "/x" or "../x")."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _legacy_manifest(run_path: Path) -> Manifest | None:
    """A manifest for a run directory written before lmtrain kept one, built from its layout.

    Only names lmtrain gives its files are adopted; anything else stays foreign.
    """
    directory = run_path / ckpt.CHECKPOINT_DIR
    names = [p.name for p in resume_mod.candidates(directory)]
    if not names:
        return None
    m = Manifest(run_id="", created="")
    for name in names:
        number = resume_mod.step_of_name(name)
        m.files[f"{ckpt.CHECKPOINT_DIR}/{name}"] = {} if number is None else {"step": number}
    m.files[ckpt.CHECKPOINT_DIR] = {}
    if (run_path / "config.yaml").is_file():
        m.files["config.yaml"] = {}
    for name in ("tb", "metrics.jsonl", "results.json"):
        if _exists(run_path / name):
            m.files[name] = {}
    return m


def _read_any_manifest(run_path: Path) -> Manifest | None:
    return Manifest.read(run_path) or _legacy_manifest(run_path)


# ---------------------------------------------------------------------------------------------
# Lock


class _Lock:
    """An exclusive lock on RUN/.lmtrain/lock for the life of the run.

    flock: the kernel drops it when the process dies, however it dies, so a lock is never stale
    in practice; the file's content (pid, host, time) is only there to name the holder. A file
    that still names a holder when the lock is free belonged to a process that died.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path, run_path: Path, warn: Warn) -> _Lock:
        for _ in range(5):
            try:
                # O_NOFOLLOW: the lock file is truncated and rewritten, so a symlink planted in
                # its place must not make lmtrain write into the file it points to.
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP or path.is_symlink():
                    raise RunDirectoryError(
                        f"{path} is a symbolic link, not lmtrain's lock file; lmtrain will not "
                        f"write through it, and nothing was changed. Remove the link (it is "
                        f"not lmtrain's), or choose another run.dir."
                    ) from None
                raise RunDirectoryError(
                    f"run directory {run_path} cannot be written ({e.strerror or e}: {path}); "
                    "nothing was changed. Choose another run.dir, or fix its permissions."
                ) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise RunDirectoryError(
                    f"{path} is not a regular file, so it cannot be lmtrain's lock file; nothing "
                    "was changed. Remove it, or choose another run.dir."
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(_read_fd(fd))
                os.close(fd)
                raise RunDirectoryError(
                    f"run directory {run_path} is in use by {holder}; two processes must not "
                    "train in one run directory. Nothing was changed. Wait for that process to "
                    "finish (or stop it), or choose another run.dir."
                ) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                # No flock on this filesystem: fall back to the pid the file names.
                previous = _parse_holder(_read_fd(fd))
                if previous is not None and _alive(previous):
                    os.close(fd)
                    raise RunDirectoryError(
                        f"run directory {run_path} is in use by {_describe_holder(previous)}; "
                        "two processes must not train in one run directory. Nothing was "
                        "changed. Wait for that process to finish, or choose another run.dir."
                    ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file while we waited: retry
                os.close(fd)
                continue
            previous = _parse_holder(_read_fd(fd))
            if previous is not None:
                warn(
                    f"warning: run directory {run_path} was locked by "
                    f"{_describe_holder(previous)}, which is no longer running (it was killed or "
                    "crashed); taking it over"
                )
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            return cls(path, fd)
        raise RunDirectoryError(f"could not lock {path}: it keeps being replaced; try again")

    def release(self, remove: bool = False) -> None:
        with contextlib.suppress(OSError):
            if remove:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)  # empty = released cleanly
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return ""


def _parse_holder(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _describe_holder(holder: dict[str, Any] | str | None) -> str:
    if isinstance(holder, str):
        holder = _parse_holder(holder)
    if holder is None:
        return "another process"
    return (
        f"process {holder.get('pid')} on host {holder.get('host', '?')} (since "
        f"{holder.get('since', '?')})"
    )


def _alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Atomic small writes


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically; on any failure the old file is intact and no
    temporary file is left. A full disk is a RunDirectoryError (exit 2)."""
    try:
        files.replace_text(path, text)
    except OSError as e:
        raise _write_failed(path, e) from None


def _write_failed(path: Path, e: OSError) -> RunDirectoryError:
    return RunDirectoryError(
        f"{path}: could not be written ({e.strerror or e}); the previous version, if any, is "
        "unchanged and no partial file was left. Free some disk space or choose another run.dir."
    )


def _unfinished_writes(directory: Path, owned: Callable[[str], bool]) -> list[Path]:
    """Temporary files of interrupted writes to names lmtrain owns in `directory`."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", p.name)
        if m and p.is_file() and owned(m.group(1)):
            found.append(p)
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# The run directory


class RunDirectory:
    """run.dir, owned for the duration of one `fit`: its lock, its manifest, its checkpoints."""

    def __init__(
        self, path: Path, manifest: Manifest, lock: _Lock | None, warn: Warn = print
    ) -> None:
        self.path = path
        self.manifest = manifest
        self._lock = lock
        self.warn = warn
        self.best_step: int | None = None
        """Step of the lowest validation loss of this lineage, if it is on disk."""
        self._created: list[Path] = []  # directories this process made, removed if left unused

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def checkpoints(self) -> Path:
        return self.path / ckpt.CHECKPOINT_DIR

    @classmethod
    def follower(cls, path: Path, run_id: str) -> RunDirectory:
        """A torchrun rank other than 0: knows the run, holds no lock, writes nothing."""
        return cls(path, Manifest(run_id=run_id, created=""), None)

    # -- opening: the one place where resume is decided ----------------------------------------

    @classmethod
    def open(
        cls, cfg: Config, resume: str | None, warn: Warn = print
    ) -> tuple[RunDirectory, Start]:
        """Lock run.dir and decide how this session starts; on error nothing was changed."""
        target = Path(cfg.run.dir)
        if resume is None:
            return cls._open_fresh(target, cfg, None, warn)
        spec = target if resume == "auto" else Path(resume)
        label = "--resume auto" if resume == "auto" else f"--resume {resume}"
        if spec.name == ckpt.CHECKPOINT_DIR and spec.is_dir() and not _exists(spec / BOOKKEEPING):
            spec = spec.parent  # RUN/checkpoints means the run RUN
        if resume == "auto" or (spec.is_dir() and _same_dir(spec, target)):
            return cls._open_own(target, cfg, None, label, warn)
        _refuse_export(spec, label)
        if spec.is_dir():
            source_manifest = _read_any_manifest(spec)
            if source_manifest is None:
                raise CheckpointError(
                    f"{label}: {spec} is not an lmtrain run directory (it holds no "
                    f"{ckpt.CHECKPOINT_DIR}/ written by lmtrain); nothing was changed. Give a "
                    "checkpoint file or a run directory."
                )
            path, ck = _load_newest(spec, source_manifest, label, warn)
        else:
            path = spec
            ck = ckpt.load_checkpoint(path)
        if _inside(path, target):
            return cls._open_own(target, cfg, (path, ck), label, warn)
        _refuse_own_copy(path, ck, target, label)
        notes = tuple(ckpt.check_resumable(cfg, ck, path))
        return cls._open_fresh(target, cfg, Start("fork", ck, path, notes), warn)

    @classmethod
    def _open_fresh(
        cls, target: Path, cfg: Config, fork: Start | None, warn: Warn
    ) -> tuple[RunDirectory, Start]:
        """A new run, or a fork, into a directory that is new, empty or ours and unused."""
        _check_fresh(target, fork)
        created: list[Path] = []
        try:
            for d in (*reversed(target.parents), target):
                if not d.exists():
                    d.mkdir()
                    created.append(d)
        except OSError as e:
            raise RunDirectoryError(
                f"run directory {target} cannot be written ({e.strerror or e}); choose another "
                "run.dir"
            ) from None
        if _make_bookkeeping(target):
            created.append(target / BOOKKEEPING)
        lock = _Lock.acquire(target / BOOKKEEPING / LOCK, target, warn)
        run = cls(target, Manifest(run_id=uuid.uuid4().hex, created=_now()), lock, warn)
        run._created = created
        try:
            _check_fresh(target, fork)  # again, now that no other lmtrain can change it
            previous = _read_any_manifest(target)
            if previous is not None:  # a run that never saved a checkpoint: keep its files ours
                run.manifest.files = {rel: {} for rel in previous.existing(target)}
                run._discard_unsaved_run()
            start = fork or Start("new")
            if fork is not None:
                assert fork.checkpoint is not None and fork.source is not None
                parent = _parent_manifest(fork.source)
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
            run._claim_session_names(cfg)
            run.manifest.history.append(run._event(start))
            run._write_manifest()
            if fork is not None:
                run.checkpoints.mkdir(exist_ok=True)
                # The fork point as the new run's last.pt: --resume auto works from the start.
                last = f"{ckpt.CHECKPOINT_DIR}/{ckpt.LAST}"
                run.manifest.files[last] = {"step": fork.checkpoint.progress.step}
                run._write_manifest()
                resume_mod.link_or_copy(fork.source, run.path / last)
                run._inherit_best(fork, parent)
                run.manifest.files[last]["best_step"] = run.best_step
                run._write_manifest()
        except BaseException:
            if fork is not None:
                run._undo_fork()
            run.close()
            raise
        return run, start

    def _undo_fork(self) -> None:
        """A fork that failed half-way (a full disk, say) leaves no half-made run behind, which
        would refuse the retry: its checkpoints are only links or copies of the parent's."""
        for name in (ckpt.LAST, ckpt.BEST):
            rel = f"{ckpt.CHECKPOINT_DIR}/{name}"
            if rel in self.manifest.files:
                with contextlib.suppress(OSError):
                    (self.path / rel).unlink(missing_ok=True)
                del self.manifest.files[rel]
        with contextlib.suppress(OSError):
            self.checkpoints.rmdir()  # only if empty
            del self.manifest.files[ckpt.CHECKPOINT_DIR]

    @classmethod
    def _open_own(
        cls,
        target: Path,
        cfg: Config,
        given: tuple[Path, Checkpoint] | None,
        label: str,
        warn: Warn,
    ) -> tuple[RunDirectory, Start]:
        """Continue (or rewind) the run in `target` itself."""
        if not target.is_dir() or _read_any_manifest(target) is None:
            raise CheckpointError(
                f"{label}: no checkpoint in {target / ckpt.CHECKPOINT_DIR}, so there is nothing "
                "to resume. Start without --resume to train from scratch."
            )
        _make_bookkeeping(target)
        lock = _Lock.acquire(target / BOOKKEEPING / LOCK, target, warn)
        try:
            manifest = _read_any_manifest(target)  # again, under the lock
            if manifest is None:
                raise CheckpointError(f"{label}: no checkpoint in {target / ckpt.CHECKPOINT_DIR}")
            run = cls(target, manifest, lock, warn)
        except BaseException:
            lock.release()
            raise
        try:
            if not manifest.run_id:  # adopted from the layout of an older lmtrain
                manifest.run_id = uuid.uuid4().hex
                manifest.created = _now()
            if given is None:
                path, ck = _load_newest(target, manifest, label, warn)
            else:
                path, ck = given
                rel = run._rel(path)
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
            notes = tuple(ckpt.check_resumable(cfg, ck, path))
            step = ck.progress.step
            newer = run._newer_than(step, path)
            start = Start("rewind" if newer else "continue", ck, path, notes)
            for note in notes:
                warn(note)
            run._claim_session_names(cfg)
            run._remove_unfinished_writes()
            entry = manifest.files.get(run._rel(path) or "", {})
            run.best_step = entry.get("best_step")
            if newer:
                run._rewind(path, ck, newer)
            if cfg.run.keep_last > 0:
                # A lower run.keep_last applies now, not after the next save: on a full disk that
                # save would fail before the prune that makes room for it.
                run._prune(cfg.run.keep_last)
            manifest.history.append(run._event(start))
            run._write_manifest()
        except BaseException:
            run.close()
            raise
        return run, start

    def _discard_unsaved_run(self) -> None:
        """Remove what a run that stopped before its first checkpoint logged (it was killed, or
        failed), so that starting again gives a run whose logs hold only itself. Without this the
        directory could be neither started (its metrics.jsonl exists) nor resumed (no checkpoint).
        Only files lmtrain wrote are removed; config.yaml is rewritten by the new run."""
        removed = []
        for rel in ("metrics.jsonl", "results.json", "tb"):
            path = self.path / rel
            if not (self.manifest.owns(rel) and _exists(path)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            del self.manifest.files[rel]
            removed.append(rel)
        if removed:
            self._write_manifest()
            self.warn(
                f"warning: {self.path} holds a run that stopped before its first checkpoint; "
                f"starting it again from scratch (removed its {', '.join(removed)})"
            )

    def _remove_unfinished_writes(self) -> None:
        """Delete the temporary files a killed process left mid-write to one of lmtrain's names
        (only under the lock: a running process's write in progress is never touched)."""
        ours = self.manifest.owns
        for tmp in _unfinished_writes(
            self.checkpoints, lambda n: ours(f"{ckpt.CHECKPOINT_DIR}/{n}")
        ):
            tmp.unlink(missing_ok=True)
            self.warn(
                f"warning: removed {tmp}, an unfinished checkpoint write from an interrupted run"
            )
        for tmp in _unfinished_writes(self.path, ours) + _unfinished_writes(
            self.path / BOOKKEEPING, lambda n: n == MANIFEST
        ):
            tmp.unlink(missing_ok=True)
            self.warn(f"warning: removed {tmp}, an unfinished write from an interrupted run")

    # -- what this session may write -------------------------------------------------------------

    def _claim_session_names(self, cfg: Config) -> None:
        """Claim the names this session will write; refuse where something else holds one."""
        names = ["config.yaml", ckpt.CHECKPOINT_DIR, "metrics.jsonl", "results.json"]
        if cfg.run.tensorboard:
            names.append("tb")
        foreign = [n for n in names if _exists(self.path / n) and not self.manifest.owns(n)]
        if self.checkpoints.is_dir():
            foreign += [
                f"{ckpt.CHECKPOINT_DIR}/{n}"
                for n in (ckpt.LAST, ckpt.BEST)
                if _exists(self.checkpoints / n)
                and not self.manifest.owns(f"{ckpt.CHECKPOINT_DIR}/{n}")
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
        if _exists(path):
            raise RunDirectoryError(
                f"{path} exists and was not written by lmtrain; it is left untouched. Move it "
                "out of the run directory, or choose another run.dir."
            )
        self.manifest.files[rel] = {}
        self._write_manifest()
        return path

    def write_text(self, rel: str, text: str) -> None:
        """Write a small text file of the run (config.yaml) atomically."""
        write_text_atomic(self.claim(rel), text)

    def _write_manifest(self) -> None:
        assert self._lock is not None, "only the process holding the lock writes"
        write_text_atomic(self.path / BOOKKEEPING / MANIFEST, self.manifest.to_json() + "\n")

    def _rel(self, path: Path) -> str | None:
        # checkpoints/ may be a symlink to another disk: a file in it is still this run's.
        real = path.resolve()
        for base, prefix in ((self.checkpoints, ckpt.CHECKPOINT_DIR), (self.path, "")):
            try:
                inside = real.relative_to(base.resolve())
            except ValueError:
                continue
            return (Path(prefix) / inside).as_posix()
        return None

    def _event(self, start: Start) -> dict[str, Any]:
        event: dict[str, Any] = {"event": start.kind, "time": _now(), "pid": os.getpid()}
        if start.checkpoint is not None:
            event["step"] = start.checkpoint.progress.step
            event["source"] = str(start.source)
        return event

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, ck: Checkpoint, best: bool, keep_last: int) -> None:
        """Write `ck` as last.pt (and the numbered copy, and best.pt when `best`), then prune.

        One write: the other names are hard links to it (resume.save_copies). A name that holds
        a file lmtrain did not write is skipped with a warning, never overwritten.
        """
        step = ck.progress.step
        names = [resume_mod.step_name(step)] if keep_last > 0 else []
        names.append(ckpt.LAST)
        if best:
            names.append(ckpt.BEST)
        paths: list[Path] = []
        for name in names:
            rel = f"{ckpt.CHECKPOINT_DIR}/{name}"
            if _exists(self.path / rel) and not self.manifest.owns(rel):
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
        self._write_manifest()  # the names first: a crash never leaves an unlisted file
        resume_mod.save_copies(paths, ck)
        if best:
            self.best_step = step
        for p in paths:
            self.manifest.files[f"{ckpt.CHECKPOINT_DIR}/{p.name}"] = {
                "step": step,
                "best_step": self.best_step,
            }
        if keep_last > 0:
            self._prune(keep_last)
        self._write_manifest()

    def _numbered(self) -> list[tuple[int, str]]:
        """The lineage's numbered checkpoints lmtrain wrote, newest first."""
        return [
            (step, f"{ckpt.CHECKPOINT_DIR}/{p.name}")
            for step, p in resume_mod.numbered(self.checkpoints)
            if self.manifest.owns(f"{ckpt.CHECKPOINT_DIR}/{p.name}")
        ]

    def _prune(self, keep_last: int) -> None:
        """Keep the `keep_last` newest numbered checkpoints, and for each of them the checkpoint
        of its lineage's lowest validation loss (so that a rewind to any kept checkpoint finds
        its best.pt), and the branch points of rewinds."""
        numbered = self._numbered()
        keep = {rel for _, rel in numbered[:keep_last]} | set(self.manifest.pinned)
        for rel in list(keep):
            best = self.manifest.files.get(rel, {}).get("best_step")
            if best is not None:
                keep.add(f"{ckpt.CHECKPOINT_DIR}/{resume_mod.step_name(best)}")
        for _, rel in numbered:
            if rel not in keep:
                (self.path / rel).unlink(missing_ok=True)
                del self.manifest.files[rel]

    def _step_of(self, rel: str) -> int | None:
        """The step of checkpoint `rel`: from its name, else from the numbered checkpoint it is
        a hard link of, else from the manifest. The manifest comes last because a save whose
        final manifest write failed (a full disk) leaves it naming last.pt's previous step."""
        number = resume_mod.step_of_name(rel.rsplit("/", 1)[-1])
        if number is not None:
            return number
        path = self.path / rel
        for step, numbered in resume_mod.numbered(path.parent):
            if _same_file(numbered, path):
                return step
        return self.manifest.files.get(rel, {}).get("step")

    def _newer_than(self, step: int, source: Path) -> list[str]:
        """The lineage's checkpoints from after `step`: what a rewind to `step` abandons."""
        newer = []
        for p in resume_mod.candidates(self.checkpoints):
            rel = f"{ckpt.CHECKPOINT_DIR}/{p.name}"
            known = self._step_of(rel)
            owned = self.manifest.owns(rel)
            if owned and known is not None and known > step and not p.samefile(source):
                newer.append(rel)
        return newer

    def _rewind(self, source: Path, ck: Checkpoint, newer: list[str]) -> None:
        """Move the abandoned branch aside; make the source the lineage's head again."""
        step = ck.progress.step
        head = max(self._step_of(rel) or step for rel in newer)
        name = f"abandoned-{step:08d}-{head:08d}"
        aside, n = self.checkpoints / name, 1
        while _exists(aside):
            n += 1
            aside = self.checkpoints / f"{name}-{n}"
        moved = {
            rel: f"{ckpt.CHECKPOINT_DIR}/{aside.name}/{rel.rsplit('/', 1)[1]}" for rel in newer
        }
        source_rel = self._rel(source)
        assert source_rel is not None
        last_rel = f"{ckpt.CHECKPOINT_DIR}/{ckpt.LAST}"
        best_rel = f"{ckpt.CHECKPOINT_DIR}/{ckpt.BEST}"
        # Listed before anything moves, so that a crash midway leaves only files lmtrain knows.
        self.manifest.files[f"{ckpt.CHECKPOINT_DIR}/{aside.name}"] = {}
        for old, new in moved.items():
            self.manifest.files[new] = dict(self.manifest.files[old])
        # The branch point is kept for good under its numbered name (last.pt and best.pt move
        # on); a pin whose file moves aside is dropped, or it would hold on to whatever the new
        # branch later writes under that name.
        numbered = f"{ckpt.CHECKPOINT_DIR}/{resume_mod.step_name(step)}"
        pin = source_rel
        if self.manifest.owns(numbered) and _same_file(self.path / numbered, source):
            pin = numbered
        self.manifest.pinned = [p for p in self.manifest.pinned if p not in moved]
        if pin not in self.manifest.pinned:
            self.manifest.pinned.append(pin)
        self._write_manifest()
        aside.mkdir()
        for old, new in moved.items():
            os.replace(self.path / old, self.path / new)
            del self.manifest.files[old]
        if last_rel in moved or not _exists(self.path / last_rel):
            # --resume auto must find the new branch, even before its first save.
            self.manifest.files[last_rel] = dict(self.manifest.files.get(source_rel, {}), step=step)
            self._write_manifest()
            resume_mod.link_or_copy(self.path / source_rel, self.path / last_rel)
        best_note = ""
        if best_rel in moved:
            best = self._lineage_best(ck)
            if best is not None:
                self.manifest.files[best_rel] = {
                    "step": self.best_step,
                    "best_step": self.best_step,
                }
                self._write_manifest()
                resume_mod.link_or_copy(self.path / best, self.path / best_rel)
            else:
                best_note = (
                    "; this lineage's best checkpoint is no longer on disk, so best.pt will be "
                    f"written at the first evaluation below {ck.progress.best_val_loss:.4f}"
                )
        self.manifest.history.append(
            {"event": "moved aside", "files": sorted(moved.values()), "time": _now()}
        )
        self.warn(
            f"rewind to step {step}: {len(moved)} checkpoint(s) of the abandoned branch (up to "
            f"step {head}) were moved to {aside}, unchanged{best_note}"
        )

    def _lineage_best(self, ck: Checkpoint) -> str | None:
        """The file of this lineage's lowest validation loss, among the kept checkpoints."""
        if self.best_step is None or not math.isfinite(ck.progress.best_val_loss):
            return None
        rel = f"{ckpt.CHECKPOINT_DIR}/{resume_mod.step_name(self.best_step)}"
        return rel if self.manifest.owns(rel) and (self.path / rel).is_file() else None

    def _inherit_best(self, fork: Start, parent: Manifest | None) -> None:
        """A fork's best.pt: the parent lineage's best as of the fork point, copied in."""
        assert fork.checkpoint is not None and fork.source is not None
        p = fork.checkpoint.progress
        if not math.isfinite(p.best_val_loss):
            return
        found: Path | None = None
        best_step = None
        if p.last_val_loss == p.best_val_loss and p.last_eval_step == p.step:
            found, best_step = fork.source, p.step
        elif parent is not None:
            src_rel = Path(fork.source.parent.name, fork.source.name).as_posix()
            best_step = parent.files.get(src_rel, {}).get("best_step")
            root = fork.source.parent.parent
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
            self.warn(
                "fork: the parent's best checkpoint as of the fork point was not found; best.pt "
                f"will be written at the first evaluation below {p.best_val_loss:.4f}"
            )
            return
        rel = f"{ckpt.CHECKPOINT_DIR}/{ckpt.BEST}"
        self.manifest.files[rel] = {"step": best_step, "best_step": best_step}
        self._write_manifest()
        if _same_file(found, fork.source):
            # The fork point itself: a link to the new last.pt, not a second copy of the file
            # (which the parent's disk could share with last.pt but another disk cannot).
            found = self.checkpoints / ckpt.LAST
        resume_mod.link_or_copy(found, self.path / rel)
        self.best_step = best_step

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the lock. A directory this process created and never wrote to is removed."""
        if self._lock is None:
            return
        unused = bool(self._created) and not self.manifest.existing(self.path)
        if unused:
            with contextlib.suppress(OSError):
                (self.path / BOOKKEEPING / MANIFEST).unlink(missing_ok=True)
        self._lock.release(remove=unused)
        self._lock = None
        if unused:
            for d in reversed(self._created):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty: never removes anything else


def _make_bookkeeping(target: Path) -> bool:
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
        reason = "it exists and is not lmtrain's directory" if _exists(directory) else e.strerror
        raise RunDirectoryError(
            f"{directory} cannot be created ({reason}); nothing was changed. Move it away, or "
            "choose another run.dir."
        ) from None
    return True


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _inside(path: Path, run_path: Path) -> bool:
    """Whether checkpoint `path` lies in `run_path`'s checkpoints folder (or one below it)."""
    try:
        path.resolve().relative_to((run_path / ckpt.CHECKPOINT_DIR).resolve())
    except ValueError:
        return False
    return True


def _refuse_export(spec: Path, label: str) -> None:
    """An export (or a file of one) is weights for eval and sample, not a training state."""
    folder = spec if spec.is_dir() else spec.parent
    if export.is_export_dir(folder):
        raise CheckpointError(
            f"{label}: {folder} is an export written by `lmtrain export` (weights, config and "
            "vocabulary for eval and sample); it holds no optimiser state, counters or random "
            "state, so training cannot continue from it. Nothing was changed. Resume from the "
            "run's checkpoint instead (RUN/checkpoints/last.pt, or the run directory)."
        )


def _refuse_own_copy(path: Path, ck: Checkpoint, target: Path, label: str) -> None:
    """A copy of one of run.dir's own checkpoints kept outside its checkpoints/ folder."""
    if not ck.run_id or not target.is_dir():
        return
    try:
        manifest = Manifest.read(target)
    except RunDirectoryError:
        return  # _check_fresh reports the damaged manifest
    if manifest is None or manifest.run_id != ck.run_id:
        return
    own = target / ckpt.CHECKPOINT_DIR / resume_mod.step_name(ck.progress.step)
    instead = f"--resume {own}" if own.is_file() else "--resume auto"
    raise RunDirectoryError(
        f"{label}: {path} is a copy of a checkpoint of the run in {target} (step "
        f"{ck.progress.step}) kept outside {target / ckpt.CHECKPOINT_DIR}, so lmtrain cannot tell "
        f"where it stands in the run's history; nothing was changed. Resume from the run's own "
        f"file ({instead}), or fork the copy into a new run.dir: lmtrain fit CONFIG "
        f"run.dir=NEW --resume {path}"
    )


def _parent_manifest(source: Path) -> Manifest | None:
    """The manifest of the run a fork's checkpoint comes from, if it is one and readable."""
    if source.parent.name != ckpt.CHECKPOINT_DIR:
        return None
    try:
        return Manifest.read(source.parent.parent)
    except RunDirectoryError:
        return None  # only used to find the parent's best.pt; the fork itself does not need it


def _check_fresh(target: Path, fork: Start | None) -> None:
    """Refuse a directory that holds a run or files lmtrain did not write."""
    if not _exists(target):
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
    manifest = _read_any_manifest(target)
    owned = manifest.existing(target) if manifest is not None else []
    checkpoints = [rel for rel in owned if rel.endswith(".pt")]
    if checkpoints:
        if fork is not None:
            raise RunDirectoryError(
                f"run directory {target} already holds a different run, so the fork from "
                f"{fork.source} was refused; nothing was changed. Fork into a new or empty "
                "run.dir (e.g. run.dir=runs/NAME)."
            )
        raise RunDirectoryError(
            f"run directory {target} already holds a run; nothing was changed. Continue it "
            "with --resume auto, or choose a new run.dir (e.g. run.dir=runs/NAME)."
        )
    foreign = sorted(
        p.name
        for p in target.iterdir()
        if p.name != BOOKKEEPING and (manifest is None or not manifest.owns(p.name))
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


def _load_newest(
    run_path: Path, manifest: Manifest, label: str, warn: Warn
) -> tuple[Path, Checkpoint]:
    """The newest checkpoint of `run_path` lmtrain wrote that loads; damaged ones are skipped
    with a warning, never deleted. Reads only."""
    directory = run_path / ckpt.CHECKPOINT_DIR
    paths = [
        p
        for p in resume_mod.candidates(directory)
        if manifest.owns(f"{ckpt.CHECKPOINT_DIR}/{p.name}")
    ]
    if not paths:
        raise CheckpointError(
            f"{label}: no checkpoint in {directory}, so there is nothing to resume. Start "
            "without --resume to train from scratch."
        )
    skipped: list[str] = []
    for path in paths:
        try:
            ck = ckpt.load_checkpoint(path)
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
    cfg: Config, resume: str | None, warn: Warn, ctx: DistContext | None = None
) -> Iterator[tuple[RunDirectory, Start]]:
    """RunDirectory.open for the life of a `with` block. Under torchrun (ctx) rank 0 opens and
    decides, and the other ranks receive the decision and a RunDirectory that writes nothing."""
    if ctx is None:
        run, start = RunDirectory.open(cfg, resume, warn)
    else:
        opened: list[RunDirectory] = []

        def on_main() -> tuple[Path, str, Start]:
            run, start = RunDirectory.open(cfg, resume, warn)
            opened.append(run)
            return run.path, run.run_id, start

        path, run_id, start = ctx.on_main(on_main)
        run = opened[0] if opened else RunDirectory.follower(path, run_id)
    try:
        yield run, start
    finally:
        run.close()


__all__ = ["OWNED_NAMES", "RunDirectory", "RunDirectoryError", "Start", "open_run"]
