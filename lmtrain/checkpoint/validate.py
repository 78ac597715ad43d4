"""Validation on load: a checkpoint's on-disk dict checked field by field, of any supported
format version. A missing or mistyped field, a file from a newer lmtrain or a tensor of the wrong
kind is a `CheckpointError` naming every problem at once, never a KeyError later on. Version 1
files (written before the format had a version of its own schema) still load.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from lmtrain.checkpoint.format import FORMAT, VERSION, Checkpoint, Progress
from lmtrain.errors import CheckpointError

# Counters a version-1 file always holds; the others were added later and default.
_V1_REQUIRED_PROGRESS = ("step", "epoch", "batch_in_epoch", "tokens")


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
        if d.get("kind") not in ("char", "word", "byte", "bpe"):
            self._bad("vocab.kind", "'char', 'word', 'byte' or 'bpe'", d.get("kind"))
        tokenizer = d.get("tokenizer")
        if d.get("kind") == "bpe" and (not isinstance(tokenizer, str) or not tokenizer):
            self._bad("vocab.tokenizer", "the tokenizer JSON as a string", tokenizer)
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
