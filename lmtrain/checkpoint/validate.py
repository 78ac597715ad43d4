"""Validation on load: a checkpoint's on-disk dict read as a typed record (lmtrain/records.py) of
any supported format version. A missing or mistyped field, a file from a newer lmtrain, a tensor
of the wrong kind or weights that are not finite is a `CheckpointError` naming every problem at
once, never a KeyError or a NaN later on. Version 1 files (written before the format had a
version of its own schema) still load.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import torch

from lmtrain.checkpoint.format import FORMAT, VERSION, Checkpoint, Progress
from lmtrain.data.tokenizers import TOKENIZERS, tokenizer_class
from lmtrain.errors import CheckpointError
from lmtrain.records import (
    Count,
    FileDialect,
    Leaf,
    OneOf,
    RecordError,
    build_record,
    describe,
    joined,
)

# Counters a version-1 file always holds; the others were added later and default.
_V1_REQUIRED_PROGRESS = ("step", "epoch", "batch_in_epoch", "tokens")
_PROGRESS = tuple(f.name for f in fields(Progress))


def _holds(ok: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """A Leaf check that keeps the value if `ok` says so."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError
        return value

    return check


def _is_byte_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.uint8


def _is_group(g: Any) -> bool:
    return isinstance(g, dict) and isinstance(g.get("params"), list)


def _state_rows(state: list[Any]) -> list[torch.Tensor]:
    if not state or not all(
        isinstance(t, torch.Tensor) and t.dim() == 3 and t.is_floating_point() for t in state
    ):
        raise ValueError
    if len({t.size(1) for t in state}) != 1:
        raise ValueError("its tensors disagree on the number of rows")
    return state


def _distinct(itos: list[str]) -> list[str]:
    if not itos:
        raise ValueError
    if len(set(itos)) != len(itos):
        raise ValueError("lists a token twice")
    return itos


# Leaf types are module-level names: an annotation is evaluated with the class's namespace as
# its globals, where a lambda written inside it would not see this module's imports.
Tensor = Annotated[Any, Leaf("a tensor", _holds(lambda t: isinstance(t, torch.Tensor)))]
ByteTensor = Annotated[Any, Leaf("a uint8 tensor", _holds(_is_byte_tensor))]
Weights = Annotated[dict[str, Tensor], Leaf("a non-empty dict of tensors", _holds(bool))]
# It multiplies the learning rate: NaN or infinity would make every step non-finite.
Rate = Annotated[float, Leaf("a finite number >= 0", _holds(lambda s: 0 <= s < math.inf))]
Tokens = Annotated[list[str], Leaf("a non-empty list of strings", _distinct)]
State = Annotated[list[Any], Leaf("a list of 3-d float tensors", _state_rows)]
Groups = Annotated[
    list[Any],
    Leaf("a list of dicts with 'params'", _holds(lambda gs: all(_is_group(g) for g in gs))),
]


@dataclass
class _Vocab:
    kind: Annotated[str, OneOf(TOKENIZERS)]
    itos: Tokens
    tokenizer: str | None = None


@dataclass
class _Optimizer:
    state: dict[Any, Any]
    param_groups: Groups


@dataclass
class _Schedule:
    scale: Rate
    bad_evals: Count
    evals_without_best: Count = 0


@dataclass
class _Rng:
    torch: ByteTensor
    cuda: ByteTensor | None = None
    by_rank: list[ByteTensor] | None = None


@dataclass
class _Averager:
    averaging: bool
    count: int
    history: list[float]
    raw: Weights | None = None


