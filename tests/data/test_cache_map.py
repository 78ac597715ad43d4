"""A prepared ids file is mapped through the descriptor that was checked, never by opening its
path again: a file put in its place between the check and the mapping (another process
rebuilding the entry, or anyone else) is never the one the run trains on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lmtrain.data import prepared as prepared_module
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
