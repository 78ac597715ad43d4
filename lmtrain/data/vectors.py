"""Pretrained word vectors: GloVe text, word2vec text and word2vec binary files.

Formats (detected from the first bytes unless `model.pretrained_format` names one):

    glove            word v1 v2 ... vD            one word per line, no header
    word2vec_text    N D                          header line, then lines as in GloVe
    word2vec_binary  N D\\n                        header line, then per word: the word's UTF-8
                     word<space><D little-endian float32>[\\n]   bytes, a space, raw floats

Every vocabulary word is looked up by its exact key; only those rows are kept in memory, so a
multi-GB file costs one pass, not its size in RAM. Words that are not found keep their random
initialisation and `<pad>` stays zero. The coverage (found / missing, with the most frequent
missing words) is reported, because a low figure usually means a tokeniser mismatch
(case, `<unk>` / `<eos>` spellings) rather than a bad file.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from lmtrain.data.config import VectorSettings
from lmtrain.data.corpus import expand_vars
from lmtrain.data.tokenizers import Tokenizer
from lmtrain.errors import DataError
from lmtrain.files import NotRegularFileError, open_regular

FORMATS = ("glove", "word2vec_text", "word2vec_binary")
_HEADER = re.compile(rb"\s*(\d+)\s+(\d+)\s*")
# Released vectors have at most a few thousand dimensions; a larger header is a damaged file, and
# reading one vector of it would allocate that much memory at once.
MAX_DIM = 100_000
_MAX_HEADER = 256


def _header(line: bytes, path: Path, what: str) -> tuple[int, int]:
    """(count, dim) from a word2vec header line; DataError when it is missing or absurd."""
    m = _HEADER.fullmatch(line)
    if m is None:
        raise DataError(f"{path}: {what} needs a first line 'COUNT DIM'")
    count, dim = int(m.group(1)), int(m.group(2))
    if not 1 <= dim <= MAX_DIM:
        raise DataError(f"{path}: the header says {dim} dimensions; expected 1 to {MAX_DIM:,}")
    return count, dim


@dataclass
class Vectors:
    format: str
    dim: int
    vectors: dict[str, torch.Tensor]
    """Only the requested words that the file holds."""
    total: int
    """Words in the file."""


def detect_format(path: Path) -> str:
    """glove, word2vec_text or word2vec_binary, from the file's first two lines."""
    with _open(path) as f:
        first = f.readline(_MAX_HEADER)
        if _HEADER.fullmatch(first) is None:
            return "glove"
        dim = _header(first, path, "word2vec")[1]
        second = f.read(64 * (dim + 1) + 4096).split(b"\n", 1)[0]
    try:
        parts = second.decode("utf-8").rstrip().split(" ")
        [float(v) for v in parts[-dim:]]
    except (UnicodeDecodeError, ValueError):
        return "word2vec_binary"
    return "word2vec_text" if len(parts) >= dim + 1 else "word2vec_binary"


def read_vectors(path: Path, wanted: set[str] | None = None, fmt: str = "auto") -> Vectors:
    """The vectors of the `wanted` words (all words if None) in a vectors file."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown vectors format {fmt!r}; use one of {', '.join(FORMATS)}")
    with _open(path) as f:
        if fmt == "word2vec_binary":
            return _read_binary(f, path, wanted)
        return _read_text(f, path, wanted, header=fmt == "word2vec_text")


def _open(path: Path) -> BinaryIO:
    """The vectors file opened for reading; a pipe or device is refused before any read."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise DataError(
            f"{path}: vectors file not found; check model.pretrained_embeddings"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; give the path of a vectors file") from None
    except NotRegularFileError as e:
        raise DataError(f"{path}: {e.advice}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the vectors file ({e.strerror})") from None


