"""Reading text: UTF-8 files with clear errors, and corpora that ship with Python itself.

A data spec is either a file path or `builtin:NAME[:SPLIT]`. The built-in corpus
`builtin:python-docs` is the English reference documentation inside every CPython
(`pydoc_data.topics`, about 465 K characters), so the demo trains on real text with nothing
downloaded. It is split by paragraphs into train / valid / test (90 / 5 / 5 % of characters); the
split defaults to the role the spec is used for (data.train -> train, data.valid -> valid, ...).

A one-file corpus such as Tiny Shakespeare is split the same way by naming the split after the
path: `input.txt:train`, `input.txt:valid`, `input.txt:test` (90 / 5 / 5 %, cut at paragraphs).
Paths may hold `${VAR}` environment variables (`${LMTRAIN_DATA}/wikitext-2/train.txt`), so a
shipped config works wherever the corpora live.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lmtrain.errors import DataError

BUILTIN_PREFIX = "builtin:"
SPLITS = ("train", "valid", "test")
_SPLIT_FRACTIONS = (0.90, 0.05, 0.05)


def _python_docs() -> str:
    from pydoc_data.topics import topics

    # Sorted so the text (and therefore the split) is the same on every run.
    return "".join(topics[k] for k in sorted(topics))


BUILTINS = {"python-docs": _python_docs}


def _split_paragraphs(text: str, split: str) -> str:
    """Contiguous train/valid/test ranges, cut at the paragraph boundary nearest each fraction."""
    cuts = [0]
    acc = 0.0
    for frac in _SPLIT_FRACTIONS[:-1]:
        acc += frac
        target = int(len(text) * acc)
        boundary = text.find("\n\n", target)
        if boundary < 0:  # no blank line after the target (e.g. WikiText's " \n"): a line end
            line = text.find("\n", target)
            cuts.append(len(text) if line < 0 else line + 1)
        else:
            cuts.append(boundary + 2)
    cuts.append(len(text))
    i = SPLITS.index(split)
    return text[cuts[i] : cuts[i + 1]]


_VAR = re.compile(r"\$\{(\w+)\}")


def expand_vars(spec: str, key: str = "data path") -> str:
    """`spec` with every `${VAR}` replaced by the environment variable; unset = DataError."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            hint = (
                " (the directory holding wikitext-2/ and tinyshakespeare/, e.g. "
                "LMTRAIN_DATA=data after scripts/download_data.sh)"
                if m.group(1) == "LMTRAIN_DATA"
                else ""
            )
            raise DataError(
                f"{key} {spec!r} uses ${{{m.group(1)}}}, which is not set; "
                f"export {m.group(1)}=...{hint}"
            )
        return value

    return _VAR.sub(sub, spec)


def split_file_spec(spec: str) -> tuple[str, str | None]:
    """`path:split` -> (path, split) when split is train/valid/test; else (spec, None)."""
    path, sep, split = spec.rpartition(":")
    if sep and path and split in SPLITS:
        return path, split
    return spec, None


def is_builtin(spec: str) -> bool:
    return spec.startswith(BUILTIN_PREFIX)


def read_text(spec: str, role: str = "train", errors: str = "strict") -> str:
    """The text named by `spec` (a path or builtin corpus), decoded as UTF-8.

    `role` picks the split of a builtin corpus when the spec names none. `errors="replace"`
    turns undecodable bytes into U+FFFD instead of failing.
    """
    if is_builtin(spec):
        name, _, split = spec[len(BUILTIN_PREFIX) :].partition(":")
        split = split or role
        if name not in BUILTINS:
            raise DataError(
                f"unknown built-in corpus {spec!r}; available: "
                + ", ".join(BUILTIN_PREFIX + n for n in BUILTINS)
            )
        if split not in SPLITS:
            raise DataError(f"{spec!r}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return _split_paragraphs(BUILTINS[name](), split)
    path, split = split_file_spec(expand_vars(spec))
    text = read_file(Path(path), errors)
    return text if split is None else _split_paragraphs(text, split)


def read_file(path: Path, errors: str = "strict") -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path in your config") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; give the path of a text file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if b"\x00" in raw[:65536]:
        raise DataError(
            f"{path}: looks like a binary file (it contains NUL bytes); give a UTF-8 text file"
        )
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {e.start} ({raw[e.start : e.start + 4]!r}); "
            "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or set data.decode_errors: replace"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty or holds only whitespace; it has no text")
    return text
