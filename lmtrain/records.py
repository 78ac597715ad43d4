"""Typed records from plain mappings: the one reader of every record lmtrain keeps on disk (the
config and command options, a checkpoint, the run manifest, a prepared file's header, metrics).

`build_record(cls, raw, where)` converts every field of the dataclass `cls` by its type hint and
gathers every problem (an unknown key with the closest valid one, a wrong type, a number out of
range, a missing field) into one `RecordError`, each named by its dotted key. A `Dialect` words
the problems the way its file's users read them (the config's `key: expected X, got V`, or a
file's `'key' should be X, not V`). Leaf types this base layer does not know, such as a tensor,
are declared by the caller as `Annotated[T, Leaf("a tensor", check)]`, and a name from a table
that grows at run time (a kind a plugin registers) as `Annotated[str, OneOf(TABLE)]`. The module
is a little long because the converter and the dialects it speaks are one piece.
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
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, Union

from lmtrain.errors import LmtrainError

# Every integer is a 64-bit count, size or seed somewhere (torch sizes, generators, counters).
MAX_INT = 2**63 - 1

T = TypeVar("T")


class RecordError(LmtrainError):
    """Every problem of one record, reported together (worded like a `ConfigError`)."""

    def __init__(self, problems: list[str], where: str) -> None:
        self.problems, self.where = list(problems), where
        lines = [f"{where}: {len(self.problems)} problem(s) found:"]
        super().__init__("\n".join(lines + [f"  - {p}" for p in self.problems]))


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A field type checked by the caller: `Annotated[T, Leaf(expected, check)]`.

    The value is converted as `T` first (`Any` takes it as it is); a value that is no `T` is
    worded as "expected". `check` then gets the converted value and returns the field's value,
    or raises ValueError or TypeError: the problem is the exception's message where it has one
    ("lists a token twice"), else it says `expected` again.
    """

    expected: str
    check: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class OneOf:
    """A field whose values are the keys of a live table: `Annotated[str, OneOf(TABLE)]`.

    Checked as `Literal[...]` of the keys the table holds at check time, with the same messages
    and did-you-mean, so that a name added later (a `register()` call) is accepted and the
    names are written once, in the table.
    """

    table: Mapping[str, Any]

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.table)

    def literal(self) -> Any:
        """The `Literal` of today's keys, which the converter checks the value against."""
        return Literal[self.choices]


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The values a `Literal[...]` or `Annotated[str, OneOf(...)]` field type allows, else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    one_of = _one_of(tp)
    return None if one_of is None else one_of.choices


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80


def show_value(value: Any) -> str:
    """A short repr for messages: a huge or deeply nested value must not flood the terminal."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"<{type(value).__name__} too large to show>"


@dataclasses.dataclass(frozen=True)
class Dialect:
    """How one kind of record words its problems: templates filled with the dotted `key`, the
    value `shown` (repr) or `described` (with its type), its `type`, a `hint`, a `message`.
    The default is the config's (and the command options'): `key: expected X, got V (type)`."""

    wrong: str = "{key}: expected {expected}, got {shown} ({type})"
    not_one_of: str = "{key}: expected {expected}, got {shown}{hint}"
    invalid: str = "{key}: {message}"
    out_of_range: str = "{key}: {shown} is out of range (at most 2**63 - 1)"
    not_finite: str = "{key}: must be a finite number, got {shown}"
    unknown: str = "{key}: unknown key{hint} (valid keys here: {valid})"
    missing: str = "{key}: missing"
    mapping: str = "a mapping"
    """What a nested record or a dict is called ("a mapping", "a dict", "an object")."""
    list_of: str = "a list of {item}"
    truth: str = "true or false"
    item: str = "{key}[{name}]"
    """The key of one entry of a dict or list."""
    finite_floats: bool = True
    """A float field refuses NaN and infinity (a checkpoint's best loss starts at infinity)."""

    def say(self, template: str, key: str, value: Any = None, **more: Any) -> str:
        shown, kind, described = show_value(value), type(value).__name__, describe(value)
        return template.format(key=key, shown=shown, type=kind, described=described, **more)

    def type_name(self, tp: Any) -> str:
        origin = typing.get_origin(tp)
        if origin is Literal:
            return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
        if origin in (Union, types.UnionType):
            names = [self.type_name(a) for a in typing.get_args(tp) if a is not type(None)]
            return " or ".join(names) + " or null"
        if origin is list:
            return self.list_of.format(item=self.type_name(typing.get_args(tp)[0]))
        if origin is Annotated:
            one_of = _one_of(tp)
            return _leaf(tp).expected if one_of is None else self.type_name(one_of.literal())
        if _is_dataclass_type(tp) or origin is dict or tp is dict:
            return self.mapping
        names = {int: "an integer", float: "a number", bool: self.truth, str: "a string"}
        return names.get(tp, str(tp))


@dataclasses.dataclass(frozen=True)
class FileDialect(Dialect):
    """A file lmtrain wrote (checkpoint, manifest): `'key' should be X, not str 'v'`."""

    wrong: str = "'{key}' should be {expected}, not {described}"
    not_one_of: str = "'{key}' should be {expected}, not {described}{hint}"
    invalid: str = "'{key}': {message}"
    out_of_range: str = "'{key}' should be a whole number of at most 2**63 - 1, not {described}"
    unknown: str = "'{key}': unknown field{hint}"
    missing: str = "'{key}' is missing"
    mapping: str = "a dict"
    list_of: str = "a list, each item {item}"
    truth: str = "a bool"
    finite_floats: bool = False


CONFIG = Dialect()


def _not_negative(n: int) -> int:
    if n < 0:
        raise ValueError
    return n


Count = Annotated[int, Leaf("a whole number >= 0", _not_negative)]
"""A counter, size or step number as a file holds it."""


def describe(value: Any) -> str:
    """A value as a file's problem names it: `None`, `str '7'`, `a torch.float32 tensor ...`."""
    if value is None:
        return "None"
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {show_value(value)}"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _one_of(tp: Any) -> OneOf | None:
    return next((m for m in getattr(tp, "__metadata__", ()) if isinstance(m, OneOf)), None)


def _leaf(tp: Any) -> Leaf:
    leaves = [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, Leaf)]
    assert leaves, f"{tp}: an Annotated field type needs a Leaf or a OneOf"
    return leaves[0]


