"""Checkpoints: one file with state_dicts, config, vocabulary and counters.

This module owns the format; nothing else opens a checkpoint file. A checkpoint is a typed
`Checkpoint`, written as a plain dict of tensors and built-in values (format version 2) and
validated field by field when read: a missing or mistyped field, a file from a newer lmtrain or a
tensor of the wrong kind is a `CheckpointError` naming what is wrong, never a KeyError later on.
Version 1 files (written before the format had a version of its own schema) still load.

Writes are atomic (temporary file in the same directory, fsync, `os.replace`), so a crash, a full
disk or a second Ctrl-C mid-save leaves the previous checkpoint intact and no temporary file.
Loading always uses `torch.load(weights_only=True)`: a file whose pickle would build arbitrary
objects (and so could run code) is refused, and there is no fallback to unsafe loading. Only
regular files are opened: a FIFO, a device or a socket given as a checkpoint is refused before
anything is read from it.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import shutil
import stat
import tempfile
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lmtrain import files
from lmtrain.config import Config, config_from_dict, expand_path_if_set
from lmtrain.data.vocab import Vocab
from lmtrain.errors import CheckpointError, ConfigError, LmtrainError
from lmtrain.models import LanguageModel, build_model

FORMAT = "lmtrain-checkpoint"
VERSION = 2
"""2: typed fields, `run_id`, `averager` (was `ntasgd`), `progress.eval_pending`."""
CHECKPOINT_DIR = "checkpoints"
LAST, BEST = "last.pt", "best.pt"


@dataclass
class Progress:
    """Counters saved in every checkpoint; together with the RNG states they fix the future."""

    step: int = 0
    """Optimiser steps completed."""
    epoch: int = 0
    """Current epoch, 0-based."""
    batch_in_epoch: int = 0
    """Index of the next batch within the current epoch."""
    tokens: int = 0
    """Training tokens consumed."""
    best_val_loss: float = math.inf
    last_val_loss: float = math.nan
    last_eval_step: int = -1
    nonfinite_steps: int = 0
    """Steps skipped because their loss or gradient was NaN/inf, in total."""
    nonfinite_run: int = 0
    """Consecutive skipped steps up to now (0 after a good step; restarts at 0 on resume)."""
    train_seconds: float = 0.0
    """Time spent in training steps so far, evaluation and saving excluded (train.max_minutes)."""
    out_of_time: bool = False
    """train.max_minutes was reached; no more steps."""
    eval_pending: bool = False
    """The evaluation due at `step` was cut short by a signal; a resumed run does it first."""


# Counters a version-1 file always holds; the others were added later and default.
_V1_REQUIRED_PROGRESS = ("step", "epoch", "batch_in_epoch", "tokens")


@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly, or a model to be evaluated and sampled."""

    config: dict[str, Any]
    """The run's resolved config (Config.to_dict())."""
    vocab: dict[str, Any]
    """Vocab.to_dict(): kind and itos."""
    model: dict[str, torch.Tensor]
    """The model's state_dict (NT-ASGD: the averaged weights while averaging)."""
    optimizer: dict[str, Any]
    """The optimiser's state_dict."""
    schedule: dict[str, float]
    """LRSchedule.state_dict()."""
    progress: Progress
    rng: dict[str, Any]
    """torch RNG state ("torch"), per rank under torchrun ("by_rank"), CUDA ("cuda")."""
    carried_state: list[torch.Tensor] | None = None
    """Recurrent state carried into the next training window (the whole batch's rows)."""
    grad_scaler: dict[str, Any] | None = None
    """fp16 GradScaler state."""
    averager: dict[str, Any] | None = None
    """NT-ASGD: averaging, count, history and (while averaging) the raw weights."""
    run_id: str = ""
    """Identity of the run directory that wrote it ("" in version-1 files)."""
    version: int = VERSION
    """Format version the file was written with."""

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: tensors and built-in values only (readable with weights_only)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "run_id": self.run_id,
            "config": self.config,
            "vocab": self.vocab,
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "progress": asdict(self.progress),
            "rng": self.rng,
            "carried_state": self.carried_state,
            "grad_scaler": self.grad_scaler,
            "averager": self.averager,
        }

    # Read access by the version-1 key names, for code that reads a checkpoint as a dict.
    def __getitem__(self, key: str) -> Any:
        legacy = {"format": FORMAT, "ntasgd": self.averager}
        if key == "progress":
            # One dict per Progress object, so that reading it twice gives the same dict.
            view = self.__dict__.get("_progress_view")
            if view is None or view[0] is not self.progress:
                view = self.__dict__["_progress_view"] = (self.progress, asdict(self.progress))
            return view[1]
        if key in legacy and legacy[key] is not None:
            return legacy[key]
        if key in _FIELD_NAMES and not (key == "averager" and self.averager is None):
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


_FIELD_NAMES = {f.name for f in fields(Checkpoint)}


def save_checkpoint(path: Path, ck: Checkpoint) -> None:
    """Write `ck` to `path` atomically: either the old file or the complete new one exists.

    A full disk is reported as a CheckpointError (torch reports a failed write as a
    RuntimeError, the file object as an OSError; both are caught). The temporary file is
    removed on every way out, a second Ctrl-C included.
    """
    assert isinstance(ck, Checkpoint), type(ck)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ck.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, RuntimeError) and _os_error(e) is None and not _is_write_failure(e):
            raise  # not an I/O problem: a bug, keep its traceback
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({_write_reason(e, path.parent)}); the "
            "previous checkpoint, if any, is unchanged and no partial file was left. Free some "
            "disk space or choose another run.dir."
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    files.fsync_dir(path.parent)


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


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading only if it is a regular file; never blocks on a FIFO."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: checkpoint not found; check the path or run directory"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    kind = _not_regular(mode)
    if kind is not None:
        what = "is a directory" if kind == "a directory" else f"is {kind}"
        raise CheckpointError(
            f"{path}: {what}, not a checkpoint file; nothing was read from it. Give the path "
            "of a .pt file written by lmtrain, or a run directory."
        )
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening does not wait
        # for a writer; the fstat below then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    kind = _not_regular(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise CheckpointError(f"{path}: is {kind}, not a checkpoint file")
    return os.fdopen(fd, "rb")


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and validate a checkpoint onto the CPU, or raise CheckpointError saying why not."""
    with _open_regular(path) as f:
        if not zipfile.is_zipfile(f):
            # torch.save always writes a zip archive; anything else (a truncated file, random
            # bytes, a bare pickle) is rejected here without ever being unpickled.
            raise CheckpointError(
                f"{path}: damaged or truncated checkpoint (not a complete torch.save archive); "
                "it cannot be read"
            )
        f.seek(0)
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


def checkpoint_from_dict(raw: Any, path: Path) -> Checkpoint:
    """Validate the on-disk dict of any supported version; every problem is named at once."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lmtrain checkpoint")
    version = raw.get("version")
    if type(version) is not int or version < 1:
        raise CheckpointError(
            f"{path}: its format version is {version!r}, not a whole number >= 1; the file is "
            "not a valid lmtrain checkpoint"
        )
    if version > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer lmtrain (checkpoint format version {version}; this "
            f"lmtrain reads versions 1 to {VERSION}). Upgrade lmtrain to use it."
        )
    problems: list[str] = []
    v = _Validator(raw, problems)
    averager_key = "ntasgd" if version == 1 else "averager"
    known = {
        "format", "version", "config", "vocab", "model", "optimizer", "schedule", "progress",
        "rng", "carried_state", "grad_scaler", averager_key,
    } | ({"run_id"} if version >= 2 else set())  # fmt: skip
    problems += [
        f"{k!r}: unknown field for format version {version}" for k in raw if k not in known
    ]
    ck = Checkpoint(
        config=v.dict_("config"),
        vocab=v.vocab(),
        model=v.tensors("model"),
        optimizer=v.optimizer(),
        schedule=v.schedule(),
        progress=v.progress(version),
        rng=v.rng(),
        carried_state=v.carried_state(),
        grad_scaler=v.dict_("grad_scaler", optional=True),
        averager=v.averager(averager_key, required=version >= 2),
        run_id=v.str_("run_id") if version >= 2 else "",
        version=version,
    )
    if problems:
        raise CheckpointError(
            f"{path}: not a valid lmtrain checkpoint (format version {version}); "
            + "; ".join(problems)
            + ". It cannot be used; resume from another checkpoint of the run."
        )
    return ck