def _read_text(f: BinaryIO, path: Path, wanted: set[str] | None, header: bool) -> Vectors:
    fmt = "word2vec_text" if header else "glove"
    dim = None
    if header:
        dim = _header(f.readline(_MAX_HEADER), path, "word2vec text")[1]
    found: dict[str, torch.Tensor] = {}
    total = 0
    for lineno, raw in enumerate(f, 2 if header else 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not valid UTF-8 (byte {e.start} of the line); is this a "
                "binary word2vec file? set model.pretrained_format: word2vec_binary"
            ) from None
        if not line.strip():
            continue
        parts = line.rstrip(" ").split(" ")
        if dim is None:
            dim = len(parts) - 1  # GloVe: the first line fixes the dimension
        if len(parts) < dim + 1 or dim < 1:
            raise DataError(
                f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts)} fields"
            )
        # A few GloVe releases hold words with spaces: the numbers are always the last `dim`.
        word = " ".join(parts[:-dim])
        total += 1
        if wanted is not None and word not in wanted:
            continue
        try:
            values = torch.tensor([float(v) for v in parts[-dim:]])
        except ValueError:
            raise DataError(f"{path}:{lineno}: the vector of {word!r} holds a non-number") from None
        found[word] = _finite(values, f"{path}:{lineno}", word, parts[-dim:])
    if dim is None:
        raise DataError(f"{path}: the vectors file holds no vectors")
    return Vectors(fmt, dim, found, total)


def _read_binary(f: BinaryIO, path: Path, wanted: set[str] | None) -> Vectors:
    count, dim = _header(f.readline(_MAX_HEADER), path, "word2vec binary")
    size = 4 * dim
    found: dict[str, torch.Tensor] = {}
    for i in range(count):
        word_bytes = bytearray()
        while True:
            c = f.read(1)
            if not c:
                raise DataError(
                    f"{path}: truncated: the header promises {count} words, the file ends at "
                    f"word {i + 1}"
                )
            if c == b" ":
                break
            if c != b"\n" or word_bytes:  # the newline after the previous vector
                word_bytes += c
        data = f.read(size)
        if len(data) < size:
            raise DataError(f"{path}: truncated in the vector of word {i + 1} of {count}")
        word = word_bytes.decode("utf-8", errors="replace")
        if wanted is None or word in wanted:
            values = torch.tensor(struct.unpack(f"<{dim}f", data))
            found[word] = _finite(values, f"{path}: word {i + 1} of {count}", word)
    return Vectors("word2vec_binary", dim, found, count)


def _finite(
    values: torch.Tensor, where: str, word: str, texts: list[str] | None = None
) -> torch.Tensor:
    """`values` (float32), or a DataError naming the word and its first NaN or infinity.

    Such a row would make the first loss NaN and stop training with advice about train.lr; a
    number beyond float32's range (3.4e38) becomes infinity here, so it is refused too.
    """
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel() == 0:
        return values
    i = int(bad[0])
    shown = texts[i] if texts is not None else str(values[i].item())
    raise DataError(
        f"{where}: the vector of {word!r} holds {shown} (number {i + 1}), which is not a finite "
        "float32; pretrained vectors must be finite numbers (fix or drop that word)"
    )


def load_pretrained(model: torch.nn.Module, vocab: Tokenizer, cfg: VectorSettings) -> str:
    """Copy the vectors of `cfg.pretrained_embeddings` into the model's embedding rows.

    Returns the coverage report; raises DataError on a dimension mismatch or a bad file.
    """
    assert cfg.pretrained_embeddings is not None
    path = Path(expand_vars(cfg.pretrained_embeddings, "model.pretrained_embeddings"))
    words = vocab.itos[1:]  # not <pad>
    vec = read_vectors(path, set(words), cfg.pretrained_format)
    if vec.dim != cfg.embedding_dim:
        raise DataError(
            f"{path}: the vectors have {vec.dim} dimensions but model.embedding_dim is "
            f"{cfg.embedding_dim}; set model.embedding_dim: {vec.dim}"
        )
    missing = [w for w in words if w not in vec.vectors]
    if len(missing) == len(words):
        raise DataError(
            f"{path}: none of the {len(words):,} vocabulary words is in the vectors file "
            f"(e.g. {', '.join(repr(w) for w in words[:5])}); check the file and data.tokenizer"
        )
    weight = model.embedding.weight  # type: ignore[union-attr]
    with torch.no_grad():
        for i, w in enumerate(vocab.itos):
            if i > 0 and w in vec.vectors:
                weight[i] = vec.vectors[w].to(weight.dtype)
    found = len(words) - len(missing)
    report = (
        f"pretrained embeddings {path} ({vec.format}, {vec.dim}-d, {vec.total:,} words): "
        f"found {found:,} of {len(words):,} vocabulary words ({found / len(words):.1%})"
    )
    if missing:
        report += f"; missing {len(missing):,}, e.g. " + ", ".join(repr(w) for w in missing[:8])
    if cfg.freeze_embeddings:
        report += "; frozen"
    return report
