"""Command options from a mapping, checked like a config, by the base layer's record reader
(lmtrain/records.py, which also converts the config itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from lmtrain.errors import ConfigError
from lmtrain.records import RecordError, build_record

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
    try:
        return build_record(cls, raw, where, prefix=where)
    except RecordError as e:
        raise ConfigError(e.problems, where) from None