_NUMBER = (int, float)


class _Validator:
    """Checks each field's presence and type, appending one line per problem."""

    def __init__(self, raw: dict[Any, Any], problems: list[str]) -> None:
        self.raw, self.problems = raw, problems

    def _get(self, key: str, optional: bool = False) -> tuple[bool, Any]:
        if key not in self.raw:
            if not optional:
                self.problems.append(f"'{key}' is missing")
            return False, None
        return True, self.raw[key]

    def _bad(self, key: str, expected: str, value: Any) -> None:
        self.problems.append(f"'{key}' should be {expected}, not {_describe(value)}")

    def dict_(self, key: str, optional: bool = False) -> Any:
        present, value = self._get(key, optional)
        if not present or (optional and value is None):
            return None if optional else {}
        if not isinstance(value, dict):
            self._bad(key, "a dict", value)
            return None if optional else {}
        return value

    def str_(self, key: str) -> str:
        present, value = self._get(key)
        if present and not isinstance(value, str):
            self._bad(key, "a string", value)
            return ""
        return value if present else ""

    def vocab(self) -> dict[str, Any]:
        d = self.dict_("vocab")
        if not d:
            return {}
        if d.get("kind") not in ("char", "word", "byte"):
            self._bad("vocab.kind", "'char', 'word' or 'byte'", d.get("kind"))
        itos = d.get("itos")
        if not isinstance(itos, list) or not itos or not all(isinstance(t, str) for t in itos):
            self._bad("vocab.itos", "a non-empty list of strings", itos)
        elif len(set(itos)) != len(itos):
            self.problems.append("'vocab.itos' lists a token twice")
        return d

    def tensors(self, key: str, value: Any = None, given: bool = False) -> dict[str, torch.Tensor]:
        if not given:
            present, value = self._get(key)
            if not present:
                return {}
        if not isinstance(value, dict) or not value:
            self._bad(key, "a non-empty dict of tensors", value)
            return {}
        bad = [k for k, t in value.items() if not isinstance(k, str) or not _is_tensor(t)]
        if bad:
            self._bad(f"{key}[{bad[0]}]", "a tensor", value[bad[0]])
        return value

    def optimizer(self) -> dict[str, Any]:
        d = self.dict_("optimizer")
        if not d:
            return {}
        if not isinstance(d.get("state"), dict):
            self._bad("optimizer.state", "a dict", d.get("state"))
        groups = d.get("param_groups")
        if not isinstance(groups, list) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
        ):
            self._bad("optimizer.param_groups", "a list of dicts with 'params'", groups)
        return d

    def schedule(self) -> dict[str, float]:
        d = self.dict_("schedule")
        if not d:
            return {}
        scale = d.get("scale")
        if not _is_number(scale) or not math.isfinite(scale) or scale < 0:
            # It multiplies the learning rate: NaN or infinity would make every step non-finite.
            self._bad("schedule.scale", "a finite number >= 0", scale)
        if type(d.get("bad_evals")) is not int or d["bad_evals"] < 0:
            self._bad("schedule.bad_evals", "a whole number >= 0", d.get("bad_evals"))
        return d

    def progress(self, version: int) -> Progress:
        d = self.dict_("progress")
        if not d:
            return Progress()
        types = {f.name: f.type for f in fields(Progress)}
        kwargs: dict[str, Any] = {}
        for name, kind in types.items():
            if name not in d:
                if version >= 2 or name in _V1_REQUIRED_PROGRESS:
                    self.problems.append(f"'progress.{name}' is missing")
                continue
            value = d[name]
            ok = {
                "int": type(value) is int and (value >= 0 or name == "last_eval_step"),
                "float": _is_number(value),
                "bool": type(value) is bool,
            }[str(kind)]
            if not ok:
                expected = {"int": "a whole number >= 0", "float": "a number", "bool": "a bool"}
                self._bad(f"progress.{name}", expected[str(kind)], value)
                continue
            kwargs[name] = float(value) if kind == "float" else value
        unknown = sorted(str(k) for k in d if k not in types)
        self.problems += [f"'progress.{k}': unknown counter" for k in unknown]
        return Progress(**kwargs)

    def rng(self) -> dict[str, Any]:
        d = self.dict_("rng")
        if not d:
            return {}
        if not _is_byte_tensor(d.get("torch")):
            self._bad("rng.torch", "a uint8 tensor", d.get("torch"))
        if "cuda" in d and not _is_byte_tensor(d["cuda"]):
            self._bad("rng.cuda", "a uint8 tensor", d["cuda"])
        by_rank = d.get("by_rank")
        if by_rank is not None and (
            not isinstance(by_rank, list) or not all(_is_byte_tensor(t) for t in by_rank)
        ):
            self._bad("rng.by_rank", "a list of uint8 tensors", by_rank)
        return d

    def carried_state(self) -> list[torch.Tensor] | None:
        present, value = self._get("carried_state", optional=True)
        if not present or value is None:
            return None
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(_is_tensor(t) and t.dim() == 3 and t.is_floating_point() for t in value)
        ):
            self._bad("carried_state", "None or a list of 3-d float tensors", value)
            return None
        if len({t.size(1) for t in value}) != 1:
            self.problems.append("'carried_state' tensors disagree on the number of rows")
        return list(value)

    def averager(self, key: str, required: bool) -> dict[str, Any] | None:
        present, value = self._get(key, optional=not required)
        if not present or value is None:
            return None
        if not isinstance(value, dict):
            self._bad(key, "None or a dict", value)
            return None
        if type(value.get("averaging")) is not bool:
            self._bad(f"{key}.averaging", "a bool", value.get("averaging"))
        if type(value.get("count")) is not int:
            self._bad(f"{key}.count", "an integer", value.get("count"))
        history = value.get("history")
        if not isinstance(history, list) or not all(_is_number(h) for h in history):
            self._bad(f"{key}.history", "a list of numbers", history)
        if value.get("averaging") is True:
            self.tensors(f"{key}.raw", value.get("raw"), given=True)
        return value


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _is_byte_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


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


