"""`lmtrain download` writes through the one atomic writer: a download killed mid-file leaves a
temporary that the next download into that folder removes; the user's files stay."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from conftest import dead_pid
from lmtrain import download

DATA = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_download_removes_a_killed_downloads_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = download.Source(
        "https://example.invalid/tiny",
        "TINYSHAKESPEARE_URL",
        (("input.txt", hashlib.sha256(DATA).hexdigest()),),
    )
    monkeypatch.setitem(download.CORPORA, "tinyshakespeare", source)
    monkeypatch.delenv("TINYSHAKESPEARE_URL", raising=False)
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    stale = folder / f".input.txt.{dead_pid()}.0123abcd.tmp"
    stale.write_bytes(DATA[:10])
    mine = folder / ".input.txt.part"
    mine.write_bytes(b"mine")
    said: list[str] = []
    download.download("tinyshakespeare", tmp_path, said.append, lambda url: io.BytesIO(DATA))
    assert (folder / "input.txt").read_bytes() == DATA
    assert not stale.exists() and mine.read_bytes() == b"mine"
    assert any(f"removed  {stale}" in line for line in said)
    assert sorted(p.name for p in folder.iterdir()) == [".input.txt.part", "input.txt"]


def test_a_checksum_mismatch_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = download.Source(
        "https://example.invalid/tiny", "TINYSHAKESPEARE_URL", (("input.txt", "0" * 64),)
    )
    monkeypatch.setitem(download.CORPORA, "tinyshakespeare", source)
    monkeypatch.delenv("TINYSHAKESPEARE_URL", raising=False)
    with pytest.raises(download.DownloadError, match="checksum mismatch"):
        download.download("tinyshakespeare", tmp_path, lambda _: None, lambda u: io.BytesIO(DATA))
    # No temporary, and not even the folder the download created for it.
    assert not (tmp_path / "tinyshakespeare").exists()
