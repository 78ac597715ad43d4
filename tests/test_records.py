"""The one record reader (lmtrain/records.py): every problem of a record at once, by dotted key,
in the wording of its file; leaf types declared by the caller; the base layer imports nothing
of lmtrain's but its errors."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import torch

import lmtrain.records as records
from lmtrain.errors import ConfigError
from lmtrain.records import FileDialect, Leaf, OneOf, RecordError, build_record, joined


def _even(n: int) -> int:
    if n % 2:
        raise ValueError(f"{n} is odd")
    return n


Even = Annotated[int, Leaf("an even number", _even)]


@dataclass
class Inner:
    size: Even
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str
    inner: Inner
    table: dict[str, float] = field(default_factory=dict)
    limit: int = 0


def _problems(raw: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(RecordError) as e:
        build_record(Outer, raw, "thing.json", **kwargs)
    return e.value.problems


def test_a_valid_record_is_built_with_its_types():
    out = build_record(Outer, {"name": "x", "inner": {"size": 4}, "table": {"a": 1}}, "w")
    assert out == Outer("x", Inner(4), {"a": 1.0})
    assert type(out.table["a"]) is float


def test_every_problem_is_named_at_once_by_dotted_key():
    raw = {
        "nmae": "x",
        "inner": {"size": "4", "names": ["a", 7]},
        "table": {"a": "many"},
        "limit": 2**64,
    }
    assert _problems(raw) == [
        "nmae: unknown key; did you mean 'name'? (valid keys here: name, inner, table, limit)",
        "inner.size: expected an even number, got '4' (str)",
        "inner.names[1]: expected a string, got 7 (int)",
        "table[a]: expected a number, got 'many' (str)",
        "limit: 18446744073709551616 is out of range (at most 2**63 - 1)",
        "name: missing",
    ]


def test_a_leaf_check_says_why_in_its_own_words():
    assert _problems({"name": "x", "inner": {"size": 3}}) == ["inner.size: 3 is odd"]


def test_a_file_dialect_words_problems_as_a_file_does():
    dialect = FileDialect(unknown="'{key}': unknown field for format version 2{hint}")
    raw = {"name": None, "inner": {"size": torch.zeros(2)}, "extra": 1, "table": [1]}
    assert _problems(raw, dialect=dialect) == [
        "'name' should be a string, not None",
        "'inner.size' should be an even number, not a torch.float32 tensor of shape (2,)",
        "'extra': unknown field for format version 2",
        "'table' should be a dict, not list [1]",
    ]


def test_record_error_reads_like_a_config_error():
    problems = ["a: missing", "b: expected an integer, got 'x' (str)"]
    assert str(RecordError(problems, "where")) == str(ConfigError(problems, "where"))
    with pytest.raises(RecordError, match="expected a mapping of fields, not list"):
        build_record(Outer, [1], "w")


def test_a_long_list_of_problems_is_cut_short():
    assert joined([f"p{i}" for i in range(4)], 2) == "p0; p1; and 2 more"
    assert joined(["p0", "p1"], 2) == "p0; p1"


def test_records_sits_in_the_base_layer():
    tree = ast.parse(Path(records.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert {m for m in imported if m.startswith("lmtrain")} == {"lmtrain.errors"}
    assert "torch" not in imported


KINDS: dict[str, object] = {"sgd": object(), "adam": object()}


@dataclass
class Picked:
    kind: Annotated[str, OneOf(KINDS)] = "sgd"
    fixed: Literal["sgd", "adam"] = "sgd"
    kinds: list[Annotated[str, OneOf(KINDS)]] = field(default_factory=list)


def _picked(raw: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(RecordError) as e:
        build_record(Picked, raw, "w", **kwargs)
    return e.value.problems


@pytest.mark.parametrize("dialect", [records.CONFIG, FileDialect()], ids=["config", "file"])
@pytest.mark.parametrize("value", ["adamm", "ADAM", "zzz", 3, None, ["sgd"], {"a": 1}, True])
def test_a_name_of_a_live_table_is_worded_as_the_same_literal(dialect, value) -> None:
    """OneOf(TABLE) says exactly what Literal[...] of the table's names says."""
    as_one_of = _picked({"kind": value}, dialect=dialect)
    as_literal = _picked({"fixed": value}, dialect=dialect)
    assert as_one_of == [p.replace("fixed", "kind") for p in as_literal]
    assert "one of 'sgd', 'adam'" in as_one_of[0]


def test_a_name_added_to_the_table_later_is_accepted(monkeypatch) -> None:
    with pytest.raises(RecordError, match="did you mean 'adam'"):
        build_record(Picked, {"kind": "adamw"}, "w")
    monkeypatch.setitem(KINDS, "adamw", object())
    assert build_record(Picked, {"kind": "adamw", "kinds": ["adamw", "sgd"]}, "w") == Picked(
        "adamw", "sgd", ["adamw", "sgd"]
    )
    assert _picked({"kinds": ["sgd", "lion"]}) == [
        "kinds[1]: expected one of 'sgd', 'adam', 'adamw', got 'lion'"
    ]
    hints = records.type_hints(Picked)
    assert records.choices(hints["kind"]) == ("sgd", "adam", "adamw")
    assert records.choices(hints["fixed"]) == ("sgd", "adam")
    assert records.choices(hints["kinds"]) is None
    assert records.CONFIG.type_name(hints["kind"]) == "one of 'sgd', 'adam', 'adamw'"
