"""Reading text: UTF-8 files with clear errors, and corpora that ship with Python itself.

A data spec is either a file path or `builtin:NAME[:SPLIT]`. The built-in corpus
`builtin:python-docs` is the English reference documentation inside every CPython
(`pydoc_data.topics`, about 465 K characters), so the demo trains on real text with nothing
downloaded. It is split by paragraphs into train / valid / test (90 / 5 / 5 % of characters); the
split defaults to the role the spec is used for (data.train -> train, data.valid -> valid, ...).

A one-file corpus such as Tiny Shakespeare is split the same way by naming the split after the
path: `input.txt:train`, `input.txt:valid`, `input.txt:test` (90 / 5 / 5 %, cut at paragraphs).
Paths may hold `${VAR}` environment variables (`${LMTRAIN_DATA}/wikitext-2/train.txt`), so a
shipped config works wherever the corpora live, and may start with `~`. Only regular files are
read: a pipe or a device is refused before a byte is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmtrain import files
from lmtrain.errors import DataError

if TYPE_CHECKING:
    from lmtrain.data.config import Inputs as Config

BUILTIN_PREFIX = "builtin:"
SPLITS = ("train", "valid", "test")
_SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
_UTF8_PIECE = 1 << 20


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


def text_utf8_bytes(text: str) -> int:
    """UTF-8 bytes of `text` (what bits per byte divides by), counted a piece at a time so that
    no second copy of the text is made."""
    if text.isascii():  # constant time in CPython: one byte per character
        return len(text)
    # surrogatepass: a lone surrogate (possible in a Python str) counts its 3 bytes, as the
    # character tokeniser keeps it as one character.
    return sum(
        len(text[i : i + _UTF8_PIECE].encode("utf-8", "surrogatepass"))
        for i in range(0, len(text), _UTF8_PIECE)
    )


def expand_vars(spec: str, key: str = "data path") -> str:
    """`spec` with every `${VAR}` replaced and a leading `~` expanded; unset = DataError."""
    try:
        return files.expand_user(files.expand_vars(spec))
    except files.UnsetVariableError as e:
        hint = (
            " (the directory holding wikitext-2/ and tinyshakespeare/, e.g. "
            "LMTRAIN_DATA=data after `lmtrain download wikitext-2 data`)"
            if e.name == "LMTRAIN_DATA"
            else ""
        )
        raise DataError(
            f"{key} {spec!r} uses ${{{e.name}}}, which is not set; export {e.name}=...{hint}"
        ) from None
    except ValueError as e:
        raise DataError(f"{key} {spec!r}: {e}") from None


def split_file_spec(spec: str) -> tuple[str, str | None]:
    """`path:split` -> (path, split) when split is train/valid/test; else (spec, None)."""
    path, sep, split = spec.rpartition(":")
    if sep and path and split in SPLITS:
        return path, split
    return spec, None


def is_builtin(spec: str) -> bool:
    return spec.startswith(BUILTIN_PREFIX)


def _builtin(spec: str, role: str) -> tuple[str, str]:
    """(name, split) of a `builtin:NAME[:SPLIT]` spec; DataError for an unknown name or split."""
    name, _, split = spec[len(BUILTIN_PREFIX) :].partition(":")
    split = split or role
    if name not in BUILTINS:
        raise DataError(
            f"unknown built-in corpus {spec!r}; available: "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTINS)
        )
    if split not in SPLITS:
        raise DataError(f"{spec!r}: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return name, split


def read_text(
    spec: str, role: str = "train", errors: str = "strict", *, origin: str = "in your config"
) -> str:
    """The text named by `spec` (a path or builtin corpus), decoded as UTF-8.

    `role` picks the split of a builtin corpus when the spec names none. `errors="replace"`
    turns undecodable bytes into U+FFFD instead of failing. `origin`: where the path was
    written, for the message of a missing file ("given to --data").
    """
    if is_builtin(spec):
        name, split = _builtin(spec, role)
        return _split_paragraphs(BUILTINS[name](), split)
    path, split = split_file_spec(expand_vars(spec))
    text = read_file(Path(path), errors, max_bytes=None, origin=origin)
    return text if split is None else _split_paragraphs(text, split)


def check_inputs(cfg: Config) -> list[str]:
    """A problem line for each data or vectors file of `cfg` that cannot be read.

    Each file is opened and at most one byte read, so that existence, type (no pipes or
    devices), permission and emptiness are checked as training will find them, without
    reading a corpus.
    """
    d = cfg.data
    inputs = [("data.train", d.train, "train"), ("data.valid", d.valid, "valid")]
    inputs += [("data.test", d.test, "test")]
    inputs += [("model.pretrained_embeddings", cfg.model.pretrained_embeddings, "")]
    inputs += [("data.tokenizer_file", d.tokenizer_file, "")]  # a FIFO would hang the BPE read
    problems: list[str] = []
    for key, spec, role in inputs:
        if spec is None:
            continue
        try:
            if role and is_builtin(spec):
                _builtin(spec, role)
                continue
            path = expand_vars(spec, key)
        except DataError as e:
            problems.append(str(e) if str(e).startswith(key) else f"{key}: {e}")
            continue
        if role:
            path = split_file_spec(path)[0]
        if (why := files.check_readable(Path(path))) is not None:
            problems.append(f"{key}: {path}: {why}")
    return problems


# `lmtrain score --file` reads sentences a person wrote; more than this is surely the wrong file.
TEXT_FILE_MAX_BYTES = 16 * 1024 * 1024


def read_file(
    path: Path,
    errors: str = "strict",
    max_bytes: int | None = TEXT_FILE_MAX_BYTES,
    *,
    origin: str = "in your config",
) -> str:
    """The UTF-8 text of a regular file of at most `max_bytes` (None: no limit, for corpora).
    `origin`: where the path was written, for the message of a missing file.

    Pipes, devices and sockets are refused before anything is read: a FIFO would hang and
    /dev/zero would be read until memory runs out.
    """
    try:
        raw, more = files.read_bounded(path, max_bytes)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path {origin}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; give the path of a text file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable") from None
    except files.NotRegularFileError as e:
        raise DataError(f"{path}: {e.advice}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if more:
        raise DataError(
            f"{path}: larger than {max_bytes // (1024 * 1024)} MB; this input takes a short "
            "text file (give a smaller file, or split it)"
        )
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
