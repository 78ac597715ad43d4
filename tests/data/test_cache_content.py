"""The prepared-file cache checks content, not dates: damage in place (with the modification time
put back), an edited corpus, hand-edited headers and random byte damage are each rebuilt with a
line saying why, or refused with exit 2; the ids a run gets always equal a fresh tokenisation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmtrain
from conftest import TINY_TEXT, invoke, tiny_config
from lmtrain.config import Config
from lmtrain.data import prepared as prepared_module
from lmtrain.data.prepare import prepare_corpus
from lmtrain.data.prepared import CacheMiss, load_prepared, source_of, write_prepared
from lmtrain.errors import LmtrainError

OLD = 1_000_000_000  # a modification time long past (2001)
REPO = Path(lmtrain.__file__).resolve().parents[1]


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's files were all just written: take them as settled, as they are seconds later,
    so that a source's hash is remembered by its stamp as it is for a corpus of yesterday."""
    monkeypatch.setattr(prepared_module, "_RACY_SECONDS", -1.0)


@pytest.fixture
def cfg(tmp_path: Path, tiny_files: dict[str, Path]) -> Config:
    for path in tiny_files.values():
        os.utime(path, (OLD, OLD))
    return tiny_config(tmp_path, tiny_files)


def _fresh(cfg: Config):
    """What the text gives without any cache: the reference every cached load must equal."""
    return prepare_corpus(replace(cfg.data, cache_dir=None), None)


def _assert_fresh(got, cfg: Config) -> None:
    want = _fresh(cfg)
    assert got.vocab.itos == want.vocab.itos
    for name in ("train", "valid"):
        a, b = getattr(got, name), getattr(want, name)
        assert torch.equal(a.ids.long(), b.ids), name
        assert (a.oov, a.text_bytes) == (b.oov, b.text_bytes), name