def config_of(ck: Checkpoint, path: Path) -> Config:
    """The checkpoint's config, parsed and validated as a config file would be."""
    try:
        return config_from_dict(ck.config, source=f"{path} (saved config)")
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config cannot be read ({e})") from None


def load_model(
    spec: str | Path, device: torch.device | str = "cpu"
) -> tuple[LanguageModel, Vocab, Config]:
    """Model (in eval mode), vocabulary and config of a checkpoint, run directory or export."""
    from lmtrain import export  # export imports this module; imported here to avoid a cycle

    if export.is_export_dir(spec):
        return export.load_export(spec, device)
    path = resolve_checkpoint(spec)
    ck = load_checkpoint(path)
    cfg = config_of(ck, path)
    try:
        vocab = Vocab.from_dict(ck.vocab)
        model = build_model(cfg.model, len(vocab))
        model.load_state_dict(ck.model)
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        detail = " ".join(str(e).split())[:500]
        raise CheckpointError(
            f"{path}: checkpoint contents do not fit together ({detail})"
        ) from None
    except LmtrainError:
        raise
    return model.to(device).eval(), vocab, cfg


# ---------------------------------------------------------------------------------------------
# What may change when a run is resumed

# Settings that may differ between a checkpoint's config and the config a run is resumed with.
# Each takes effect from the resume step on; the steps already taken are what they were. Every
# other setting is refused by name, because continuing with it changed would silently give a
# run that no single config describes (or would fail later with a shape error).
RESUMABLE_CHANGES: dict[str, str] = {
    "train.epochs": "the plan: a cosine schedule is stretched to the new length from here on",
    "train.max_steps": "the plan: a cosine schedule is stretched to the new length from here on",
    "train.max_minutes": "the time budget",
    "train.eval_every": "when evaluations and checkpoints happen",
    "train.log_every": "how often progress is logged",
    "train.max_nonfinite_steps": "the NaN guard's limit",
    "train.num_threads": "CPU threads (results agree up to floating-point rounding)",
    "train.dist_timeout": "the torchrun timeout",
    "train.device": "the device (results agree up to floating-point rounding, and dropout "
    "masks come from that device's generator)",
    "train.lr": "the learning rate",
    "train.min_lr": "the learning rate",
    "train.warmup_steps": "the learning rate",
    "train.schedule": "the learning-rate schedule (the plateau state carries over)",
    "train.plateau_factor": "the plateau schedule",
    "train.plateau_patience": "the plateau schedule",
    "train.momentum": "the optimiser's momentum",
    "train.weight_decay": "the optimiser's weight decay",
    "train.clip_grad_norm": "gradient clipping",
    "train.clip_grad_value": "gradient clipping",
    "train.ar_alpha": "the activation penalty",
    "train.tar_beta": "the activation penalty",
    "train.nonmono": "when NT-ASGD starts averaging",
    "data.test": "the default text of `lmtrain eval` (training never reads it)",
    "data.cache_dir": "where tokenised splits are cached (the ids are the same either way)",
    "model.pretrained_embeddings": "nothing: only a new run is initialised from vectors",
    "model.pretrained_format": "nothing: only a new run is initialised from vectors",
    "run.dir": "where the run is written",
    "run.keep_last": "how many numbered checkpoints are kept",
    "run.tensorboard": "whether TensorBoard events are written",
    "run.sample_tokens": "the samples logged at evaluations",
    "run.sample_prompt": "the samples logged at evaluations",
}
# Any other run.* setting says only what is written where, never what is computed.
_RUN_SECTION = "run."

