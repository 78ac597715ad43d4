"""A prepared ids file is mapped through the descriptor that was checked, never by opening its
path again: a file put in its place between the check and the mapping (another process
rebuilding the entry, or anyone else) is never the one the run trains on. A named pipe in place
of a cache file is a miss that is rebuilt, never waited on."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from lmtrain.data import prepared as prepared_module
from lmtrain.data.prepare import prepare_corpus
from lmtrain.data.prepared import load_prepared, source_of, write_prepared


def test_the_ids_mapped_are_the_ids_checked(
    tmp_path: Path, tiny_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    source = source_of(tiny_files["train"], cache)
    ids = torch.arange(1000) % 251
    write_prepared(cache, source, {}, ids, 251, "v")
    (ids_path,) = cache.glob("*.ids")
    real_sample = prepared_module._sample

    def sample_then_swap(f, size: int) -> str:
        digest = real_sample(f, size)
        other = ids_path.with_name("other")
        other.write_bytes(bytes([7]) * size)  # same size, every id in range
        os.replace(other, ids_path)
        return digest

    monkeypatch.setattr(prepared_module, "_sample", sample_then_swap)
    got = load_prepared(cache, source, {})
    assert torch.equal(got.ids.long(), ids)


@pytest.mark.parametrize("which", ["ids", "json"])
def test_a_fifo_in_place_of_a_cache_file_is_rebuilt_not_waited_on(
    tmp_path: Path, tiny_files: dict[str, Path], which: str
) -> None:
    cfg = tiny_config(tmp_path, tiny_files)
    cache = tmp_path / "cache"
    want = prepare_corpus(cfg.data, cache)
    header = sorted(p for p in cache.glob("*.json") if not p.name.startswith("vocab-"))[0]
    victim = header.with_suffix(f".{which}")
    victim.unlink()
    os.mkfifo(victim)
    lines: list[str] = []
    got = prepare_corpus(cfg.data, cache, echo=lines.append)
    assert any("is a named pipe (FIFO)" in line for line in lines), lines
    assert torch.equal(got.train.ids.long(), want.train.ids.long())
    assert torch.equal(got.valid.ids.long(), want.valid.ids.long())
    assert stat.S_ISREG(victim.stat().st_mode)
