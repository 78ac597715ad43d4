"""Writes that once went around the one atomic writer: `lmtrain init`'s copy of a recipe and a
download whose disk fills up. A failed write leaves no partial file and says why; a file the
user has is never replaced."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lmtrain
from conftest import dead_pid, invoke
from lmtrain import download, files

REPO = Path(lmtrain.__file__).resolve().parents[1]

# `lmtrain init quickstart` in a process whose files may not grow past 100 bytes: every write
# beyond that fails with EFBIG, as a full disk fails with ENOSPC.
_INIT_LIMITED = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
    from lmtrain.cli import main
    sys.argv = ["lmtrain", "init", "quickstart"]
    main()
    """
)


def test_init_that_cannot_write_leaves_no_partial_copy(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", _INIT_LIMITED],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, r.stderr
    assert "quickstart.yaml: cannot be written (File too large)" in r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # neither the copy's first 100 bytes nor a temporary


def test_exclusive_write_never_replaces_a_file_that_appears_meanwhile(tmp_path: Path) -> None:
    target = tmp_path / "my.yaml"
    with pytest.raises(FileExistsError), files.atomic_write(target, exclusive=True) as f:
        f.write(b"the recipe")
        target.write_bytes(b"the user's")  # another program creates the name meanwhile
    assert target.read_bytes() == b"the user's"
    assert [p.name for p in tmp_path.iterdir()] == ["my.yaml"]


def test_exclusive_write_without_hard_links_still_refuses_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))  # as on FAT or some FUSE mounts

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "my.yaml"
    files.write_bytes(tmp_path / "other", b"x")  # the ordinary writer needs no link
    with files.atomic_write(target, exclusive=True) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(FileExistsError), files.atomic_write(target, exclusive=True) as f:
        f.write(b"newer")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.yaml", "other"]


def test_a_full_disk_during_a_download_is_reported_as_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    source = download.Source(
        "https://example.invalid/tiny",
        "TINYSHAKESPEARE_URL",
        (("input.txt", hashlib.sha256(data).hexdigest()),),
    )
    monkeypatch.setitem(download.CORPORA, "tinyshakespeare", source)
    monkeypatch.delenv("TINYSHAKESPEARE_URL", raising=False)
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    (folder / "input.txt").write_bytes(b"an older copy")

    class FullDisk(io.BufferedWriter):
        def write(self, block: object) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd: int, mode: str = "r", *args: object, **kwargs: object) -> object:
        opened = real_fdopen(fd, mode, *args, **kwargs)
        return FullDisk(opened.detach()) if mode == "wb" else opened  # writes fail, reads work

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(files.WriteError) as e:
        download.download("tinyshakespeare", tmp_path, lambda _: None, lambda u: io.BytesIO(data))
    monkeypatch.undo()
    assert "input.txt: cannot be written (the disk is full)" in str(e.value)
    assert "connection" not in str(e.value)
    assert (folder / "input.txt").read_bytes() == b"an older copy"
    assert [p.name for p in folder.iterdir()] == ["input.txt"]


def test_init_and_plot_remove_what_a_killed_copy_or_plot_left(tmp_path: Path, cli) -> None:
    pytest.importorskip("matplotlib")
    from metrics.test_plot import write_run

    run = write_run(tmp_path / "run", [(50, 3.0, 30.0), (100, 2.5, 60.0)])
    for folder, name, args in (
        (tmp_path / "figures", "c.png", ("plot", run, "--out")),
        (tmp_path / "configs", "q.yaml", ("init", "quickstart")),
    ):
        folder.mkdir()
        stale = folder / f".{name}.{dead_pid()}.0123abcd.tmp"
        mine = folder / ".notes.txt.tmp"
        stale.write_bytes(b"half")
        mine.write_bytes(b"mine")
        assert invoke(cli, *args, folder / name).exit_code == 0
        assert sorted(p.name for p in folder.iterdir()) == [".notes.txt.tmp", name]
        assert mine.read_bytes() == b"mine"