# Why a setting cannot change, by the longest matching prefix.
_REFUSED_BECAUSE = {
    "model": "the weights' shapes and meaning depend on it",
    "data": "the vocabulary and the token stream depend on it",
    "data.valid": "best.pt, the plateau schedule and NT-ASGD compare losses on the same text",
    "train.batch_size": "the batches, the carried state and the position in the epoch use it",
    "train.bptt": "the batches and the position in the epoch depend on it",
    "train.variable_bptt": "the batches and the position in the epoch depend on it",
    "train.seed": "the batch order and dropout masks continue from the saved random state",
    "train.optimizer": "the saved optimiser state belongs to the other optimiser",
    "train.precision": "the numbers and the saved gradient-scaler state depend on it",
    "": "lmtrain cannot continue a run exactly with it changed",
}


def check_resumable(cfg: Config, ck: Checkpoint, path: Path) -> list[str]:
    """Refuse, naming every key, a resume whose config changes what cannot change.

    Returns one line per setting that did change and may (see RESUMABLE_CHANGES), for the
    caller to show: the resumed run then differs from the original from this step on, on
    purpose.
    """
    notes = config_changes(cfg, config_of(ck, path), path, ck.progress.step)
    problems = tensor_misfits(cfg, ck)
    if problems:
        raise CheckpointError(
            f"cannot resume from {path}: its tensors do not fit the model this config builds: "
            + "; ".join(problems)
            + ". Resume with the settings it was trained with, or start a new run.dir."
        )
    return notes