@dataclass
class _OnDisk:
    """What Checkpoint.to_dict() writes, in version 2 or 1 (`ntasgd`, no `run_id`)."""

    format: str
    version: int
    config: dict[str, Any]
    vocab: _Vocab
    model: Weights
    optimizer: _Optimizer
    schedule: _Schedule
    progress: Progress
    rng: _Rng
    carried_state: State | None = None
    grad_scaler: dict[str, Any] | None = None
    averager: _Averager | None = None
    ntasgd: _Averager | None = None
    run_id: str = ""

    def problems(self) -> list[str]:
        """Checks across fields."""
        found = []
        if "tokenizer" in tokenizer_class(self.vocab.kind).dict_keys and not self.vocab.tokenizer:
            found.append(
                "'vocab.tokenizer' should be the tokenizer JSON as a string, not "
                + describe(self.vocab.tokenizer)
            )
        for key, averager in (("averager", self.averager), ("ntasgd", self.ntasgd)):
            if averager is not None and averager.averaging and averager.raw is None:
                found.append(f"'{key}.raw' should be a non-empty dict of tensors, not None")
        return found


def check_archive(f: BinaryIO, path: Path) -> None:
    """`f` is a complete torch.save archive whose every member matches its CRC-32, or a
    CheckpointError. torch.load checks neither: a truncated file or random bytes could reach the
    unpickler, and a flipped bit in a tensor's bytes would load as a different weight."""
    try:
        damaged = zipfile.ZipFile(f).testzip()
    except Exception:  # noqa: BLE001 - any failure to parse the archive means the file is damaged
        raise CheckpointError(
            f"{path}: damaged or truncated checkpoint (not a complete torch.save archive); it "
            "cannot be read"
        ) from None
    if damaged is not None:
        raise CheckpointError(
            f"{path}: damaged checkpoint (its part {damaged!r} does not match its checksum); it "
            "cannot be read. Resume from another checkpoint of the run."
        )
    f.seek(0)


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
    dialect = FileDialect(unknown=f"'{{key}}': unknown field for format version {version}{{hint}}")
    # A field of the other version is unknown in this one; version 1 lacks the newer fields.
    other, required, counters = ("ntasgd",), ("averager", "run_id"), _PROGRESS
    if version == 1:
        other, required, counters = ("averager", "run_id"), (), _V1_REQUIRED_PROGRESS
    problems = [dialect.say(dialect.unknown, k, hint="") for k in other if k in raw]
    problems += [dialect.say(dialect.missing, k) for k in required if k not in raw]
    if isinstance(raw.get("progress"), dict):
        progress = raw["progress"]
        problems += [
            dialect.say(dialect.missing, f"progress.{n}") for n in counters if n not in progress
        ]
    try:
        disk = build_record(_OnDisk, raw, str(path), dialect=dialect)
    except RecordError as e:
        problems[:0] = e.problems
    if problems:
        raise CheckpointError(
            f"{path}: not a valid lmtrain checkpoint (format version {version}); "
            + joined(problems)
            + ". It cannot be used; resume from another checkpoint of the run."
        )
    _refuse_non_finite(disk, path)
    averager = raw.get("averager" if version >= 2 else "ntasgd")
    return Checkpoint(
        config=raw["config"],
        vocab=raw["vocab"],
        model=raw["model"],
        optimizer=raw["optimizer"],
        schedule=raw["schedule"],
        progress=disk.progress,
        rng=raw["rng"],
        carried_state=disk.carried_state,
        grad_scaler=disk.grad_scaler,
        averager=averager,
        run_id=disk.run_id,
        version=version,
    )


def non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """The tensors of `weights` that hold NaN or infinity, each named with how many values."""
    return [
        f"'{name}' ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)"
        for name, t in weights.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _refuse_non_finite(disk: _OnDisk, path: Path) -> None:
    """Weights with NaN or infinity would evaluate to `ppl nan`, sample from a NaN distribution
    and train on nothing but skipped steps: the file is refused before any work starts."""
    averager = disk.averager or disk.ntasgd
    weights = {f"model[{k}]": t for k, t in disk.model.items()}
    if averager is not None and averager.raw is not None:
        weights |= {f"averager.raw[{k}]": t for k, t in averager.raw.items()}
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(
            f"{path}: its weights are not finite: NaN or infinity in "
            + joined(bad, 3)
            + ". Training had diverged when it was written, so it cannot be evaluated, sampled, "
            "scored, exported or resumed. Resume from an earlier checkpoint of the run "
            "(lmtrain fit CONFIG --resume RUN/checkpoints/step-N.pt), with a lower train.lr."
        )
