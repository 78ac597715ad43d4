"""The one way out (lmtrain/files.py): atomic writes, clean write errors, stale temporaries swept,
torn JSON-lines tails repaired; with property tests that kill writers at random moments."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmtrain
from lmtrain import files
from lmtrain.errors import LmtrainError

REPO = Path(lmtrain.__file__).resolve().parents[1]


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- atomic_write -------------------------------------------------------------------------------


def test_atomic_write_replaces_whole_with_the_umasks_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old\n")
    files.write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1} and target.read_text().endswith("\n")
    files.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    umask = os.umask(0o027)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _temps(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyboardInterrupt()])
def test_any_exception_mid_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(type(error)), files.atomic_write(target, "w") as f:
        f.write("half of the new")
        raise error
    assert target.read_text() == "old" and _temps(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "(the disk is full)"),
        (errno.EROFS, "(the file system is read-only)"),
        (errno.EACCES, "(permission denied)"),
        (errno.EDQUOT, "(the disk quota is exceeded)"),
    ],
)
def test_write_errors_are_clean_lmtrain_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")

    def fail(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fdatasync", fail)
    with pytest.raises(files.WriteError) as caught:
        files.write_text(target, "new")
    monkeypatch.undo()
    e = caught.value
    assert isinstance(e, LmtrainError) and isinstance(e, OSError) and e.exit_code == 2
    assert str(e).startswith(f"{target}: cannot be written {reason}") and e.errno == code
    assert target.read_text() == "old" and _temps(tmp_path) == []


def test_a_folder_that_cannot_be_written_is_a_write_error(tmp_path: Path) -> None:
    with pytest.raises(files.WriteError, match="No such file or directory"):
        files.write_text(tmp_path / "missing" / "a.txt", "x")


# -- sweep_temps --------------------------------------------------------------------------------

# Writes `target` through atomic_write, says READY once the temporary holds data, then hangs
# until it is killed.
_HANG = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lmtrain import files
    with files.atomic_write(Path(sys.argv[1])) as f:
        f.write(b"half of a new file")
        f.flush()
        print("READY", flush=True)
        time.sleep(60)
    """
)


def _writer(target: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANG, str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    return proc


def test_sweep_removes_a_killed_writers_temporary_only(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    dead = _writer(target)
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    (left,) = _temps(tmp_path)
    live = _writer(tmp_path / "other.pt")
    # Files of the user's that merely look like lmtrain's temporaries.
    lookalikes = [
        f".last.pt.{dead.pid}.tmp",
        f".last.pt.{dead.pid}.0123ABCD.tmp",
        f"last.pt.{dead.pid}.0123abcd.tmp",
        f".last.pt.{dead.pid}.0123abcd.tmp.bak",
        ".last.pt.ab12cd34.tmp",
    ]
    for name in lookalikes:
        (tmp_path / name).write_text("mine")
    (tmp_path / f".dir.{dead.pid}.0123abcd.tmp").mkdir()
    try:
        removed = files.sweep_temps(tmp_path)
        assert [p.name for p in removed] == [left] and left.startswith(f".last.pt.{dead.pid}.")
        assert len([n for n in _temps(tmp_path) if n.startswith(f".other.pt.{live.pid}.")]) == 1
        assert all((tmp_path / n).read_text() == "mine" for n in lookalikes)
        assert (tmp_path / f".dir.{dead.pid}.0123abcd.tmp").is_dir()
        assert target.read_bytes() == b"old"
    finally:
        live.kill()
        live.wait()
    assert files.sweep_temps(tmp_path / "no-such-folder") == []


# -- repair_tail --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "kept", "dropped"),
    [
        (b'{"a": 1}\n{"a": 2}\n', b'{"a": 1}\n{"a": 2}\n', 0),
        (b'{"a": 1}\n{"a": 2', b'{"a": 1}\n', 7),
        (b'{"a": 1}\n{"a": 2}', b'{"a": 1}\n{"a": 2}\n', 0),  # only the newline was lost
        (b'{"a": 1}\n\x00\x00\x00\x00', b'{"a": 1}\n', 4),  # zeros a file system filled in
        (b'{"a": 1}\n{"a": \x00\n', b'{"a": 1}\n', 8),
        (b'{"a"', b"", 4),
        (b"", b"", 0),
    ],
)
def test_repair_tail_keeps_every_complete_record(
    tmp_path: Path, content: bytes, kept: bytes, dropped: int
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    assert files.repair_tail(path) == dropped
    assert path.read_bytes() == kept
    assert files.repair_tail(tmp_path / "missing.jsonl") == 0


def test_append_records_repairs_first(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"i": 0}\n{"i": 1, "lo')
    assert files.append_records(path, ['{"i": 1}', '{"i": 2}']) == 12
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"i": 0},
        {"i": 1},
        {"i": 2},
    ]


# -- properties: writers killed at random moments -------------------------------------------------


def _records(n: int, pad: int) -> list[str]:
    return [json.dumps({"i": i, "pad": "x" * (i * 37 % (pad + 1))}) for i in range(n)]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 12), pad=st.integers(0, 300), data=st.data())
