"""`lmtrain config`: every key and command option with its default and its one-line doc.

Everything printed comes from the schema (lmtrain/config/schema.py and commands.py), so a new
field appears here with its default and docstring and nothing else to update. The config keys
are printed as YAML and the command options as YAML comments, so that the whole output is still
a valid config: `lmtrain config > my.yaml` starts one to edit.
"""

from __future__ import annotations

import dataclasses

import yaml

from lmtrain.config.commands import COMMAND_OPTIONS
from lmtrain.config.schema import Config
from lmtrain.records import field_docs, type_hints

_COMMANDS_HEADER = [
    "# Command options: not config keys, but given on the command line, where key_name is",
    "# spelled --key-name: lmtrain eval RUN --batch-size 8",
]


def describe() -> str:
    """Every config key, then every command option, with its default and its one-line doc."""
    lines: list[str] = []
    for section in dataclasses.fields(Config):
        lines.append(f"{section.name}:  # {field_docs(Config)[section.name]}")
        lines += _field_lines(type_hints(Config)[section.name], "  ")
    lines += ["", *_COMMANDS_HEADER]
    for name, cls in COMMAND_OPTIONS.items():
        lines.append(f"# {name}:  # {cls.__doc__}")
        lines += _field_lines(cls, "#   ")
    return "\n".join(lines)


def _field_lines(cls: type, indent: str) -> list[str]:
    """`name: default  # doc` for each field of the dataclass `cls`."""
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            default = dataclasses.asdict(default)  # a nested section such as adaptive_softmax
        value = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...")
        lines.append(f"{indent}{f.name}: {value.strip()}  # {docs.get(f.name, '')}")
    return lines
