"""Prepared token files: exact round trips, the id type, and every kind of stale or damaged cache."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY_TEXT
from lmtrain import files
from lmtrain.data import prepared as prepared_module
from lmtrain.data.prepared import (
    CacheMiss,
    PreparedWriter,
    id_dtype,
    load_prepared,
    load_vocab,
    save_vocab,
    source_of,
    write_prepared,
)
from lmtrain.data.tokenizers import Settings, build, from_dict
from lmtrain.errors import DataError

SETTINGS = {"tokenizer": "word", "min_freq": 1, "max_size": None, "vocab": "built"}
OLD = 1_000_000_000  # a modification time long past (2001), outside the racy window


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): _sha(p) for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's files were all just written: take them as settled, as they are seconds later
    (a file changed within the last two seconds is hashed every time, its hash not remembered)."""
    monkeypatch.setattr(prepared_module, "_RACY_SECONDS", -1.0)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    os.utime(path, (OLD, OLD))
    return path


def _prepare(cache: Path, path: Path, kind: str = "word", settings: dict | None = None):
    text = path.read_text(encoding="utf-8")
    vocab = build(kind, text, Settings())
    enc = vocab.encode(text)
    vocab_sha = save_vocab(cache, vocab.to_dict())
    split = write_prepared(
        cache, source_of(path, cache), settings or SETTINGS, enc.ids, len(vocab), vocab_sha,
        oov=enc.oov, text_bytes=len(text.encode()),
    )  # fmt: skip
    return vocab, enc, split


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["word", "char"])
def test_round_trip_equals_vocab_encode(tmp_path: Path, corpus: Path, kind: str) -> None:
    cache = tmp_path / "cache"
    settings = {**SETTINGS, "tokenizer": kind}
    vocab, enc, written = _prepare(cache, corpus, kind, settings)
    got = load_prepared(cache, source_of(corpus, cache), settings)
    assert got.ids.dtype == torch.uint8  # the tiny vocabularies have fewer than 256 entries
    assert torch.equal(got.ids.long(), enc.ids)
    assert torch.equal(written.ids.long(), enc.ids)
    assert (got.oov, got.text_bytes, got.vocab_size) == (enc.oov, len(TINY_TEXT), len(vocab))
    assert from_dict(load_vocab(cache, got.vocab_sha256)).itos == vocab.itos
    # The ids file is raw: one byte per token, nothing else.
    assert (cache / f"{got.key}.ids").stat().st_size == enc.ids.numel()


def test_pieces_write_the_same_file_as_one_tensor(tmp_path: Path, corpus: Path) -> None:
    _, enc, whole = _prepare(tmp_path / "a", corpus)
    with PreparedWriter(tmp_path / "b", source_of(corpus, tmp_path / "b"), SETTINGS, 50) as w:
        for piece in enc.ids.split(7):
            w.write(piece)
        pieces = w.finish(oov=0, text_bytes=len(TINY_TEXT), vocab_sha256="x")
    assert _sha(tmp_path / "a" / f"{whole.key}.ids") == _sha(tmp_path / "b" / f"{pieces.key}.ids")