def test_a_cut_at_any_byte_repairs_to_exactly_the_complete_records(
    n: int, pad: int, data: st.DataObject
) -> None:
    import tempfile

    lines = _records(n, pad)
    text = "".join(line + "\n" for line in lines).encode()
    cut = data.draw(st.integers(0, len(text)), label="cut")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "metrics.jsonl"
        path.write_bytes(text[:cut])
        files.repair_tail(path)
        got = path.read_text().splitlines()
        # A record is kept when all its bytes survived the cut (its newline may be lost).
        whole = [line for i, line in enumerate(lines) if len("".join(lines[: i + 1])) + i <= cut]
        assert got == whole
        assert path.read_bytes() == "".join(line + "\n" for line in whole).encode()


@settings(max_examples=100, deadline=None)
@given(old=st.binary(max_size=3000), new=st.binary(max_size=3000), data=st.data())
def test_an_exception_at_any_byte_leaves_the_old_file(
    old: bytes, new: bytes, data: st.DataObject
) -> None:
    import tempfile

    cut = data.draw(st.integers(0, len(new)), label="cut")
    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / "f.bin"
        target.write_bytes(old)
        with pytest.raises(ZeroDivisionError), files.atomic_write(target) as f:
            f.write(new[:cut])
            f.flush()
            _ = 1 / 0
        assert target.read_bytes() == old and _temps(Path(d)) == []


class _DiskFullAfter:
    """A file opened for appending that takes `budget` more characters, then is full."""

    def __init__(self, path: Path, budget: int) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self.budget = budget

    def write(self, text: str) -> int:
        self.file.write(text[: self.budget])
        self.file.flush()
        if len(text) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(text)
        return len(text)

    def __enter__(self) -> _DiskFullAfter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(
        st.tuples(st.integers(1, 4), st.one_of(st.none(), st.integers(0, 400))), max_size=8
    )
)
def test_appends_cut_at_any_byte_keep_exactly_the_complete_records(
    batches: list[tuple[int, int | None]],
) -> None:
    import tempfile
    from unittest import mock

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "metrics.jsonl"
        expected: list[str] = []
        n = 0
        for count, budget in batches:
            lines = _records(n + count, 120)[n:]
            n += count
            text = "".join(line + "\n" for line in lines)
            if budget is None or budget >= len(text):
                files.append_records(path, lines)
                expected += lines
                continue

            def full(path: Path, mode: str = "r", *args: object, budget: int = budget, **kw):
                if mode == "a":
                    return _DiskFullAfter(path, budget)
                return open(path, mode, *args, **kw)  # noqa: SIM115 - the caller closes it

            with (
                mock.patch.object(files, "open", full, create=True),
                pytest.raises(files.WriteError, match="the disk is full"),
            ):
                files.append_records(path, lines)
            expected += [
                line for i, line in enumerate(lines) if len("".join(lines[: i + 1])) + i <= budget
            ]
        files.repair_tail(path)
        assert (path.read_text().splitlines() if path.exists() else []) == expected


def _version(i: int) -> bytes:
    # Each version has its own length and content, so a mix of two would be seen.
    return (f"version {i}:".encode() + bytes([i % 251]) * (i * 997 % 20_000)) + b"END"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@pytest.mark.slow
@given(delay=st.floats(0.0, 0.03))
def test_sigkill_at_a_random_moment_leaves_whole_files_and_repairable_records(
    tmp_path_factory: pytest.TempPathFactory, delay: float
) -> None:
    d = tmp_path_factory.mktemp("kill")
    target, log = d / "state.bin", d / "metrics.jsonl"
    files.write_bytes(target, _version(0))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes and appends until it is killed
        try:
            os.close(read)
            os.write(write, b"R")
            i = n = 0
            while True:
                i += 1
                files.write_bytes(target, _version(i))
                files.append_records(log, _records(n + 3, 200)[n:])
                n += 3
        finally:
            os._exit(1)
    os.close(write)
    assert os.read(read, 1) == b"R"
    os.close(read)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    content = target.read_bytes()
    version = int(content.split(b":", 1)[0].removeprefix(b"version "))
    assert content == _version(version)  # a whole version, never a mix or a part
    files.repair_tail(log)
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert records == [json.loads(r) for r in _records(len(records), 200)]
    files.sweep_temps(d)
    assert _temps(d) == []
