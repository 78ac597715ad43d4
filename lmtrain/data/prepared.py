"""Prepared token files: a split tokenised once, stored as raw ids, mapped by every later run.

Encoding a large corpus takes longer than the first training steps and holds the whole text in
memory. A prepared split is written once and then mapped read-only by later runs, resumes,
evaluations and every torchrun rank, so the operating system's page cache holds one copy and
nothing is decoded again. This module owns the cache directory; nobody else opens its files.

    CACHE/
      KEY.ids                    token ids, raw uint8 / uint16 / uint32 in the machine's order
      KEY.json                   header (`Header`): version, dtype, token count, source and
                                 vocabulary sha256, settings, what KEY.ids holds, a checksum
      vocab-SHA256.json          a vocabulary, named by the hash of its contents
      sources/PATHHASH.json      the sha256 a source file had at a stamp seen before

KEY hashes the source file's contents and the tokeniser settings, so a renamed or copied corpus
finds its cache, and any change to the text or the settings makes a new entry. Every file is
written through `files.atomic_write`, the header last: an ids file without a header is an
interrupted write, never a result. `load_prepared` raises `CacheMiss` with the reason for an
absent, stale or damaged entry, and the caller tokenises again; a damaged entry is never used.

What a load checks, without reading the corpus. A file's stamp is its size, modification time,
change time (ctime) and inode: any write changes the ctime, which no tool (touch, os.utime) can
set back, and a copy or an editor's save makes a new inode. A source whose stamp is the one
remembered with its hash is unchanged; anything else is hashed again, in chunks. The header
carries a checksum of itself, so no count in it can be wrong. KEY.ids is hashed in full when its
stamp is not the header's (and then re-stamped), else 16 blocks spread over it are; and its
largest id is checked against the vocabulary. `verify=True` (`lmtrain prepare --verify`) hashes
every source and ids file in full, which also finds damage the stamp cannot show (a disk's).

The module is longer than most because it is the one owner of the cache's files (layout,
stamps, header checks); split up, the on-disk format would be spread over several files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from lmtrain import files, records
from lmtrain.errors import DataError


class CacheWriteError(DataError):
    """The prepared-data cache could not be written: not a directory, no permission, disk full."""


def _unwritable(cache_dir: Path, e: OSError) -> CacheWriteError:
    return CacheWriteError(
        f"cannot write the prepared-data cache {cache_dir} ({e.strerror or e}); make it writable "
        "or point data.cache_dir at a writable directory"
    )


FORMAT = "lmtrain-prepared"
FORMAT_VERSION = 2
_CHUNK_BYTES = 1 << 20
_SMALL_JSON = 1 << 20
"""A header or memo is a few hundred bytes: a larger one is damaged, and is not read whole."""
_SAMPLE_BLOCKS, _SAMPLE_BYTES = 16, 4096
_RANGE_SLICE = 1 << 20
# A file changed this recently may change again within the same timestamp tick, so its stamp
# would not show it: its hash is not remembered; it is simply hashed again next time.
_RACY_SECONDS = 2.0

_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
}
_SIGNED = {torch.uint8: torch.int8, torch.uint16: torch.int16, torch.uint32: torch.int32}


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


def _digest(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while block := f.read(_CHUNK_BYTES):
        digest.update(block)
    return digest.hexdigest()


def hash_file(path: Path) -> str:
    """sha256 of a regular file's bytes, read in chunks so that memory does not grow with it."""
    with files.open_regular(path) as f:
        return _digest(f)


def _sample(f: BinaryIO, size: int) -> str:
    """sha256 of a file's size and 16 blocks spread over it (all of a file of up to 64 KiB)."""
    digest = hashlib.sha256(str(size).encode())
    whole = size <= _SAMPLE_BLOCKS * _SAMPLE_BYTES
    step = 0 if whole else (size - _SAMPLE_BYTES) // (_SAMPLE_BLOCKS - 1)
    for i in range(1 if whole else _SAMPLE_BLOCKS):
        f.seek(i * step)
        digest.update(f.read(size if whole else _SAMPLE_BYTES))
    return digest.hexdigest()


