"""Where prepared token files go: data.cache_dir `auto` (the default), a path, or null (off)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from lmtrain.data import prepared as prepared_module
from lmtrain.data.prepare import load_corpus, prepare_corpus, resolve_cache_dir
from lmtrain.errors import DataError


def test_auto_prefers_lmtrain_cache_dir_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LMTRAIN_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir("auto") == tmp_path / "mine"
    monkeypatch.setenv("LMTRAIN_CACHE_DIR", "")  # empty is unset
    assert resolve_cache_dir("auto") == tmp_path / "xdg" / "lmtrain"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec ignores relative paths
    assert resolve_cache_dir("auto") == tmp_path / "home" / ".cache" / "lmtrain"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir("auto") == tmp_path / "home" / ".cache" / "lmtrain"
    monkeypatch.setenv("LMTRAIN_CACHE_DIR", "~/c")
    assert resolve_cache_dir("auto") == tmp_path / "home" / "c"


def test_a_path_is_expanded_and_null_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WHERE", "w")
    assert resolve_cache_dir("~/${WHERE}/cache") == tmp_path / "w" / "cache"
    assert resolve_cache_dir(None) is None


def test_the_default_caches_in_the_default_place_and_rebuilds_damage(
    tmp_path: Path, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in tiny_files.values():
        os.utime(path, (1_000_000_000, 1_000_000_000))
    cache = tmp_path / "default-cache"
    monkeypatch.setenv("LMTRAIN_CACHE_DIR", str(cache))
    cfg = tiny_config(tmp_path, tiny_files)
    assert cfg.data.cache_dir == "auto"
    memory = prepare_corpus(cfg.data, None)
    lines: list[str] = []
    first = load_corpus(cfg.data, echo=lines.append)
    assert len(list(cache.glob("*.ids"))) == 2 and len(lines) == 2
    assert torch.equal(first.train.ids.long(), memory.train.ids)
    expected = first.train.ids.clone()
    # Damaged in place: same size, other bytes; the new mtime makes lmtrain hash it again.
    for ids in cache.glob("*.ids"):
        data = bytearray(ids.read_bytes())
        data[0] ^= 1
        ids.write_bytes(bytes(data))
    again = load_corpus(cfg.data, echo=lines.append)
    assert len(lines) == 4 and all("damaged" in line for line in lines[2:])
    assert torch.equal(again.train.ids, expected)
    load_corpus(cfg.data, echo=lines.append)
    assert len(lines) == 4  # rebuilt entries are mapped from then on


def test_null_reads_in_memory_and_writes_nothing(
    tmp_path: Path, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "default-cache"
    monkeypatch.setenv("LMTRAIN_CACHE_DIR", str(cache))
    cfg = tiny_config(tmp_path, tiny_files, "data.cache_dir=null")
    got = load_corpus(cfg.data)
    assert got.train.ids.dtype == torch.long and not cache.exists()


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write of an ids file fails as on a full disk (ENOSPC)."""

    # Through the real method's error handling: only the file write itself fails.
    original = prepared_module.PreparedWriter.write

    def failing(self: prepared_module.PreparedWriter, ids: torch.Tensor) -> None:
        class Full:
            def write(self, _: object) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def close(self) -> None:
                pass

            closed = False

        self._file.close()
        self._file = Full()
        original(self, ids)

    monkeypatch.setattr(prepared_module.PreparedWriter, "write", failing)


@pytest.mark.parametrize("why", ["a file", "a full disk"])
def test_an_unusable_automatic_cache_falls_back_to_memory_with_one_line(
    tmp_path: Path, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    cache = tmp_path / "cache"
    if why == "a file":
        cache.write_text("not a directory")
    else:
        _full_disk(monkeypatch)
    monkeypatch.setenv("LMTRAIN_CACHE_DIR", str(cache))
    cfg = tiny_config(tmp_path, tiny_files)
    assert cfg.data.cache_dir == "auto"
    lines: list[str] = []
    got = load_corpus(cfg.data, echo=lines.append)
    memory = prepare_corpus(cfg.data, None)
    assert torch.equal(got.train.ids, memory.train.ids) and got.train.ids.dtype == torch.long
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and str(cache) in warnings[0]
    assert "Reading the text into memory instead" in warnings[0]
    if why == "a file":
        assert cache.read_text() == "not a directory"  # the user's file is untouched
    else:
        assert not list(cache.glob("*.tmp*")) and not list(cache.glob("*.ids"))


@pytest.mark.parametrize("why", ["a file", "a full disk"])
def test_a_named_cache_that_cannot_be_written_is_an_error(
    tmp_path: Path, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    cache = tmp_path / "cache"
    if why == "a file":
        cache.write_text("not a directory")
        expected = "exists and is not a directory"
    else:
        _full_disk(monkeypatch)
        expected = os.strerror(errno.ENOSPC)
    cfg = tiny_config(tmp_path, tiny_files, f"data.cache_dir={cache}")
    with pytest.raises(DataError, match=expected):
        load_corpus(cfg.data)
    if why == "a full disk":
        assert not [p for p in cache.iterdir() if p.suffix != ".json"]  # no partial ids file
