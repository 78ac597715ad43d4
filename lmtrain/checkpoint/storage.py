"""Checkpoint files on disk: atomic writes, safe reads, and which file a run directory names.

Writes go through files.atomic_write, so a crash, a full disk or a second Ctrl-C mid-save leaves
the previous checkpoint intact and no temporary file (one SIGKILL leaves is swept at the next run).
Loading always uses `torch.load(weights_only=True)`: a file whose pickle would build arbitrary
objects (and so could run code) is refused, and there is no fallback to unsafe loading. Only
regular files are opened: a FIFO, a device or a socket given as a checkpoint is refused before
anything is read from it.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path
from typing import BinaryIO

import torch

from lmtrain import files
from lmtrain.checkpoint.format import BEST, CHECKPOINT_DIR, LAST, Checkpoint
from lmtrain.checkpoint.validate import check_archive, checkpoint_from_dict
from lmtrain.errors import CheckpointError


def save_checkpoint(path: Path, ck: Checkpoint) -> None:
    """Write `ck` to `path` atomically: either the old file or the complete new one exists.

    A full disk is reported as a CheckpointError (torch reports a failed write as a
    RuntimeError, the file object as an OSError; both are caught). The temporary file is
    removed on every way out, a second Ctrl-C included.
    """
    assert isinstance(ck, Checkpoint), type(ck)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with files.atomic_write(path) as f:
            torch.save(ck.to_dict(), f)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and _os_error(e) is None and not _is_write_failure(e):
            raise  # not an I/O problem: a bug, keep its traceback
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({_write_reason(e, path.parent)}); the "
            "previous checkpoint, if any, is unchanged and no partial file was left. Free some "
            "disk space or choose another run.dir."
        ) from None


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: itself, or one torch's writer wrapped (__context__/__cause__)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _is_write_failure(e: RuntimeError) -> bool:
    # torch's zip writer: "PytorchStreamWriter failed writing file ...: file write failed", or
    # "[enforce fail at inline_container.cc:...] . unexpected pos N vs M" after a short write.
    text = str(e)
    return "inline_container" in text or "PytorchStreamWriter" in text or "write failed" in text


def _write_reason(e: BaseException, directory: Path) -> str:
    os_error = _os_error(e)
    if os_error is not None and os_error.errno is not None:
        return os.strerror(os_error.errno)
    try:
        if shutil.disk_usage(directory).free < 1 << 20:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"the write failed: {first}"


def _open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file (files.open_regular: never blocks
    on a FIFO, never reads a device)."""
    try:
        return files.open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: checkpoint not found; check the path or run directory"
        ) from None
    except IsADirectoryError:
        what = "is a directory"
    except files.NotRegularFileError as e:
        what = f"is {e.kind}"
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    raise CheckpointError(
        f"{path}: {what}, not a checkpoint file; nothing was read from it. Give the path of a "
        ".pt file written by lmtrain, or a run directory."
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and validate a checkpoint onto the CPU, or raise CheckpointError saying why not."""
    with _open_regular(path) as f:
        check_archive(f, path)  # before a byte is unpickled
        try:
            raw = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
                raise CheckpointError(
                    f"{path}: refused: the file holds Python objects other than tensors and "
                    "plain data, and loading it could run arbitrary code. lmtrain never loads "
                    "such files; use a checkpoint written by lmtrain from a source you trust."
                ) from None
            raise CheckpointError(f"{path}: damaged checkpoint ({e}); it cannot be read") from None
        except Exception as e:  # noqa: BLE001 - any failure to parse means the file is damaged
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(
                f"{path}: damaged or truncated checkpoint ({first}); it cannot be read"
            ) from None
    return checkpoint_from_dict(raw, path)


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
    if path.suffix.lower() in (".yaml", ".yml", ".json") and not _is_archive(path):
        raise CheckpointError(_config_not_checkpoint(path))
    return path


def _is_archive(path: Path) -> bool:
    """Whether `path` starts as a zip archive (every torch.save file does); an unreadable file
    counts as one, so that loading it says what is wrong with it."""
    try:
        return files.read_bounded(path, 4)[0] == b"PK\x03\x04"
    except OSError:
        return True


def _config_not_checkpoint(path: Path) -> str:
    """What to give instead of the config file `path` (RUN/config.yaml, EXPORT/config.json)."""
    from lmtrain.checkpoint.export_format import is_export_dir

    folder = path.parent
    if is_export_dir(folder):
        instead = f"give the export folder itself: {folder}"
    elif (folder / CHECKPOINT_DIR).is_dir():
        instead = (
            f"give the run directory ({folder}, its best checkpoint) or one of its checkpoints "
            f"({folder / CHECKPOINT_DIR / BEST})"
        )
    else:
        instead = "give a run directory, a checkpoint file (.pt) or an export folder"
    return (
        f"{path}: is a config file, not a checkpoint; nothing was loaded. To read a trained "
        f"model, {instead}. A config is what lmtrain fit trains from."
    )