def _in_place(path: Path, edit) -> None:
    """Rewrite `path` in place (same inode) and put its modification time back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    edit(data)
    with open(path, "r+b") as f:
        f.write(bytes(data))
        f.truncate(len(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns


def _headers(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("*.json") if not p.name.startswith("vocab-"))


def _restamp(header: Path, ids: Path) -> None:
    """Make the header agree with the ids file's stamp now: what damage below the file system
    (a failing disk) looks like, since it changes no time the kernel keeps."""
    value = json.loads(header.read_text())
    value["ids"].update(prepared_module._stamp(ids.stat()))
    del value["checksum"]
    header.write_text(json.dumps(prepared_module._sealed(value)))


# --- damage the modification time cannot show ----------------------------------------------


@pytest.mark.parametrize("damage", ["an id past the vocabulary", "another id of the vocabulary"])
def test_ids_damaged_in_place_with_the_mtime_put_back_are_rebuilt(
    tmp_path: Path, cfg: Config, damage: str
) -> None:
    cache = tmp_path / "cache"
    first = prepare_corpus(cfg.data, cache)
    size = len(first.vocab)
    assert size < 255

    def hurt(data: bytearray) -> None:
        data[5] = 255 if damage == "an id past the vocabulary" else (data[5] + 1) % size

    for ids in cache.glob("*.ids"):
        size_before = ids.stat().st_size
        _in_place(ids, hurt)
        assert ids.stat().st_size == size_before
    lines: list[str] = []
    again = prepare_corpus(cfg.data, cache, echo=lines.append)
    assert [line.split(":")[0] for line in lines] == ["data.train", "data.valid"]
    assert all("is damaged (its sha256 is not the header's)" in line for line in lines), lines
    _assert_fresh(again, cfg)


def test_a_corpus_edited_with_size_and_mtime_put_back_is_tokenised_again(
    tmp_path: Path, cfg: Config, settled: None
) -> None:
    cache = tmp_path / "cache"
    prepare_corpus(cfg.data, cache)  # the source's hash is remembered with its stamp
    _in_place(Path(cfg.data.train), lambda data: data.__setitem__(slice(4, 7), b"cow"))
    lines: list[str] = []
    got = prepare_corpus(cfg.data, cache, echo=lines.append)
    assert "train.txt into" in lines[0] and lines[0].endswith("(edited since it was last prepared)")
    # A new text, a new vocabulary: the validation text is encoded in it too.
    assert [line.split(":")[0] for line in lines] == ["data.train", "data.valid"]
    assert "cow" in got.vocab.itos
    _assert_fresh(got, cfg)


def test_every_id_is_checked_against_the_vocabulary(tmp_path: Path, cfg: Config) -> None:
    # A header that agrees with damaged ids (hash, sample and stamp remade): only the range
    # check is left to find an id the model has no row for.
    cache = tmp_path / "cache"
    prepare_corpus(cfg.data, cache)
    source = source_of(Path(cfg.data.train), cache)
    (header,) = [h for h in _headers(cache) if source.sha256 in h.read_text()]
    ids = header.with_suffix(".ids")
    ids.write_bytes(b"\xfe" + ids.read_bytes()[1:])
    value = json.loads(header.read_text())
    with open(ids, "rb") as f:
        value["ids"]["sha256"] = prepared_module._digest(f)
        value["ids"]["sample"] = prepared_module._sample(f, ids.stat().st_size)
    header.write_text(json.dumps(value))
    _restamp(header, ids)
    with pytest.raises(CacheMiss, match="id 254 outside its vocabulary of"):
        load_prepared(cache, source, value["settings"])


def test_ids_are_range_checked_once_per_load_and_not_again_after_writing(
    tmp_path: Path, cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The range check reads every id: a new entry's ids were checked one piece at a time as they
    # were written, and a load checks each split once.
    checked: list[int] = []
    real = prepared_module._max_id
    monkeypatch.setattr(
        prepared_module, "_max_id", lambda ids: checked.append(ids.numel()) or real(ids)
    )
    cache = tmp_path / "cache"
    written = prepare_corpus(cfg.data, cache)
    assert checked == []
    prepare_corpus(cfg.data, cache)
    assert checked == [written.train.ids.numel(), written.valid.ids.numel()]


@pytest.mark.parametrize("vocab_size", [200, 256, 300, 40_000, 65_536, 70_000, 2**32])
def test_the_largest_id_of_each_width_is_found(
    tmp_path: Path, cfg: Config, vocab_size: int
) -> None:
    # uint16 and uint32 have no max in torch: ids past the signed range are found too.
    cache = tmp_path / "cache"
    source = source_of(Path(cfg.data.train), cache)
    ids = torch.tensor([0, 3, vocab_size - 1, 5])
    split = write_prepared(cache, source, {"n": vocab_size}, ids, vocab_size, "v")
    assert prepared_module._max_id(split.ids) == vocab_size - 1
    assert torch.equal(split.ids.long(), ids)


def test_sampled_blocks_find_damage_the_stamp_cannot_show(tmp_path: Path, cfg: Config) -> None:
    cache = tmp_path / "cache"
    source = source_of(Path(cfg.data.train), cache)
    ids = torch.arange(100_000) % 251  # 100 KB of uint8: more than the 16 sampled blocks
    write_prepared(cache, source, {}, ids, 251, "v")
    header = _headers(cache)[0]
    path = header.with_suffix(".ids")
    path.write_bytes(b"\xfa" + path.read_bytes()[1:])  # an id in range, in the first block
    _restamp(header, path)
    with pytest.raises(CacheMiss, match="sha256 of its sampled blocks is not the header's"):
        load_prepared(cache, source, {})


def test_a_header_count_edited_by_hand_is_refused(tmp_path: Path, cfg: Config) -> None:
    cache = tmp_path / "cache"
    prepare_corpus(cfg.data, cache)
    for header in _headers(cache):
        value = json.loads(header.read_text())
        value["text_bytes"] += 1  # a plausible number: bits per byte would be wrong by it
        header.write_text(json.dumps(value))
    lines: list[str] = []
    got = prepare_corpus(cfg.data, cache, echo=lines.append)
    assert len(lines) == 2 and all("its checksum does not match it" in x for x in lines), lines
    _assert_fresh(got, cfg)


def test_a_damaged_vocabulary_is_replaced_when_its_entry_is_rebuilt(
    tmp_path: Path, cfg: Config
) -> None:
    cache = tmp_path / "cache"
    prepare_corpus(cfg.data, cache)
    (vocab,) = cache.glob("vocab-*.json")
    vocab.write_text(vocab.read_text().replace('"cat"', '"cow"'))
    lines: list[str] = []
    _assert_fresh(prepare_corpus(cfg.data, cache, echo=lines.append), cfg)
    assert len(lines) == 1 and "do not match its name" in lines[0]
    prepare_corpus(cfg.data, cache, echo=lines.append)
    assert len(lines) == 1  # the vocabulary was written again: mapped from now on


def test_a_copied_cache_is_hashed_in_full_once_then_sampled(
    tmp_path: Path, cfg: Config, settled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    prepare_corpus(cfg.data, cache)
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)  # new inodes and change times, as on another machine
    full: list[int] = []
    real = prepared_module._digest
    monkeypatch.setattr(prepared_module, "_digest", lambda f: full.append(1) or real(f))
    lines: list[str] = []
    _assert_fresh(prepare_corpus(cfg.data, copy, echo=lines.append), cfg)
    assert (lines, len(full)) == ([], 2)  # each ids file once; the sources by their memo
    _assert_fresh(prepare_corpus(cfg.data, copy, echo=lines.append), cfg)
    assert (lines, len(full)) == ([], 2)  # re-stamped: the quick check from then on


# --- lmtrain prepare --verify --------------------------------------------------------------


def test_prepare_verify_finds_what_the_quick_check_cannot(
    tmp_path: Path, tiny_files: dict[str, Path], cli
) -> None:
    big = tmp_path / "big.txt"
    big.write_text(TINY_TEXT * 100)  # 72,000 word ids: more than the sampled blocks cover
    os.utime(big, (OLD, OLD))
    cache = tmp_path / "cache"
    cfg = tiny_config(tmp_path, tiny_files, f"data.train={big}", f"data.cache_dir={cache}")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    assert invoke(cli, "prepare", config).exit_code == 0
    header = max(_headers(cache), key=lambda h: h.with_suffix(".ids").stat().st_size)
    ids = header.with_suffix(".ids")
    size = ids.stat().st_size
    step = (size - prepared_module._SAMPLE_BYTES) // (prepared_module._SAMPLE_BLOCKS - 1)
    assert step > prepared_module._SAMPLE_BYTES + 100
    at = prepared_module._SAMPLE_BYTES + 50  # between the first two sampled blocks
    data = bytearray(ids.read_bytes())
    data[at] = (data[at] + 1) % 10
    ids.write_bytes(bytes(data))
    _restamp(header, ids)  # damage no time shows: only a full hash can find it
    quick = invoke(cli, "prepare", config)
    assert quick.exit_code == 0 and "tokenising" not in quick.stderr
    r = invoke(cli, "prepare", config, "--verify")
    assert r.exit_code == 0, r.output
    assert "data.train: tokenising" in r.stderr and "its sha256 is not the header's" in r.stderr
    assert "72,000 tokens as uint8" in r.stdout and r.stdout.count("verified in full") == 2
    _assert_fresh(prepare_corpus(cfg.data, cache), cfg)


# --- a prepare that is killed --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_prepare_leaves_no_temporary_after_the_next(
    tmp_path: Path, cfg: Config, sig: signal.Signals
) -> None:
    cache = tmp_path / "cache"
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    child = textwrap.dedent(
        f"""
        import sys, time
        from lmtrain.data import prepared
        real = prepared.PreparedWriter.write
        def write(self, ids):
            real(self, ids)
            print("mid-write", flush=True)
            time.sleep(120)
        prepared.PreparedWriter.write = write
        from lmtrain.cli import app
        app(["prepare", {str(config)!r}, "data.cache_dir={cache}"])
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "mid-write\n"
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == -sig
    finally:
        proc.kill()
        proc.wait()
    # Neither signal lets the process clean up (SIGTERM's default action ends it at once).
    assert len(list(cache.glob(".*.tmp"))) == 1
    lines: list[str] = []
    _assert_fresh(prepare_corpus(cfg.data, cache, echo=lines.append), cfg)
    assert list(cache.glob(".*.tmp")) == [] and len(lines) == 2


