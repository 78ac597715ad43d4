"""`lmtrain download` says how a large file is coming along, and leaves no litter when it fails."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error
import zipfile
from pathlib import Path

import pytest

from conftest import invoke
from lmtrain import download

PAYLOAD = bytes(range(256)) * 4000  # about 1 MB


def _archive_source(tmp_path: Path) -> download.Source:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("corpus/whole", PAYLOAD)
    zipped = buf.getvalue()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "c.zip").write_bytes(zipped)
    n = len(PAYLOAD)
    parts = (
        download.Part("train.txt", "corpus/whole", 0, n - 2000),
        download.Part("valid.txt", "corpus/whole", n - 2000, n - 1000),
        download.Part("test.txt", "corpus/whole", n - 1000, n),
    )
    archive = download.Archive("c.zip", hashlib.sha256(zipped).hexdigest(), len(zipped), parts)
    return download.Source(f"file://{mirror}", "ENWIK8_URL", archive=archive)


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> download.Source:
    source = _archive_source(tmp_path)
    monkeypatch.setitem(download.CORPORA, "enwik8", source)
    monkeypatch.delenv("ENWIK8_URL", raising=False)
    return source


def test_off_a_terminal_an_archive_gets_a_line_as_it_starts_and_ends(cli, tmp_path, archive):
    r = invoke(cli, "download", "enwik8", tmp_path / "data")
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    size = archive.archive.size / 1e6
    start = lines.index(f"c.zip: {size:,.1f} MB to fetch")
    assert re.fullmatch(r"c\.zip: done in \d+\.\ds \([\d,.]+ MB per second\)", lines[start + 1])


def test_the_progress_hears_every_byte_once_from_zero(tmp_path, archive) -> None:
    heard: dict[str, list[tuple[int, int]]] = {}

    def track(name: str):
        return lambda done, total: heard.setdefault(name, []).append((done, total))

    download.download("enwik8", tmp_path / "data", echo=lambda _: None, progress=track)
    calls = heard["c.zip"]
    size = archive.archive.size
    assert calls[0] == (0, size) and calls[-1] == (size, size)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def _offline(url: str):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_offline_leaves_no_folder_it_created(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LMTRAIN_DATA", raising=False)
    with pytest.raises(download.DownloadError, match="check your connection"):
        download.download("wikitext-2", echo=lambda _: None, opener=_offline)
    assert list(tmp_path.iterdir()) == []  # not even ./data
    nested = tmp_path / "a" / "b"
    with pytest.raises(download.DownloadError):
        download.download("tinyshakespeare", nested, echo=lambda _: None, opener=_offline)
    assert list(tmp_path.iterdir()) == []


def test_offline_keeps_folders_that_were_there_and_what_is_in_them(tmp_path) -> None:
    mine = tmp_path / "data"
    (mine / "wikitext-2").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(download.DownloadError):
        download.download("wikitext-2", mine, echo=lambda _: None, opener=_offline)
    assert (mine / "wikitext-2").is_dir() and (mine / "notes.txt").read_text() == "mine"
    with pytest.raises(download.DownloadError):
        download.download("tinyshakespeare", mine, echo=lambda _: None, opener=_offline)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "wikitext-2"]


def test_the_cli_offline_exits_2_and_leaves_nothing(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(
        download.CORPORA,
        "tinyshakespeare",
        download.Source(
            f"file://{tmp_path / 'no-mirror'}", "TINYSHAKESPEARE_URL", (("input.txt", "0" * 64),)
        ),
    )
    monkeypatch.delenv("TINYSHAKESPEARE_URL", raising=False)
    r = invoke(cli, "download", "tinyshakespeare", tmp_path / "data")
    assert r.exit_code == 2 and "failed" in r.stderr
    assert not (tmp_path / "data").exists()
