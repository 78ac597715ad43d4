"""Checkpoints: one file with state_dicts, config, vocabulary and counters.

Writes are atomic (temporary file in the same directory, fsync, `os.replace`), so a crash or a
full disk mid-save leaves the previous checkpoint intact. Loading always uses
`torch.load(weights_only=True)`: a file whose pickle would build arbitrary objects (and so could
run code) is refused, and there is no fallback to unsafe loading.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from lmtrain.config import Config, config_from_dict
from lmtrain.data.vocab import Vocab
from lmtrain.errors import CheckpointError, ConfigError, LmtrainError
from lmtrain.models import LanguageModel, build_model

FORMAT = "lmtrain-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically: either the old file or the complete new one exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({e.strerror or e}); the previous "
            "checkpoint, if any, is unchanged. Free some disk space or choose another run.dir."
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry itself reaches the disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely onto the CPU, or raise CheckpointError saying why not."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; check the path or run directory")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not zipfile.is_zipfile(path):
        # torch.save always writes a zip archive; anything else (a truncated file, random bytes,
        # a bare pickle) is rejected here without ever being unpickled.
        raise CheckpointError(
            f"{path}: damaged or truncated checkpoint (not a complete torch.save archive); it "
            "cannot be read"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects other than tensors and plain "
                "data, and loading it could run arbitrary code. lmtrain never loads such files; "
                "use a checkpoint written by lmtrain from a source you trust."
            ) from None
        raise CheckpointError(f"{path}: damaged checkpoint ({e}); it cannot be read") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse means the file is damaged
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: damaged or truncated checkpoint ({first}); it cannot be read"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lmtrain checkpoint")
    return payload


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best checkpoint, else its last)."""
    path = Path(spec)
    if path.is_dir():
        for name in (BEST, LAST):
            candidate = path / CHECKPOINT_DIR / name
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"{path}: no checkpoint in {path / CHECKPOINT_DIR}; is this an lmtrain run directory "
            "whose training has saved at least once?"
        )
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def config_of(payload: dict[str, Any], path: Path) -> Config:
    try:
        return config_from_dict(payload["config"], source=f"{path} (saved config)")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: its saved config cannot be read ({e})") from None


def load_model(
    spec: str | Path, device: torch.device | str = "cpu"
) -> tuple[LanguageModel, Vocab, Config]:
    """Model (in eval mode), vocabulary and config of a checkpoint or run directory."""
    path = resolve_checkpoint(spec)
    payload = load_checkpoint(path)
    cfg = config_of(payload, path)
    try:
        vocab = Vocab.from_dict(payload["vocab"])
        model = build_model(cfg.model, len(vocab))
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: checkpoint contents do not fit together ({e})") from None
    except LmtrainError:
        raise
    return model.to(device).eval(), vocab, cfg
