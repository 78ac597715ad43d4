"""RUN/.lmtrain/manifest.json: the run's id, its parent (for a fork), every file lmtrain wrote
and one event per session. lmtrain reads as its own, overwrites, prunes and deletes only files
the manifest lists."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtrain.checkpoint import CHECKPOINT_DIR, LAST
from lmtrain.rundir import resume as resume_mod
from lmtrain.rundir.layout import BOOKKEEPING, MANIFEST, TREES, RunDirectoryError, exists

MANIFEST_FORMAT = "lmtrain-run"
MANIFEST_VERSION = 1


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
        return [rel for rel in self.files if exists(run_path / rel)]


def _safe_rel(rel: Any) -> bool:
    """A relative path that stays inside the run directory ("a/b", never "/x" or "../x")."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


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
