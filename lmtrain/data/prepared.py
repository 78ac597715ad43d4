"""Prepared token files: a split tokenised once, stored as raw ids, mapped by every later run.

Encoding a large corpus takes longer than the first training steps and holds the whole text in
memory. A prepared split is written once and then mapped read-only by later runs, resumes,
evaluations and every torchrun rank, so the operating system's page cache holds one copy and
nothing is decoded again. This module owns the cache directory; nobody else opens its files.

    CACHE/
      KEY.ids                    token ids, raw uint8 / uint16 / uint32 in the machine's order
      KEY.json                   header: version, dtype, token count, source and vocabulary
                                 sha256, settings, and a fingerprint of KEY.ids
      vocab-SHA256.json          a vocabulary, named by the hash of its contents
      sources/PATHHASH.json      the sha256 a source file had at a (size, mtime) seen before

KEY hashes the source file's contents and the tokeniser settings, so a renamed or copied corpus
finds its cache, and any change to the text or the settings makes a new entry. The header is
written last and atomically (temp file, then `os.replace`): an ids file without a header is an
interrupted write, never a result. `load_prepared` raises `CacheMiss` with the reason for an
absent, stale or damaged entry, and the caller tokenises again; a damaged entry is never used.

Checking an entry reads no corpus text: a file whose size and modification time are those
recorded with its hash is taken to be unchanged, as `make` and `git status` do. Anything else
(a touched, copied or edited file) is hashed again, in chunks. An edit that keeps both size
and modification time goes unseen by that check; `verify=True` always rehashes.

The module is longer than most because it is the one owner of the cache's files (layout,
atomic writes, header checks); split up, the on-disk format would be spread over several files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmtrain.errors import DataError


class CacheWriteError(DataError):
    """The prepared-data cache could not be written: not a directory, no permission, disk full."""


def _unwritable(cache_dir: Path, e: OSError) -> CacheWriteError:
    return CacheWriteError(
        f"cannot write the prepared-data cache {cache_dir} ({e.strerror or e}); make it writable "
        "or point data.cache_dir at a writable directory"
    )


FORMAT = "lmtrain-prepared"
FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20
# A file modified this recently may still change within the same timestamp tick, so its hash is
# not remembered by (size, mtime); it is simply hashed again next time.
_RACY_SECONDS = 2.0

_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
}


class CacheMiss(Exception):
    """No usable prepared split: absent, stale or damaged. `reason` says which, for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest unsigned integer type that holds every id of a vocabulary of this size."""
    if vocab_size < 1:
        raise ValueError(f"a vocabulary needs at least one entry, not {vocab_size}")
    for name in ("uint8", "uint16", "uint32"):
        dtype = _DTYPES[name]
        if vocab_size <= 1 << (8 * dtype.itemsize):
            return dtype
    raise ValueError(f"{vocab_size} ids do not fit in 32 bits")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def hash_file(path: Path, chunk_bytes: int = _CHUNK_BYTES) -> str:
    """sha256 of a file's bytes, read in chunks so that memory does not grow with the file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def canonical_sha256(value: Any) -> str:
    """sha256 of a JSON value written canonically (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Source:
    """A source text file and the sha256 of its bytes."""

    path: Path
    sha256: str
    size: int


def _create_temp(final: Path) -> tuple[int, Path]:
    """A new, empty temp file beside `final`, under a name no concurrent writer shares.

    Created with mode 0o666 less the umask, like any file the user writes, so that a cache
    shared by a team stays readable (a mkstemp file would be private to its owner).
    """
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return fd, tmp


def _write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, sort_keys=True, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    """The JSON in `path`; CacheMiss when it is absent or unreadable (a damaged cache file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheMiss(f"{path.name} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheMiss(f"{path.name} is damaged ({e})") from None


def source_of(path: Path, cache_dir: Path, verify: bool = False) -> Source:
    """`path` with its content sha256, remembered in `cache_dir` by (size, mtime).

    The remembered hash is used when the file's size and modification time (nanoseconds) are
    those it had when hashed; otherwise, or with `verify`, the file is hashed again in chunks.
    A file that changes while it is hashed is refused: its hash would describe no version of it.
    """
    path = Path(path).resolve()
    try:
        before = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path") from None
    memo_path = cache_dir / "sources" / f"{canonical_sha256(str(path))[:32]}.json"
    if not verify:
        try:
            memo = _read_json(memo_path)
            if (
                memo.get("path") == str(path)
                and memo.get("size") == before.st_size
                and memo.get("mtime_ns") == before.st_mtime_ns
                and isinstance(memo.get("sha256"), str)
            ):
                return Source(path, memo["sha256"], before.st_size)
        except (CacheMiss, AttributeError):
            pass  # no usable memo (absent, damaged or not an object): hash the file
    try:
        sha = hash_file(path)
        after = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path") from None
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise DataError(f"{path}: the file changed while it was read; run again once it is written")
    if time.time() - after.st_mtime_ns / 1e9 > _RACY_SECONDS:
        memo = {"path": str(path), "size": after.st_size, "mtime_ns": after.st_mtime_ns}
        # Only a shortcut: a cache that cannot take it (read-only) costs a rehash next time.
        with contextlib.suppress(OSError):
            _write_json_atomic(memo_path, {**memo, "sha256": sha})
    return Source(path, sha, after.st_size)


def _write_cache_json(cache_dir: Path, path: Path, value: Any) -> None:
    try:
        _write_json_atomic(path, value)
    except OSError as e:
        raise _unwritable(cache_dir, e) from None


def cache_key(source_sha256: str, settings: Mapping[str, Any]) -> str:
    """The entry name of a split: its text's hash and everything that decides its ids.

    `settings` is a JSON object the caller builds: the tokeniser and its options, the split of
    a one-file corpus, and the vocabulary (its sha256, or that it is built from this text).
    """
    return canonical_sha256(
        {"format": FORMAT, "version": FORMAT_VERSION, "source": source_sha256, "settings": settings}
    )[:40]


@dataclass(frozen=True)
class PreparedSplit:
    """A prepared split: ids mapped from disk, and what the header says about them."""

    ids: torch.Tensor
    """(N,) uint8 / uint16 / uint32, read-only mapping of KEY.ids (copy-on-write if written)."""
    key: str
    oov: int
    """Tokens of the text that were not in the vocabulary."""
    text_bytes: int
    """UTF-8 bytes of the text these ids encode: what bits per byte divides by."""
    vocab_size: int
    vocab_sha256: str
    header: dict[str, Any]


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.ids", cache_dir / f"{key}.json"


def _map(ids_path: Path, dtype: torch.dtype, count: int) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=dtype)
    # shared=False maps the file privately (read-only open, copy-on-write): pages are read on
    # first touch and shared with every process mapping the same file; nothing is copied.
    return torch.from_file(str(ids_path), shared=False, size=count, dtype=dtype)


def load_prepared(
    cache_dir: Path,
    source: Source,
    settings: Mapping[str, Any],
    vocab_sha256: str | None = None,
    verify: bool = False,
) -> PreparedSplit:
    """The prepared split of `source` under `settings`; CacheMiss(reason) when unusable.

    `vocab_sha256`, when given, is the vocabulary the caller needs the ids in (a resumed run's);
    an entry made with another one is a miss. `verify` rehashes the ids file; otherwise it is
    rehashed only when its size or modification time differ from those in the header.
    """
    key = cache_key(source.sha256, settings)
    ids_path, header_path = _paths(cache_dir, key)
    header = _read_json(header_path)
    if not isinstance(header, dict):
        raise CacheMiss(f"{header_path.name} is damaged (not a JSON object)")
    expected = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key": key,
        "byteorder": sys.byteorder,
        "source_sha256": source.sha256,
        "settings": json.loads(json.dumps(settings)),  # as it reads back from JSON
    }
    for name, value in expected.items():
        if header.get(name) != value:
            raise CacheMiss(f"{header_path.name}: {name} does not match (stale or foreign entry)")
    try:
        dtype = _DTYPES[header["dtype"]]
        tokens, oov, text_bytes = (
            int(header["tokens"]),
            int(header["oov"]),
            int(header["text_bytes"]),
        )
        vocab_size, have_vocab = int(header["vocab_size"]), str(header["vocab_sha256"])
        ids_info = header["ids"]
        want_size, want_mtime = int(ids_info["bytes"]), int(ids_info["mtime_ns"])
        ids_sha = str(ids_info["sha256"])
        consistent = dtype == id_dtype(vocab_size) and want_size == tokens * dtype.itemsize
    except (KeyError, TypeError, ValueError) as e:
        raise CacheMiss(f"{header_path.name} is damaged (field {e})") from None
    if not consistent or min(tokens, oov, text_bytes) < 0:
        raise CacheMiss(f"{header_path.name} is damaged (dtype, size and count disagree)")
    if vocab_sha256 is not None and have_vocab != vocab_sha256:
        raise CacheMiss(f"{key}: made with another vocabulary")
    try:
        st = ids_path.stat()
        if st.st_size != want_size:
            raise CacheMiss(
                f"{ids_path.name} holds {st.st_size} bytes, not {want_size} (truncated?)"
            )
        if (verify or st.st_mtime_ns != want_mtime) and hash_file(ids_path) != ids_sha:
            raise CacheMiss(f"{ids_path.name} is damaged (its sha256 is not the header's)")
    except FileNotFoundError:
        raise CacheMiss(f"{ids_path.name} not found") from None
    except OSError as e:
        raise CacheMiss(f"{ids_path.name} cannot be read ({e.strerror})") from None
    return PreparedSplit(
        _map(ids_path, dtype, tokens), key, oov, text_bytes, vocab_size, have_vocab, header
    )


