"""The recipes shipped inside the package: lmtrain/recipes/*.yaml (`configs/` in a checkout).

A recipe is an ordinary config file. Its header comment ends with a summary that
`lmtrain recipes` lists, one `key: value` per line:

    # Summary for `lmtrain recipes`:
    #   task: char LM, CPython's docs
    #   data: builtin:python-docs
    #   hardware: CPU, ~1 min
    #   result: valid 1.865 bits/char, test 1.752

Wherever a command takes a CONFIG file it also takes a recipe's name; a file of that name, or
./NAME.yaml (what `lmtrain init NAME` writes), when one exists, always wins.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmtrain import files
from lmtrain.errors import LmtrainError

RECIPES_DIR = Path(__file__).with_name("recipes")
SUMMARY_KEYS = ("task", "data", "hardware", "result")
_SUMMARY_LINE = re.compile(r"^#\s+(task|data|hardware|result):\s*(.*?)\s*$")


class RecipeError(LmtrainError):
    """An unknown recipe name, or a copy that would overwrite a file."""


@dataclass(frozen=True)
class Recipe:
    name: str
    """The file name without .yaml; what `lmtrain fit NAME` takes."""
    path: Path
    task: str
    data: str
    hardware: str
    result: str
    """The measured result, as the recipe's header states it."""


def _summary(path: Path) -> dict[str, str]:
    """The summary keys of the header: the comment lines before the first YAML line."""
    found: dict[str, str] = {}
    for line in _read(path).decode("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            break
        if m := _SUMMARY_LINE.match(line):
            found[m.group(1)] = m.group(2)
    return found


def _read(path: Path) -> bytes:
    """A shipped recipe's bytes (they are small: a bound keeps a broken install from hanging)."""
    return files.read_bounded(path, 1 << 20)[0]


def recipes() -> list[Recipe]:
    """Every shipped recipe, by name."""
    out = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        s = _summary(path)
        out.append(Recipe(path.stem, path, *(s.get(k, "?") for k in SUMMARY_KEYS)))
    return out


def names() -> list[str]:
    return [r.name for r in recipes()]


def find(name: str) -> Recipe:
    """The recipe called `name` (a trailing .yaml is allowed), or RecipeError listing them all."""
    stem = name.removesuffix(".yaml").removesuffix(".yml")
    for r in recipes():
        if r.name == stem:
            return r
    raise RecipeError(
        f"no recipe named {name!r}{_did_you_mean(stem)}; the recipes are: {', '.join(names())} "
        "(`lmtrain recipes` describes them)"
    )


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), names(), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class ConfigSource:
    """The file a CONFIG argument names, and a line saying which when the argument was a name."""

    path: Path
    note: str | None = None
    """"config: ..." naming the file a bare name stood for (./NAME.yaml or a shipped recipe);
    None for a path given as one."""


_SUFFIXES = (".yaml", ".yml")


def find_config(arg: str | Path) -> ConfigSource:
    """The file a CONFIG argument names: the path itself when it exists; for a bare NAME, the
    file ./NAME.yaml (then ./NAME.yml) when there is one, else the shipped recipe NAME.

    ./NAME.yaml comes before the recipe because it is what `lmtrain init NAME` writes for the
    user to edit: `lmtrain init quickstart`, an edit, then `lmtrain fit quickstart` trains the
    edited file. The note says which file was used, and where the recipe is if it was not.

    A path with a directory part (`configs/x.yaml`, `./x`) is always a path, so a typo there is
    reported as a missing file, not as an unknown recipe. A directory is never a config, so a
    folder that happens to share a recipe's name (a run directory called `quickstart`) does not
    hide the recipe. A leading `~` is the home directory, as in the shell (the Python API gets
    no shell to expand it).
    """
    path = Path(arg).expanduser()
    # Path("./x") drops its "./", which says "a path" as surely as "configs/x" does.
    if len(path.parts) != 1 or str(arg).startswith(("./", ".\\")) or path.is_file():
        return ConfigSource(path)
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    recipe = next((r for r in recipes() if r.name == stem), None)
    if stem == path.name:  # a bare NAME: the file init writes for it comes first
        for local in (path.with_name(stem + suffix) for suffix in _SUFFIXES):
            # Anything but a folder: a pipe or a dangling link is the loader's to name.
            if (local.exists() or local.is_symlink()) and not local.is_dir():
                instead = (
                    f"; not the shipped recipe {stem}, which is {recipe.path}"
                    if recipe is not None
                    else ""
                )
                return ConfigSource(local, f"config: {local} (the file in this folder{instead})")
    if recipe is not None:
        return ConfigSource(
            recipe.path, f"config: the shipped recipe {recipe.name} ({recipe.path})"
        )
    if path.exists():
        return ConfigSource(path)  # not a file and not a recipe: the config loader says what
    raise RecipeError(
        f"{arg}: no such file, and no recipe of that name"
        f"{_did_you_mean(stem)}; the recipes are: {', '.join(names())} (`lmtrain recipes` "
        "describes them)"
    )


def resolve_config(arg: str | Path) -> Path:
    """The file a CONFIG argument names (find_config, without its note)."""
    return find_config(arg).path


def copy_recipe(name: str, dest: str | Path | None = None) -> Path:
    """Write a copy of recipe `name` to edit; `dest` defaults to ./NAME.yaml, and a directory
    (an existing one, or a path ending in `/`) receives NAME.yaml. A leading `~` is the home
    directory. Never overwrites a file."""
    recipe = find(name)
    as_folder = dest is not None and str(dest).endswith(("/", os.sep))
    target = Path(dest).expanduser() if dest is not None else Path(f"{recipe.name}.yaml")
    if as_folder or target.is_dir():
        target = target / f"{recipe.name}.yaml"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (target.parent, *target.parent.parents) if p.is_file()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else e.strerror or str(e)
        raise RecipeError(
            f"{target}: cannot create its folder {target.parent} ({reason}); give another PATH"
        ) from None
    files.sweep_temps(target.parent, (target.name,))  # what a copy killed mid-write left
    try:
        # Exclusive: a file that appears under the name meanwhile is never replaced.
        with files.atomic_write(target, exclusive=True) as f:
            f.write(_read(recipe.path))
    except FileExistsError:
        raise RecipeError(
            f"{target}: already exists; lmtrain init never overwrites a file. Give another "
            "PATH, or remove that file first."
        ) from None
    return target


def table(items: list[Recipe]) -> str:
    """One aligned line per recipe, under a heading line."""
    rows = [("name", *SUMMARY_KEYS)]
    rows += [(r.name, r.task, r.data, r.hardware, r.result) for r in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]))  # the last column is not padded
    return "\n".join(lines)
