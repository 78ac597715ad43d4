"""Strict YAML: duplicate keys refused, alias expansion bounded, and dotted overrides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from lmtrain.errors import ConfigError
from lmtrain.records import show_value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a {type(key).__name__} cannot be a key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# A config holds about a hundred values. Anchors and aliases are allowed (`test: *valid`), but
# what they expand to is counted: a 1 KB "billion laughs" of nested aliases would otherwise expand
# into a structure far larger than memory when the sections are copied and converted.
MAX_YAML_VALUES = 10_000
# A config is a few KB of YAML; a file much larger than this is not one (or not the right one).
CONFIG_MAX_BYTES = 1024 * 1024


class TooManyValues(Exception):
    """The YAML, with its aliases expanded, holds more than MAX_YAML_VALUES values."""


def _expanded_size(node: yaml.Node) -> int:
    """Values in `node` once every alias is expanded, counting up to just past the limit.

    Shared nodes (what an alias points at) are sized once, so this is linear in the document
    even when the expansion is exponential. A node inside itself expands without end.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise TooManyValues("an alias refers to a node that contains it")
        open_nodes.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for child in children:
            total = min(total + size(child), MAX_YAML_VALUES + 1)
        open_nodes.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def load_yaml(text: str) -> Any:
    """Parse one YAML document strictly; TooManyValues when its aliases expand too far."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise TooManyValues(
                f"its anchors and aliases expand to more than {MAX_YAML_VALUES:,} values "
                "(a config has about a hundred); write the values out instead of nesting aliases"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> Any:
    try:
        return load_yaml(text)
    except TooManyValues as e:
        raise ConfigError([f"refused: {e}"], source) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}".replace("\n", " ")], source) from None
    except RecursionError:
        raise ConfigError(["YAML nested too deeply"], source) from None
    except ValueError as e:  # e.g. an integer literal past Python's digit limit
        raise ConfigError([f"not valid YAML: {e}"], source) from None


def apply_overrides(
    raw: dict[str, Any],
    overrides: list[str],
    problems: list[str],
    typed_as_text: Callable[[str, str, Any], bool] = lambda key, text, value: False,
) -> None:
    """Apply `a.b=value` overrides (value parsed as YAML) to the nested dict `raw` in place.

    `typed_as_text(key, text, value)`: whether the override of `key` means the `text` typed
    rather than `value`, YAML's reading of it (a text field given `ROMEO:`, which YAML reads as
    the mapping {ROMEO: None}, or `123`, `true`, `[a]`).
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected KEY=VALUE such as train.lr=0.5")
            continue
        try:
            value = load_yaml(text) if text.strip() else ""
        except TooManyValues as e:
            problems.append(f"override {show_value(item)}: refused: {e}")
            continue
        except (yaml.YAMLError, RecursionError, ValueError):
            value = text  # not YAML: take it as a plain string, the schema decides
        if typed_as_text(key, text, value):
            value = text
        *parents, leaf = key.split(".")
        node = raw
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
                break
            node = child
        else:
            node[leaf] = value