def canonical_sha256(value: Any) -> str:
    """sha256 of a JSON value written canonically (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sealed(value: dict[str, Any]) -> dict[str, Any]:
    """`value` with a checksum of itself, so that a damaged value cannot pass for another."""
    return {**value, "checksum": canonical_sha256(value)}


def _intact(value: dict[str, Any]) -> bool:
    rest = {k: v for k, v in value.items() if k != "checksum"}
    return value.get("checksum") == canonical_sha256(rest)


def _stamp(st: os.stat_result) -> dict[str, int]:
    """What any write to a file changes: the change time cannot be set back, not even by utime."""
    return {"mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _settled(st: os.stat_result) -> bool:
    return time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > _RACY_SECONDS


@dataclass(frozen=True)
class Source:
    """A source text file and the sha256 of its bytes."""

    path: Path
    sha256: str
    size: int
    edited: bool = False
    """The cache remembered other contents for this path: the file was edited since."""


def _read_json(path: Path, limit: int | None = _SMALL_JSON) -> Any:
    """The JSON in `path`; CacheMiss when it is absent or unreadable (a damaged cache file)."""
    try:
        raw, more = files.read_bounded(path, limit)
        if more:
            raise CacheMiss(f"{path.name} is damaged (larger than any lmtrain writes)")
        return json.loads(raw)
    except FileNotFoundError:
        raise CacheMiss(f"{path.name} not found") from None
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON and UTF-8 errors
        raise CacheMiss(f"{path.name} is damaged ({e})") from None


def _write_cache_json(cache_dir: Path, path: Path, value: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_json(path, value, indent=1)
    except OSError as e:  # files.WriteError included
        raise _unwritable(cache_dir, e) from None


def source_of(path: Path, cache_dir: Path | None, verify: bool = False) -> Source:
    """`path` with its content sha256, remembered in `cache_dir` (None: not at all) by stamp.

    The remembered hash is used when the file's stamp (size, modification and change time,
    inode) is the one it had when hashed; otherwise, or with `verify`, the file is hashed again
    in chunks. A file that changes while it is hashed is refused: its hash would describe no
    version of it.
    """
    path = Path(path).resolve()
    try:
        before = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path") from None
    memo_path = None
    if cache_dir is not None:
        memo_path = cache_dir / "sources" / f"{canonical_sha256(str(path))[:32]}.json"
    seen = {"path": str(path), "bytes": before.st_size, **_stamp(before)}
    remembered = None
    if memo_path is not None:
        with contextlib.suppress(CacheMiss):
            memo = _read_json(memo_path)
            remembered = memo.get("sha256") if isinstance(memo, dict) and _intact(memo) else None
            if not verify and memo == _sealed({**seen, "sha256": remembered}):
                return Source(path, memo["sha256"], before.st_size)
    try:
        sha = hash_file(path)
        after = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path") from None
    if {"path": str(path), "bytes": after.st_size, **_stamp(after)} != seen:
        raise DataError(f"{path}: the file changed while it was read; run again once it is written")
    if memo_path is not None and _settled(after):
        # Only a shortcut: a cache that cannot take it (read-only) costs a rehash next time.
        with contextlib.suppress(OSError):
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            files.write_json(memo_path, _sealed({**seen, "sha256": sha}), indent=1)
    return Source(path, sha, after.st_size, edited=remembered not in (None, sha))


def cache_key(source_sha256: str, settings: Mapping[str, Any]) -> str:
    """The entry name of a split: its text's hash and everything that decides its ids.

    `settings` is a JSON object the caller builds: the tokeniser and its options, the split of
    a one-file corpus, and the vocabulary (its sha256, or that it is built from this text).
    """
    return canonical_sha256(
        {"format": FORMAT, "version": FORMAT_VERSION, "source": source_sha256, "settings": settings}
    )[:40]


@dataclass(frozen=True)
class IdsRecord:
    """What a header knows of its KEY.ids."""

    bytes: int
    sha256: str
    """Of the whole file: checked when the stamp below is not the file's, and by `verify`."""
    sample: str
    """Of the size and 16 blocks spread over the file (`_sample`): checked at every load."""
    mtime_ns: int
    ctime_ns: int
    ino: int