# --- random byte damage ----------------------------------------------------------------------

KINDS = ["ids", "ids below the file system", "header", "vocabulary", "source memo"]


def _target(cache: Path, kind: str, which: int) -> Path:
    if kind.startswith("ids"):
        return _headers(cache)[which % 2].with_suffix(".ids")
    if kind == "header":
        return _headers(cache)[which % 2]
    if kind == "vocabulary":
        return next(cache.glob("vocab-*.json"))
    return sorted((cache / "sources").iterdir())[which % 2]


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(KINDS),
    which=st.integers(0, 1),
    hits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
)
def test_random_byte_damage_is_rebuilt_or_refused_never_used(
    cfg: Config, settled: None, kind: str, which: int, hits: list, cut: float | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        prepare_corpus(cfg.data, cache)
        path = _target(cache, kind, which)
        data = bytearray(path.read_bytes())
        for where, value in hits:
            data[int(where * len(data))] = value
        if cut is not None:
            del data[int(cut * len(data)) :]
        _in_place(path, lambda d: d.__setitem__(slice(None), data))
        if kind == "ids below the file system":
            _restamp(path.with_suffix(".json"), path)
        lines: list[str] = []
        try:
            got = prepare_corpus(cfg.data, cache, echo=lines.append)
        except LmtrainError:
            return  # exit 2 with its message: allowed, though a rebuild is what happens
        _assert_fresh(got, cfg)
        assert all("tokenising" in line for line in lines)