def _convert(value: Any, tp: Any, key: str, problems: list[str], d: Dialect) -> Any:
    """Convert `value` to type `tp`, appending a message (in dialect `d`) to `problems` on failure."""
    origin = typing.get_origin(tp)
    bad = object()
    result: Any = bad
    if _is_dataclass_type(tp):
        if isinstance(value, dict):
            return build_dataclass(tp, value, key, problems, d)
    elif origin is Annotated and (one_of := _one_of(tp)) is not None:
        return _convert(value, one_of.literal(), key, problems, d)
    elif origin is Annotated:
        leaf, inner = _leaf(tp), []
        result = _convert(value, typing.get_args(tp)[0], key, inner, d)
        if inner:  # the value is no T (worded by the leaf), or some of its items are wrong
            problems += (
                [d.say(d.wrong, key, value, expected=leaf.expected)] if result is None else inner
            )
            return result
        try:
            return leaf.check(result)
        except (TypeError, ValueError) as e:
            message = str(e)
            said = d.say(d.invalid, key, message=message) if message else None
            problems.append(said or d.say(d.wrong, key, value, expected=leaf.expected))
            return None
    elif tp is Any:
        return value
    elif origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(value, non_none[0], key, problems, d)
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(d.say(d.not_one_of, key, value, expected=d.type_name(tp), hint=hint))
            return None
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, list):
            return [
                _convert(v, item_tp, d.item.format(key=key, name=i), problems, d)
                for i, v in enumerate(value)
            ]
    elif origin is dict or tp is dict:
        key_tp, item_tp = typing.get_args(tp) or (Any, Any)
        if isinstance(value, dict):
            return {
                _convert(k, key_tp, key, problems, d): _convert(
                    v, item_tp, d.item.format(key=key, name=k), problems, d
                )
                for k, v in value.items()
            }
    elif tp is bool:
        if isinstance(value, bool):
            result = value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        elif isinstance(value, float) and value.is_integer():
            result = int(value)
        if result is not bad and not -MAX_INT <= result <= MAX_INT:
            problems.append(d.say(d.out_of_range, key, value))
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
        if result is not bad and d.finite_floats and not math.isfinite(result):
            problems.append(d.say(d.not_finite, key, value))
            return None
    elif tp is str and isinstance(value, str):
        result = value
    if result is bad:
        problems.append(d.say(d.wrong, key, value, expected=d.type_name(tp)))
        return None
    return result


def build_dataclass(
    cls: type, raw: dict[str, Any], prefix: str, problems: list[str], dialect: Dialect = CONFIG
) -> Any:
    """`cls` from `raw`, each problem appended to `problems` with the default kept in its place,
    so that every problem is found in one pass. None where a field without a default is missing.
    """
    hints, d = type_hints(cls), dialect
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            close = difflib.get_close_matches(str(k), list(hints), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""
            problems.append(d.say(d.unknown, key, hint=hint, valid=", ".join(hints)))
            continue
        before = len(problems)
        value = _convert(v, hints[k], key, problems, d)
        if len(problems) == before or _is_dataclass_type(hints[k]) and value is not None:
            kwargs[k] = value
        # else: the problem is recorded; keep the default so the other checks still run
    missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in raw]
    problems += [d.say(d.missing, f"{prefix}.{name}" if prefix else name) for name in missing]
    if any(_required(f) and f.name not in kwargs for f in dataclasses.fields(cls)):
        return None  # a field without a default was missing or refused
    return cls(**kwargs)


def _required(f: dataclasses.Field[Any]) -> bool:
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return f.init and no_default


def joined(problems: list[str], limit: int = 10) -> str:
    """The first `limit` problems on one line, and how many more there are."""
    more = len(problems) - limit
    return "; ".join(problems[:limit]) + (f"; and {more} more" if more > 0 else "")


def build_record(
    cls: type[T], raw: Any, where: str, *, prefix: str = "", dialect: Dialect = CONFIG
) -> T:
    """The record `cls` read from `raw`, or a RecordError naming every problem at once.

    A record's own `problems()` (checks across fields), if it has one, is asked as well.
    """
    if not isinstance(raw, Mapping):
        raise RecordError([f"expected {dialect.mapping} of fields, not {describe(raw)}"], where)
    problems: list[str] = []
    record = build_dataclass(cls, dict(raw), prefix, problems, dialect)
    if record is not None and hasattr(record, "problems"):
        problems += record.problems()
    if problems:
        raise RecordError(problems, where)
    return record


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


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