@dataclass(frozen=True)
class Header:
    """KEY.json: what a prepared split is, read through `records.build_record`."""

    format: str
    version: int
    key: str
    byteorder: str
    dtype: Literal["uint8", "uint16", "uint32"]
    tokens: int
    oov: int
    """Tokens of the text that were not in the vocabulary."""
    text_bytes: int
    """UTF-8 bytes of the text these ids encode: what bits per byte divides by."""
    vocab_size: int
    vocab_sha256: str
    source_sha256: str
    source_bytes: int
    settings: dict[str, Any]
    ids: IdsRecord
    checksum: str
    """sha256 of the rest of the header (`_sealed`)."""

    def problems(self) -> list[str]:
        counts = ("tokens", "oov", "text_bytes", "source_bytes")
        problems = [f"'{k}' should be at least 0" for k in counts if getattr(self, k) < 0]
        if not (
            1 <= self.vocab_size <= 1 << 32
            and _DTYPES[self.dtype] == id_dtype(self.vocab_size)
            and self.ids.bytes == self.tokens * _DTYPES[self.dtype].itemsize
        ):
            problems.append("dtype, vocabulary size and byte count disagree")
        return problems


@dataclass(frozen=True)
class PreparedSplit:
    """A prepared split: ids mapped from disk, and what the header says about them."""

    ids: torch.Tensor
    """(N,) uint8 / uint16 / uint32, read-only mapping of KEY.ids (copy-on-write if written)."""
    key: str
    oov: int
    text_bytes: int
    vocab_size: int
    vocab_sha256: str

    @classmethod
    def of(cls, ids: torch.Tensor, h: Header) -> PreparedSplit:
        return cls(ids, h.key, h.oov, h.text_bytes, h.vocab_size, h.vocab_sha256)


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.ids", cache_dir / f"{key}.json"


def _map(f: BinaryIO, ids_path: Path, header: Header) -> torch.Tensor:
    """The ids of open file `f`, the one just checked (never the path opened again, which
    another process could have replaced meanwhile), mapped."""
    dtype = _DTYPES[header.dtype]
    if header.tokens == 0:
        return torch.empty(0, dtype=dtype)
    try:
        # ACCESS_COPY maps the file privately (copy-on-write): pages are read on first touch and
        # shared with every process mapping the same file; nothing is copied. The tensor keeps
        # the mapping alive.
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        ids = torch.frombuffer(mapped, dtype=dtype, count=header.tokens)
    except (OSError, ValueError) as e:  # cut short since it was checked
        raise CacheMiss(f"{ids_path.name} cannot be mapped ({e})") from None
    return ids


def _max_id(ids: torch.Tensor) -> int:
    """The largest id, a slice at a time. Torch has no max of uint16 / uint32, so each slice is
    read as the signed type of its width; one holding ids past that range (negative there) has
    its sign bit flipped, into a buffer reused, which maps the unsigned order onto the signed."""
    if ids.dtype == torch.uint8:
        return int(ids.max()) if ids.numel() else 0
    signed = ids.view(_SIGNED[ids.dtype])
    half = 1 << (8 * ids.element_size() - 1)
    buf = torch.empty(min(_RANGE_SLICE, signed.numel()), dtype=signed.dtype)
    top = 0
    for part in signed.split(_RANGE_SLICE):
        lo, hi = torch.aminmax(part)
        flipped = None if lo >= 0 else torch.bitwise_xor(part, -half, out=buf[: part.numel()])
        top = max(top, int(hi) if flipped is None else int(flipped.max()) + half)
    return top


