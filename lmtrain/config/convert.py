"""Typed conversion of a plain mapping into the schema's dataclasses, and the fields' docs.

`build_dataclass` converts every field by its type hint, appending one `dotted.key: message`
problem per unknown key or wrong type (with the closest valid key) and keeping the default in
its place, so that every problem of a config is found in one pass. The command options
(lmtrain/config/commands.py) go through the same converter with `build_options`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import inspect
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from lmtrain.errors import ConfigError

# Every integer is a 64-bit count, size or seed somewhere (torch sizes, generators, counters).
MAX_INT = 2**63 - 1


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(names) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if _is_dataclass_type(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


def show_value(value: Any) -> str:
    """A short repr for messages: a huge or deeply nested value must not flood the terminal."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"<{type(value).__name__} too large to show>"


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Convert `value` to type `tp`, appending a message to `problems` on failure."""
    origin = typing.get_origin(tp)
    bad = object()
    result: Any = bad
    if _is_dataclass_type(tp):
        if isinstance(value, dict):
            return build_dataclass(tp, value, key, problems)
    elif origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(value, non_none[0], key, problems)
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{key}: expected {_type_name(tp)}, got {show_value(value)}{hint}")
            return None
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_convert(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            result = value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        elif isinstance(value, float) and value.is_integer():
            result = int(value)
        if result is not bad and not -MAX_INT <= result <= MAX_INT:
            problems.append(f"{key}: {show_value(value)} is out of range (at most 2**63 - 1)")
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                result = float(value)
            except OverflowError:  # an int beyond float range
                result = math.inf
        elif isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept what is plainly a number.
            with contextlib.suppress(ValueError):
                result = float(value)
        if result is not bad and not math.isfinite(result):
            problems.append(f"{key}: must be a finite number, got {show_value(value)}")
            return None
    elif tp is str and isinstance(value, str):
        result = value
    if result is bad:
        problems.append(
            f"{key}: expected {_type_name(tp)}, got {show_value(value)} ({type(value).__name__})"
        )
        return None
    return result


def build_dataclass(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = type_hints(cls)
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            close = difflib.get_close_matches(str(k), list(hints), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            valid = ", ".join(hints)
            problems.append(f"{key}: unknown key{hint} (valid keys here: {valid})")
            continue
        before = len(problems)
        value = _convert(v, hints[k], key, problems)
        if len(problems) == before or _is_dataclass_type(hints[k]) and value is not None:
            kwargs[k] = value
        # else: the problem is recorded; keep the default so the other checks still run
    return cls(**kwargs)


T = TypeVar("T")


def build_options(cls: type[T], raw: Mapping[str, Any] | None, where: str) -> T:
    """Command options of type `cls` (lmtrain.config.commands) from a mapping, checked like a config.

    An unknown key, a wrong type and every out-of-range value are gathered into one ConfigError
    whose keys start with `where` (e.g. `eval.batch_size`).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError([f"expected a mapping of options, got {type(raw).__name__}"], where)
    problems: list[str] = []
    options = build_dataclass(cls, dict(raw), where, problems)
    problems += options.problems() if hasattr(options, "problems") else []
    if problems:
        raise ConfigError(problems, where)
    return options


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings written under each field of `cls`, read from the source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs
