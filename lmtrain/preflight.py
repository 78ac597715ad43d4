"""What a config needs of this machine before a run: inputs, a device, memory and a run directory.

The schema's checks (lmtrain/config) know nothing of the machine; these do. `lmtrain validate`
reports both in one list through `validate_config`, and a Python caller gets the same problems
from `environment_problems`.
"""

from __future__ import annotations

import os
from pathlib import Path

from lmtrain.config import Config, load_config, resource_problems
from lmtrain.data.corpus import check_inputs
from lmtrain.errors import LmtrainError
from lmtrain.runtime.device import resolve_device


def environment_problems(cfg: Config) -> list[str]:
    """What the schema cannot know: files, device, memory and run.dir on this machine."""
    problems = check_inputs(cfg)
    device: object = "cpu"  # a device that does not exist: at least the model must fit in RAM
    try:
        device = resolve_device(cfg.train.device)
    except LmtrainError as e:
        problems.append(str(e))
    problems += resource_problems(cfg, device=device)
    return problems + run_dir_problems(Path(cfg.run.dir))


def run_dir_problems(run_dir: Path) -> list[str]:
    """run.dir must be a directory, or creatable: its nearest existing parent is writable."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == run_dir and not existing.is_dir():
        return [f"run.dir: {run_dir} exists and is not a directory; choose another run.dir"]
    if not existing.is_dir():
        return [f"run.dir: {existing} is not a directory, so {run_dir} cannot be created there"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"run.dir: {existing} is not writable; choose another run.dir"]
    return []


def validate_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """The config at `path` with `overrides`, or one ConfigError listing every problem of the
    schema and of this machine (files opened, not read; nothing is built or written)."""
    return load_config(path, overrides, checks=environment_problems)