def load_prepared(
    cache_dir: Path,
    source: Source,
    settings: Mapping[str, Any],
    vocab_sha256: str | None = None,
    verify: bool = False,
) -> PreparedSplit:
    """The prepared split of `source` under `settings`; CacheMiss(reason) when unusable.

    `vocab_sha256`, when given, is the vocabulary the caller needs the ids in (a resumed run's);
    an entry made with another one is a miss. `verify` rehashes the whole ids file; otherwise it
    is rehashed only when its stamp is not the header's, and sampled when it is.
    """
    key = cache_key(source.sha256, settings)
    ids_path, header_path = _paths(cache_dir, key)
    raw = _read_json(header_path)
    if not isinstance(raw, dict):
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
        if raw.get(name) != value:
            raise CacheMiss(f"{header_path.name}: {name} does not match (stale or foreign entry)")
    try:
        header = records.build_record(
            Header, raw, header_path.name, dialect=records.FileDialect(mapping="an object")
        )
    except records.RecordError as e:
        raise CacheMiss(f"{header_path.name} is damaged ({'; '.join(e.problems)})") from None
    if not _intact(raw):
        raise CacheMiss(f"{header_path.name} is damaged (its checksum does not match it)")
    if vocab_sha256 is not None and header.vocab_sha256 != vocab_sha256:
        raise CacheMiss(f"{key}: made with another vocabulary")
    rec = header.ids
    try:
        with files.open_regular(ids_path) as f:
            st = os.fstat(f.fileno())
            if st.st_size != rec.bytes:
                raise CacheMiss(
                    f"{ids_path.name} holds {st.st_size} bytes, not {rec.bytes} (truncated?)"
                )
            stamped = replace(rec, **_stamp(st))
            full = verify or stamped != rec
            if full and _digest(f) != rec.sha256:
                raise CacheMiss(f"{ids_path.name} is damaged (its sha256 is not the header's)")
            if not full and _sample(f, st.st_size) != rec.sample:
                raise CacheMiss(
                    f"{ids_path.name} is damaged (the sha256 of its sampled blocks is not the "
                    "header's)"
                )
            ids = _map(f, ids_path, header)
    except FileNotFoundError:
        raise CacheMiss(f"{ids_path.name} not found") from None
    except OSError as e:
        raise CacheMiss(f"{ids_path.name} cannot be read ({e.strerror})") from None
    # Once per load (the writer checked each id it wrote): an id past the vocabulary would index
    # past the embedding. A vocabulary that fills its id type (bytes: 256 in uint8) has none.
    fills = header.vocab_size == 1 << (8 * ids.element_size())
    if not fills and (top := _max_id(ids)) >= header.vocab_size:
        raise CacheMiss(
            f"{ids_path.name} is damaged (id {top} outside its vocabulary of {header.vocab_size})"
        )
    if stamped != rec and _settled(st):
        # Checked in full (a copied or restored cache): re-stamped, so that the next load is quick.
        header = replace(header, ids=stamped)
        with contextlib.suppress(OSError):  # a read-only cache is checked in full each time
            files.write_json(header_path, _header_json(header), indent=1)
    return PreparedSplit.of(ids, header)


def _header_json(header: Header) -> dict[str, Any]:
    value = asdict(header)
    del value["checksum"]
    return _sealed(value)


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
        self._stack = contextlib.ExitStack()
        self._file: Any = None

    def __enter__(self) -> PreparedWriter:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            ids_path = _paths(self.cache_dir, self.key)[0]
            self._file = self._stack.enter_context(files.atomic_write(ids_path))
        except OSError as e:
            raise _unwritable(self.cache_dir, e) from None
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
        assert self._file is not None, "finish() belongs inside the with block"
        ids_path, header_path = _paths(self.cache_dir, self.key)
        try:
            self._stack.close()  # synced and renamed into place (a full disk can show here)
            f = self._stack.enter_context(files.open_regular(ids_path))  # closed by __exit__
            st = os.fstat(f.fileno())
            sample = _sample(f, st.st_size)
        except OSError as e:
            raise _unwritable(self.cache_dir, e) from None
        header = Header(
            format=FORMAT,
            version=FORMAT_VERSION,
            key=self.key,
            byteorder=sys.byteorder,
            dtype=_dtype_name(self.dtype),  # type: ignore[arg-type]
            tokens=self.tokens,
            oov=oov,
            text_bytes=text_bytes,
            vocab_size=self.vocab_size,
            vocab_sha256=vocab_sha256,
            source_sha256=self.source.sha256,
            source_bytes=self.source.size,
            settings=self.settings,
            ids=IdsRecord(st.st_size, self._digest.hexdigest(), sample, **_stamp(st)),
            checksum="",
        )
        value = _header_json(header)
        _write_cache_json(self.cache_dir, header_path, value)
        header = replace(header, checksum=value["checksum"])
        return PreparedSplit.of(_map(f, ids_path, header), header)

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)  # without finish: the partial file is removed


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
    """Store a vocabulary (a tokenizer's `to_dict()`) under its own sha256, which is returned;
    a damaged copy under that name is replaced."""
    sha = canonical_sha256(vocab)
    try:
        load_vocab(cache_dir, sha)
    except CacheMiss:
        _write_cache_json(cache_dir, cache_dir / f"vocab-{sha}.json", dict(vocab))
    return sha


def load_vocab(cache_dir: Path, sha256: str) -> dict[str, Any]:
    """The vocabulary stored under `sha256`; CacheMiss when absent or not what its name says."""
    path = cache_dir / f"vocab-{sha256}.json"
    vocab = _read_json(path, limit=None)
    if not isinstance(vocab, dict) or canonical_sha256(vocab) != sha256:
        raise CacheMiss(f"{path.name} is damaged (its contents do not match its name)")
    return vocab