def test_empty_split_round_trips(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    write_prepared(
        cache, source_of(corpus, cache), SETTINGS, torch.zeros(0, dtype=torch.long), 5, "v"
    )
    got = load_prepared(cache, source_of(corpus, cache), SETTINGS)
    assert got.ids.numel() == 0


@pytest.mark.parametrize(
    ("vocab_size", "dtype"),
    [(1, torch.uint8), (256, torch.uint8), (257, torch.uint16), (65536, torch.uint16),
     (65537, torch.uint32), (2**32, torch.uint32)],
)  # fmt: skip
def test_id_dtype_at_the_boundaries(vocab_size: int, dtype: torch.dtype) -> None:
    assert id_dtype(vocab_size) == dtype


def test_id_dtype_refuses_what_32_bits_cannot_hold() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        id_dtype(2**32 + 1)


@pytest.mark.parametrize("vocab_size", [256, 257, 65536, 65537])
def test_largest_id_survives_the_file(tmp_path: Path, corpus: Path, vocab_size: int) -> None:
    cache = tmp_path / "cache"
    ids = torch.tensor([0, 1, vocab_size - 2, vocab_size - 1])
    write_prepared(cache, source_of(corpus, cache), SETTINGS, ids, vocab_size, "v")
    got = load_prepared(cache, source_of(corpus, cache), SETTINGS)
    assert got.ids.dtype == id_dtype(vocab_size)
    assert got.ids.long().tolist() == ids.tolist()


def test_an_id_outside_the_vocabulary_is_refused_and_nothing_is_left(
    tmp_path: Path, corpus: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="id 256 outside a vocabulary of 256"):
        write_prepared(cache, source_of(corpus, cache), SETTINGS, torch.tensor([3, 256]), 256, "v")
    assert [p for p in cache.iterdir() if p.name != "sources"] == []  # no partial file
    with pytest.raises(CacheMiss, match="not found"):
        load_prepared(cache, source_of(corpus, cache), SETTINGS)


def test_writing_the_mapped_ids_never_changes_the_file(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    _prepare(cache, corpus)
    before = _tree(cache)
    got = load_prepared(cache, source_of(corpus, cache), SETTINGS)
    got.ids[:5] = 0  # a private mapping: copy-on-write
    del got
    assert _tree(cache) == before
    load_prepared(cache, source_of(corpus, cache), SETTINGS, verify=True)


# --- a valid cache reads no text -----------------------------------------------------------


class _OpenLog:
    """Counts the bytes read through every file opened, by path (lmtrain's opener included)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes: dict[str, int] = {}
        real, real_regular = io.open, files.open_regular

        def count(file: object, f: Any) -> Any:
            if isinstance(file, (str, Path)):
                key = str(Path(file).resolve())
                self.bytes.setdefault(key, 0)
                read = f.read

                def counting_read(*a: int) -> bytes | str:
                    data = read(*a)
                    self.bytes[key] += len(data)
                    return data

                f.read = counting_read
            return f

        def logged(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
            return count(file, real(file, mode, *args, **kwargs))

        monkeypatch.setattr(builtins, "open", logged)
        monkeypatch.setattr(io, "open", logged)
        monkeypatch.setattr(files, "open_regular", lambda path: count(path, real_regular(path)))


def test_valid_cache_reads_nothing_of_the_source(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, settled: None
) -> None:
    cache = tmp_path / "cache"
    _, enc, _ = _prepare(cache, corpus)
    log = _OpenLog(monkeypatch)
    got = load_prepared(cache, source_of(corpus, cache), SETTINGS)
    assert torch.equal(got.ids.long(), enc.ids)
    assert log.bytes.get(str(corpus.resolve()), 0) == 0
    # The header, the memo and the sampled blocks of the ids (here all of its 300 bytes).
    assert sum(log.bytes.values()) < 4096


def test_a_touched_source_is_hashed_again_and_still_hits(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _prepare(cache, corpus)
    os.utime(corpus, (OLD + 10, OLD + 10))
    log = _OpenLog(monkeypatch)
    load_prepared(cache, source_of(corpus, cache), SETTINGS)
    assert log.bytes[str(corpus.resolve())] == corpus.stat().st_size


def test_a_just_written_source_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written within the timestamp tick it could change again in: hashed every time until older.
    cache = tmp_path / "cache"
    path = tmp_path / "fresh.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    source_of(path, cache)
    log = _OpenLog(monkeypatch)
    source_of(path, cache)
    assert log.bytes[str(path.resolve())] == path.stat().st_size


# --- stale and damaged entries -------------------------------------------------------------


def _entry(cache: Path, corpus: Path) -> tuple[Path, Path]:
    key = load_prepared(cache, source_of(corpus, cache), SETTINGS).key
    return cache / f"{key}.ids", cache / f"{key}.json"


def _rewrite_header(header: Path, **changes: object) -> None:
    value = json.loads(header.read_text())
    value.update(changes)
    header.write_text(json.dumps(value))


def _flip_first_byte(ids: Path, header: Path) -> None:
    # A later write: its modification time differs from the header's record (set explicitly,
    # since a coarse file-system clock could give the write the same timestamp).
    mtime = ids.stat().st_mtime_ns
    ids.write_bytes(b"\x7f" + ids.read_bytes()[1:])
    os.utime(ids, ns=(mtime + 10**9, mtime + 10**9))


DAMAGE = {
    "ids truncated": (
        lambda ids, header: ids.write_bytes(ids.read_bytes()[:-1]),
        "holds .* bytes, not .* \\(truncated\\?\\)",
    ),
    "ids grown": (lambda ids, header: ids.write_bytes(ids.read_bytes() + b"\0"), "truncated"),
    "ids missing": (lambda ids, header: ids.unlink(), "ids not found"),
    "ids byte flipped": (_flip_first_byte, "sha256 is not the header's"),
    "header missing": (lambda ids, header: header.unlink(), "json not found"),
    "header garbage": (lambda ids, header: header.write_text("{not json"), "damaged"),
    "header truncated": (
        lambda ids, header: header.write_text(header.read_text()[:-20]),
        "damaged",
    ),
    "header not an object": (lambda ids, header: header.write_text("[]"), "not a JSON object"),
    "header of another key": (lambda ids, header: _rewrite_header(header, key="0" * 40), "key"),
    "header of the other byte order": (
        lambda ids, header: _rewrite_header(header, byteorder="middle"),
        "byteorder",
    ),
    "header of another version": (
        lambda ids, header: _rewrite_header(header, version=99),
        "version",
    ),
    "header without its token count": (
        lambda ids, header: _rewrite_header(header, tokens=None),
        "damaged",
    ),
    "header with a vocabulary of no size": (
        lambda ids, header: _rewrite_header(header, vocab_size=0),
        "damaged",
    ),
    "header with a negative count": (
        lambda ids, header: _rewrite_header(header, oov=-1),
        "damaged",
    ),
    "header with a wrong token count": (
        lambda ids, header: _rewrite_header(header, tokens=3),
        "disagree",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_detected_then_rebuilt(tmp_path: Path, corpus: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    _, enc, _ = _prepare(cache, corpus)
    ids, header = _entry(cache, corpus)
    hurt, reason = DAMAGE[damage]
    hurt(ids, header)
    with pytest.raises(CacheMiss, match=reason):
        load_prepared(cache, source_of(corpus, cache), SETTINGS)
    _prepare(cache, corpus)  # what the caller does on a miss
    got = load_prepared(cache, source_of(corpus, cache), SETTINGS, verify=True)
    assert torch.equal(got.ids.long(), enc.ids)


def test_a_flipped_byte_that_keeps_size_and_mtime_is_found(tmp_path: Path, corpus: Path) -> None:
    # Damage in place with the modification time put back (os.utime): the change time, which
    # no tool can set back, shows the write, and the ids are hashed in full.
    cache = tmp_path / "cache"
    _prepare(cache, corpus)
    ids, _ = _entry(cache, corpus)
    st = ids.stat()
    ids.write_bytes(b"\x01" + ids.read_bytes()[1:])
    os.utime(ids, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (ids.stat().st_size, ids.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(CacheMiss, match="sha256 is not the header's"):
        load_prepared(cache, source_of(corpus, cache), SETTINGS)


def test_an_edited_source_misses(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    _prepare(cache, corpus)
    corpus.write_text(TINY_TEXT.replace("cat", "cow"), encoding="utf-8")
    with pytest.raises(CacheMiss, match="not found"):
        load_prepared(cache, source_of(corpus, cache), SETTINGS)


def test_an_edit_that_keeps_size_and_mtime_misses(
    tmp_path: Path, corpus: Path, settled: None
) -> None:
    cache = tmp_path / "cache"
    _prepare(cache, corpus)  # the source's hash is remembered (settled)
    corpus.write_text(TINY_TEXT.replace("cat", "cow"), encoding="utf-8")  # same length
    os.utime(corpus, (OLD, OLD))
    with pytest.raises(CacheMiss, match="not found"):
        load_prepared(cache, source_of(corpus, cache), SETTINGS)


def test_other_settings_miss(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    _prepare(cache, corpus)
    with pytest.raises(CacheMiss, match="not found"):
        load_prepared(cache, source_of(corpus, cache), {**SETTINGS, "min_freq": 2})


def test_another_vocabulary_misses(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    _, _, split = _prepare(cache, corpus)
    load_prepared(cache, source_of(corpus, cache), SETTINGS, vocab_sha256=split.vocab_sha256)
    with pytest.raises(CacheMiss, match="another vocabulary"):
        load_prepared(cache, source_of(corpus, cache), SETTINGS, vocab_sha256="0" * 64)


def test_a_copied_corpus_finds_the_same_entry(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    _, enc, _ = _prepare(cache, corpus)
    copy = tmp_path / "elsewhere.txt"
    copy.write_bytes(corpus.read_bytes())
    got = load_prepared(cache, source_of(copy, cache), SETTINGS)
    assert torch.equal(got.ids.long(), enc.ids)


def test_an_interrupted_write_leaves_nothing(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    source = source_of(corpus, cache)
    with pytest.raises(KeyboardInterrupt), PreparedWriter(cache, source, SETTINGS, 50) as w:
        w.write(torch.arange(10))
        raise KeyboardInterrupt
    assert [p.name for p in cache.iterdir() if p.name != "sources"] == []
    with pytest.raises(CacheMiss):
        load_prepared(cache, source, SETTINGS)


def test_a_damaged_vocabulary_misses(tmp_path: Path, corpus: Path) -> None:
    cache = tmp_path / "cache"
    vocab, _, split = _prepare(cache, corpus)
    path = cache / f"vocab-{split.vocab_sha256}.json"
    path.write_text(path.read_text().replace('"cat"', '"cow"'))
    with pytest.raises(CacheMiss, match="do not match its name"):
        load_vocab(cache, split.vocab_sha256)
    with pytest.raises(CacheMiss, match="not found"):
        load_vocab(cache, "0" * 64)


def test_a_cache_that_cannot_be_written_is_a_data_error(tmp_path: Path, corpus: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    with pytest.raises(DataError, match="cannot write the prepared-data cache .*data.cache_dir"):
        write_prepared(
            blocker, source_of(corpus, tmp_path / "c2"), SETTINGS, torch.arange(3), 5, "v"
        )


def test_a_missing_source_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.txt: cannot read"):
        source_of(tmp_path / "missing.txt", tmp_path / "cache")


def test_cache_files_follow_the_umask(tmp_path: Path, corpus: Path, settled: None) -> None:
    # A cache shared by a team must stay readable by the others.
    old = os.umask(0o022)
    try:
        _prepare(tmp_path / "cache", corpus)
    finally:
        os.umask(old)
    modes = {
        p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "cache").rglob("*") if p.is_file()
    }
    assert len(modes) == 4 and set(modes.values()) == {0o644}, modes  # ids, header, vocab, memo


def test_a_read_only_cache_still_serves_its_entries(
    tmp_path: Path, corpus: Path, settled: None
) -> None:
    # The remembered source hash is a shortcut: a cache that cannot take it still maps.
    cache = tmp_path / "cache"
    _, enc, _ = _prepare(cache, corpus)
    for memo in (cache / "sources").iterdir():
        memo.unlink()
    (cache / "sources").rmdir()
    (cache / "sources").write_text("a file where the memo directory should be")
    got = load_prepared(cache, source_of(corpus, cache), SETTINGS)
    assert torch.equal(got.ids.long(), enc.ids)
