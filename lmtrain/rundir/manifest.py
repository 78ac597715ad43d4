"""RUN/.lmtrain/manifest.json: the run's id, its parent (for a fork), every file lmtrain wrote,
one event per session and the ids of its tracking runs (W&B, MLflow). lmtrain reads as its own,
overwrites, prunes and deletes only files the manifest lists."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from lmtrain import files
from lmtrain.checkpoint import CHECKPOINT_DIR, LAST
from lmtrain.records import Count, FileDialect, Leaf, RecordError, build_record, joined
from lmtrain.rundir import resume as resume_mod
from lmtrain.rundir.layout import BOOKKEEPING, MANIFEST, TREES, RunDirectoryError, exists

MANIFEST_FORMAT = "lmtrain-run"
MANIFEST_VERSION = 2
"""Version 2 adds `trackers`; a manifest without them is written as version 1, which an older
lmtrain reads, and one with them as 2, which it refuses as newer rather than as damaged."""


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
    trackers: dict[str, str] = field(default_factory=dict)
    """The id of each optional tracker's run (run.loggers: wandb, mlflow), which a resumed session
    continues."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "version": MANIFEST_VERSION if self.trackers else 1,
                "run_id": self.run_id,
                "created": self.created,
                "parent": self.parent,
                "files": dict(sorted(self.files.items())),
                "pinned": sorted(self.pinned),
                "history": self.history,
                **({"trackers": dict(sorted(self.trackers.items()))} if self.trackers else {}),
            },
            indent=1,
        )

    @classmethod
    def read(cls, run_path: Path) -> Manifest | None:
        """The manifest of `run_path`; None where there is none."""
        path = run_path / BOOKKEEPING / MANIFEST
        if not exists(path):
            return None
        try:
            data, more = files.read_bounded(path, _MAX_BYTES)
            if more:
                raise ValueError(f"larger than {_MAX_BYTES >> 20} MiB")
            return cls._from_json(json.loads(data.decode("utf-8")))
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
            raise RunDirectoryError(
                f"{path} is damaged ({e}); without it lmtrain cannot tell which files in "
                f"{run_path} it wrote, so it changes nothing there. Restore the file, or fork the "
                f"run into a new directory: lmtrain fit CONFIG run.dir=NEW --resume "
                f"{run_path / CHECKPOINT_DIR / LAST}"
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
            raise ValueError(f"'version' should be a whole number, not {version!r:.60}")
        if version > MANIFEST_VERSION:
            raise ValueError(f"written by a newer lmtrain (version {version})")
        try:
            disk = build_record(_OnDisk, raw, "manifest", dialect=_DIALECT)
        except RecordError as e:
            raise ValueError(joined(e.problems, 5)) from None
        return cls(
            run_id=disk.run_id,
            created=disk.created,
            parent=disk.parent,
            files={k: dict(v) for k, v in raw["files"].items()},
            pinned=disk.pinned,
            history=disk.history,
            trackers=disk.trackers,
        )

    def owns(self, rel: str) -> bool:
        top = rel.split("/", 1)[0]
        return rel in self.files or (top in TREES and top in self.files)

    def existing(self, run_path: Path) -> list[str]:
        return [rel for rel in self.files if exists(run_path / rel)]


def _inside(rel: str) -> str:
    """A relative path that stays inside the run directory ("a/b", never "/x" or "../x")."""
    parts = rel.split("/")
    if not rel or "\\" in rel or "\0" in rel or rel.startswith("/") or {"", ".", ".."} & set(parts):
        raise ValueError(f"{rel!r} is not a path inside the run directory")
    return rel


RunPath = Annotated[str, Leaf("a path inside the run directory", _inside)]
_MAX_BYTES = 64 << 20
"""A manifest lists a run's files: far below this, however long the run."""
_DIALECT = FileDialect(mapping="an object", item="{key}[{name!r}]")


@dataclass
class _Entry:
    step: Count | None = None
    best_step: Count | None = None


@dataclass
class _OnDisk:
    """What Manifest.to_json writes."""

    format: str
    version: int
    run_id: str
    created: str
    parent: dict[str, Any] | None
    files: dict[RunPath, _Entry]
    pinned: list[RunPath]
    history: list[Any]
    trackers: dict[str, str] = field(default_factory=dict)


def legacy_manifest(run_path: Path) -> Manifest | None:
    """A manifest for a run directory written before lmtrain kept one, built from its layout.

    Only names lmtrain gives its files are adopted; anything else stays foreign.
    """
    directory = run_path / CHECKPOINT_DIR
    names = [p.name for p in resume_mod.candidates(directory)]
    if not names:
        return None
    m = Manifest(run_id="", created="")
    for name in names:
        number = resume_mod.step_of_name(name)
        m.files[f"{CHECKPOINT_DIR}/{name}"] = {} if number is None else {"step": number}
    m.files[CHECKPOINT_DIR] = {}
    if (run_path / "config.yaml").is_file():
        m.files["config.yaml"] = {}
    for name in ("tb", "metrics.jsonl", "results.json"):
        if exists(run_path / name):
            m.files[name] = {}
    return m


def read_any_manifest(run_path: Path) -> Manifest | None:
    """The manifest of `run_path`, else one built from an older lmtrain's layout; else None."""
    return Manifest.read(run_path) or legacy_manifest(run_path)


def parent_manifest(source: Path) -> Manifest | None:
    """The manifest of the run a fork's checkpoint comes from, if it is one and readable."""
    if source.parent.name != CHECKPOINT_DIR:
        return None
    try:
        return Manifest.read(source.parent.parent)
    except RunDirectoryError:
        return None  # only used to find the parent's best.pt; the fork itself does not need it