def tensor_misfits(cfg: Config, ck: Checkpoint) -> list[str]:
    """Shape problems between `ck` and the model `cfg` builds, found before anything is written.

    The model is built on the meta device (shapes only, no memory), so this costs nothing next
    to loading the checkpoint.
    """
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, len(Vocab.from_dict(ck.vocab)))
            expected_state = model.init_state(1)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked in restore
        return []
    problems: list[str] = []
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in ck.model]
    extra = [k for k in ck.model if k not in wanted]
    if missing:
        problems.append(f"weights missing from the checkpoint: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"weights this model does not have: {', '.join(extra[:5])}")
    problems += [
        f"{k}: {tuple(ck.model[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
        for k, v in wanted.items()
        if k in ck.model and ck.model[k].shape != v.shape
    ]
    params = [p for p in model.parameters() if p.requires_grad]  # as build_optimizer takes them
    saved = [i for g in ck.optimizer.get("param_groups", []) for i in g.get("params", [])]
    if len(saved) != len(params):
        problems.append(
            f"the optimiser state is for {len(saved)} parameter tensors, the model has "
            f"{len(params)}"
        )
    else:
        state = ck.optimizer.get("state", {})
        problems += [
            f"optimizer state {name!r} has shape {tuple(value.shape)} for a parameter of shape "
            f"{tuple(param.shape)}"
            for index, param in zip(saved, params, strict=True)
            for name, value in state.get(index, {}).items()
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape
        ]
    if ck.carried_state is not None and (
        len(ck.carried_state) != len(expected_state)
        or any(
            c.shape[0] != e.shape[0] or c.shape[2:] != e.shape[2:]
            for c, e in zip(ck.carried_state, expected_state, strict=False)
        )
    ):
        got = ", ".join(str(tuple(c.shape)) for c in ck.carried_state)
        want = ", ".join(f"({e.shape[0]}, rows, {e.shape[2]})" for e in expected_state)
        problems.append(f"the carried recurrent state has shape(s) {got}; this model's is {want}")
    elif ck.carried_state is not None:
        # Stream mode carries every one of the batch_size streams into the next window;
        # sentences mode carries the rows of the batch still running, at most batch_size.
        rows, batch = ck.carried_state[0].size(1), cfg.train.batch_size
        if rows > batch or (cfg.data.mode == "stream" and rows != batch):
            problems.append(
                f"the carried recurrent state has {rows} rows; train.batch_size is {batch}"
                + (" and stream mode carries every stream" if cfg.data.mode == "stream" else "")
            )
    return problems


def config_changes(cfg: Config, saved: Config, path: Path, step: int | None = None) -> list[str]:
    """check_resumable's rule for two parsed configs."""
    new, old = _flatten(cfg.to_dict()), _flatten(saved.to_dict())
    # Checkpoints of earlier releases saved data paths with their ${VAR}s unexpanded; the
    # same file named both ways is no change.
    for k in _PATH_KEYS:
        if isinstance(old.get(k), str):
            old[k] = expand_path_if_set(old[k])
    changed = [k for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k)]
    refused = [k for k in changed if not _may_change(k)]
    if refused:
        lines = [
            f"  - {k} (checkpoint: {old.get(k)!r}, now: {new.get(k)!r}): {_reason(k)}"
            for k in refused
        ]
        raise CheckpointError(
            f"cannot resume from {path}: {len(refused)} setting(s) differ from the checkpoint's "
            "and cannot change on resume:\n"
            + "\n".join(lines)
            + "\nResume with the checkpoint's values (its config is saved in it), or start a "
            "new run.dir."
        )
    where = f" from step {step} on" if step is not None else ""
    return [
        f"resume: {k} changed from {old.get(k)!r} to {new.get(k)!r}; this changes "
        f"{RESUMABLE_CHANGES.get(k, 'what the run writes')}{where}"
        for k in changed
    ]


_PATH_KEYS = ("data.train", "data.valid", "data.test", "model.pretrained_embeddings")


def _may_change(key: str) -> bool:
    return key in RESUMABLE_CHANGES or key.startswith(_RUN_SECTION)


def _reason(key: str) -> str:
    prefix = max(
        (p for p in _REFUSED_BECAUSE if p == "" or key == p or key.startswith(p + ".")), key=len
    )
    return _REFUSED_BECAUSE[prefix]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
