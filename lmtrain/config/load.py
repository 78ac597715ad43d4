"""From YAML text or a mapping, plus dotted overrides, to a validated Config.

The path of one value, e.g. `train.lr`: the file is read (bounded in size, UTF-8) and parsed by a
strict YAML loader (lmtrain/config/yamlfile.py); `train.lr=0.5` overrides are merged into the
mapping; `build_dataclass` converts each section by the schema's type hints; paths are expanded;
then the range and cross-field checks run. Every problem found on the way is gathered into one
ConfigError.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmtrain.config.checks import check_ranges
from lmtrain.config.schema import Config
from lmtrain.config.yamlfile import CONFIG_MAX_BYTES, apply_overrides, parse_yaml
from lmtrain.errors import ConfigError
from lmtrain.files import (
    NotRegularFileError,
    UnsetVariableError,
    expand_user,
    expand_vars,
    read_bounded,
)
from lmtrain.records import build_dataclass, type_hints


def config_from_dict(
    raw: Any,
    overrides: list[str] | None = None,
    source: str = "config",
    expand_paths: bool = False,
    checks: Callable[[Config], list[str]] | None = None,
) -> Config:
    """Build and validate a Config from a plain mapping plus dotted overrides.

    `expand_paths` expands `~` and `${VAR}` in run.dir and data.cache_dir, as a config a person
    wrote needs (load_config sets it). The result keeps the expanded directories, so the config
    saved in the run works later without the variable; a saved config is already expanded and
    is rebuilt as it is. Data paths keep their `${VAR}` so that a saved config stays portable; they are
    expanded when read. `checks` adds problems found outside the schema (files, device,
    memory), so that `lmtrain validate` reports them in the same list.
    """
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"the top level must be a mapping of sections, got {type(raw).__name__}"], source
        )
    try:
        raw = _deep_copy_dicts(raw)
    except RecursionError:  # a mapping that contains itself (YAML anchors can build one)
        raise ConfigError(["nested too deeply or refers to itself"], source) from None
    for name, value in raw.items():
        if name in type_hints(Config) and value is None:
            raw[name] = {}  # an empty section (`train:` with nothing under it) means defaults
    apply_overrides(raw, overrides or [], problems, _typed_as_text)
    cfg = build_dataclass(Config, raw, "", problems)
    if expand_paths:
        cfg = _expand_run_dir(cfg, problems)
    # Range checks run on the values that converted; a key already reported is not re-reported.
    reported = {p.split(":", 1)[0] for p in problems}
    problems += [p for p in check_ranges(cfg) if p.split(":", 1)[0] not in reported]
    if checks is not None:
        reported = {p.split(":", 1)[0] for p in problems}
        problems += [p for p in checks(cfg) if p.split(":", 1)[0] not in reported]
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _typed_as_text(key: str, text: str, value: Any) -> bool:
    """Whether an override means the text typed rather than `value`, YAML's reading of it: the
    key is a text field (of type str, or str | None) and the text is not a quoted YAML string.
    YAML would read `run.sample_prompt=ROMEO:` as the mapping {'ROMEO': None}, `=123` as 123,
    `=true` as True and `=The ` as 'The', none of which a field that takes only text can mean;
    a quoted string ("The ") keeps its quotes' meaning, and null its own where the field takes
    it. Fields of other types keep the YAML reading (0.5, true, [wandb])."""
    hint: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(hint):
            return False
        hint = type_hints(hint).get(part)  # type: ignore[arg-type]
    nullable = typing.get_origin(hint) in (typing.Union, types.UnionType) and set(
        typing.get_args(hint)
    ) == {str, type(None)}
    if hint is not str and not nullable:
        return False
    if value is None and nullable:
        return False
    quoted = isinstance(value, str) and text.lstrip().startswith(("'", '"'))
    return not quoted


def _expand_run_dir(cfg: Config, problems: list[str]) -> Config:
    """`cfg` with `~` and `${VAR}` expanded in run.dir and data.cache_dir (an unset variable is a
    problem) and in the data paths where their variables are set (see expand_path_if_set)."""
    try:
        expanded = expand_user(expand_vars(cfg.run.dir))
    except UnsetVariableError as e:
        problems.append(
            f"run.dir: {cfg.run.dir!r} uses ${{{e.name}}}, which is not set; "
            f"export {e.name}=... or write the directory out"
        )
        return cfg
    except ValueError as e:
        problems.append(f"run.dir: {e}")
        return cfg
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dir=expanded))
    d = cfg.data
    cache_dir = d.cache_dir
    if cache_dir is not None and cache_dir != "auto":  # `auto` is resolved when data is read
        try:
            cache_dir = expand_user(expand_vars(cache_dir))
        except UnsetVariableError as e:
            problems.append(
                f"data.cache_dir: {cache_dir!r} uses ${{{e.name}}}, which is not set; "
                f"export {e.name}=... or write the directory out"
            )
        except ValueError as e:
            problems.append(f"data.cache_dir: {e}")
    data = dataclasses.replace(
        d,
        train=expand_path_if_set(d.train),
        valid=_maybe(d.valid),
        test=_maybe(d.test),
        tokenizer_file=_maybe(d.tokenizer_file),
        cache_dir=cache_dir,
    )
    vectors = _maybe(cfg.model.pretrained_embeddings)
    return dataclasses.replace(
        cfg, data=data, model=dataclasses.replace(cfg.model, pretrained_embeddings=vectors)
    )


def expand_path_if_set(spec: str) -> str:
    """A data path with `~` and `${VAR}` expanded when every variable is set, else unchanged.

    The run's saved config then names the files themselves, so `lmtrain eval RUN` reads
    data.test later without the variable; an unset one is left for the read to report, naming
    the file, as it did before (a config whose data.test is never read still trains).
    """
    try:
        return expand_user(expand_vars(spec))
    except (UnsetVariableError, ValueError):
        return spec


def _maybe(spec: str | None) -> str | None:
    return None if spec is None else expand_path_if_set(spec)


def _deep_copy_dicts(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy_dicts(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_config(
    path: str | Path,
    overrides: list[str] | None = None,
    checks: Callable[[Config], list[str]] | None = None,
) -> Config:
    """Read a YAML config file, apply dotted overrides and validate everything at once.

    `~` and `${VAR}` in run.dir are expanded; `checks` as in config_from_dict.
    """
    path = Path(path)
    source = str(path)
    try:
        data, more = read_bounded(path, CONFIG_MAX_BYTES)
    except FileNotFoundError:
        raise ConfigError(["file not found; check the path"], source) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory; give a YAML file"], source) from None
    except NotRegularFileError as e:
        raise ConfigError([e.advice], source) from None
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror}"], source) from None
    if more:
        raise ConfigError(
            [
                f"larger than {CONFIG_MAX_BYTES // 1024} KB; a config is a few KB of YAML "
                "(is this the right file?)"
            ],
            source,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not UTF-8 text (byte offset {e.start})"], source) from None
    return config_from_dict(parse_yaml(text, source), overrides, source, True, checks)