class PreparedWriter:
    """Writes one prepared split from pieces of ids, so that no whole-text tensor is needed.

        with PreparedWriter(cache_dir, source, settings, len(vocab)) as w:
            for piece in pieces:
                w.write(vocab.encode(piece).ids)
            split = w.finish(oov=..., text_bytes=..., vocab_sha256=...)

    Leaving the block without `finish` (an error, a signal) removes the partial file.
    """

    def __init__(
        self, cache_dir: Path, source: Source, settings: Mapping[str, Any], vocab_size: int
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.key = cache_key(source.sha256, settings)
        self.source = source
        self.settings = dict(settings)
        self.vocab_size = vocab_size
        self.dtype = id_dtype(vocab_size)
        self.tokens = 0
        self._digest = hashlib.sha256()
        self._tmp: Path | None = None
        self._file: Any = None

    def __enter__(self) -> PreparedWriter:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(_paths(self.cache_dir, self.key)[0])
        except OSError as e:
            raise _unwritable(self.cache_dir, e) from None
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        return self

    def write(self, ids: torch.Tensor) -> None:
        """Append token ids (any integer dtype); each must be an id of the vocabulary."""
        ids = ids.reshape(-1)
        if ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"id {lo if lo < 0 else hi} outside a vocabulary of {self.vocab_size}")
        # Through a bytearray the tensor shares: plain torch, no extra library, one copy.
        buf = bytearray(ids.numel() * self.dtype.itemsize)
        torch.frombuffer(buf, dtype=self.dtype).copy_(ids)
        try:
            self._file.write(buf)
        except OSError as e:  # a full disk: __exit__ removes the partial file
            raise _unwritable(self.cache_dir, e) from None
        self._digest.update(buf)
        self.tokens += ids.numel()

    def finish(self, oov: int, text_bytes: int, vocab_sha256: str) -> PreparedSplit:
        """Publish the entry (ids file, then header) and return it mapped."""
        assert self._tmp is not None, "finish() belongs inside the with block"
        ids_path, header_path = _paths(self.cache_dir, self.key)
        try:
            self._file.close()  # flushes: a full disk can show here
            os.replace(self._tmp, ids_path)
            self._tmp = None
            st = ids_path.stat()
        except OSError as e:
            raise _unwritable(self.cache_dir, e) from None
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "key": self.key,
            "byteorder": sys.byteorder,
            "dtype": _dtype_name(self.dtype),
            "tokens": self.tokens,
            "oov": oov,
            "text_bytes": text_bytes,
            "vocab_size": self.vocab_size,
            "vocab_sha256": vocab_sha256,
            "source_sha256": self.source.sha256,
            "source_bytes": self.source.size,
            "settings": self.settings,
            "ids": {
                "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": self._digest.hexdigest(),
            },
        }
        _write_cache_json(self.cache_dir, header_path, header)
        return PreparedSplit(
            _map(ids_path, self.dtype, self.tokens),
            self.key,
            oov,
            text_bytes,
            self.vocab_size,
            vocab_sha256,
            header,
        )

    def __exit__(self, *exc: object) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def write_prepared(
    cache_dir: Path,
    source: Source,
    settings: Mapping[str, Any],
    ids: torch.Tensor | Iterable[torch.Tensor],
    vocab_size: int,
    vocab_sha256: str,
    oov: int = 0,
    text_bytes: int = 0,
) -> PreparedSplit:
    """Write a prepared split from one tensor of ids or an iterable of pieces."""
    pieces: Iterable[torch.Tensor] = [ids] if isinstance(ids, torch.Tensor) else ids
    with PreparedWriter(cache_dir, source, settings, vocab_size) as w:
        for piece in pieces:
            w.write(piece)
        return w.finish(oov=oov, text_bytes=text_bytes, vocab_sha256=vocab_sha256)


def save_vocab(cache_dir: Path, vocab: Mapping[str, Any]) -> str:
    """Store a vocabulary (`Vocab.to_dict()`) under its own sha256, which is returned."""
    sha = canonical_sha256(vocab)
    path = cache_dir / f"vocab-{sha}.json"
    if not path.exists():
        _write_cache_json(cache_dir, path, dict(vocab))
    return sha


def load_vocab(cache_dir: Path, sha256: str) -> dict[str, Any]:
    """The vocabulary stored under `sha256`; CacheMiss when absent or not what its name says."""
    path = cache_dir / f"vocab-{sha256}.json"
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or canonical_sha256(vocab) != sha256:
        raise CacheMiss(f"{path.name} is damaged (its contents do not match its name)")
    return vocab
