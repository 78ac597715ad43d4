"""The one way in and the one way out: every file lmtrain reads or writes goes through here.

Reading: regular files only, and bounded reads where a size is implied. A named pipe, a character
device such as /dev/zero or a socket given where lmtrain expects a file would otherwise hang (a
FIFO with no writer) or be read until memory runs out (/dev/zero); it is refused before a byte is
read.

Writing: atomic_write (and write_bytes, write_text, write_json on top of it) replaces a file whole
or not at all; a failure is a WriteError that says why (a full disk, a read-only file system).
A temporary that SIGKILL or a power cut left behind is removed by sweep_temps where lmtrain next
writes into that directory, and a JSON-lines file's torn last line by repair_tail before the next
append. No torch import: the config loader uses this too. The module is long because reading and
writing share their error wording and must stay one place that every other module goes through.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from lmtrain.errors import LmtrainError

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


_VAR = re.compile(r"\$\{(\w+)\}")


class UnsetVariableError(ValueError):
    """A `${VAR}` in a path names an environment variable that is not set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def expand_vars(spec: str) -> str:
    """`spec` with every `${VAR}` replaced by the environment variable's value.

    Only the braced form: a bare `$` stays as it is, since it is legal in a file name.
    """

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise UnsetVariableError(m.group(1))
        return value

    return _VAR.sub(sub, spec)


def expand_user(spec: str) -> str:
    """A leading `~` or `~user` expanded to the home directory; ValueError for an unknown user."""
    if not spec.startswith("~"):
        return spec
    try:
        return str(Path(spec).expanduser())
    except RuntimeError:  # ~user for a user that does not exist, or no HOME
        name = spec.split("/", 1)[0]
        raise ValueError(f"cannot expand {name!r}: no such user or home directory") from None


class NotRegularFileError(OSError):
    """The path exists but is a pipe, device or socket; `kind` says which."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"is {kind}, not a regular file", str(path))
        self.kind = kind

    @property
    def advice(self) -> str:
        """The message tail, shared by every input so that they read alike."""
        return (
            f"is {self.kind}, not a regular file; lmtrain reads only regular files "
            "(save the stream to a file first)"
        )


def kind_of(mode: int) -> str:
    """'a named pipe (FIFO)', 'a character device', ... for a non-regular `st_mode`."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading; NotRegularFileError for a pipe, device or socket.

    O_NONBLOCK makes opening a FIFO with no writer return at once instead of waiting for one;
    the type is then checked on the open descriptor (fstat), so a file swapped for a pipe between
    a check and the open cannot slip through. Missing files, directories and permission errors
    raise the usual FileNotFoundError, IsADirectoryError and PermissionError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except ValueError:  # a NUL character, which no file name can hold
        raise OSError(errno.EINVAL, "the path contains a NUL character", str(path)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, kind_of(mode))
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    f.raw.name = os.fspath(path)  # not the descriptor's number, as open(path) names it
    return f


def read_bounded(path: Path, limit: int | None) -> tuple[bytes, bool]:
    """The bytes of a regular file, at most `limit` of them; the flag says it holds more."""
    with open_regular(path) as f:
        if limit is None:
            return f.read(), False
        data = f.read(limit + 1)
    return data[:limit], len(data) > limit


EMPTY_FILE = "the file is empty"
"""check_readable's answer for a readable file without a byte."""


def check_readable(path: Path) -> str | None:
    """Why `path` cannot be read as a regular file (a message tail), or None; reads nothing."""
    try:
        with open_regular(path) as f:
            # One byte, not the size: /proc and /sys files report a size of 0 and still read.
            empty = f.read(1) == b""
    except FileNotFoundError:
        return "file not found; check the path"
    except IsADirectoryError:
        return "is a directory; give the path of a file"
    except NotADirectoryError:
        return "a parent of this path is a file, not a directory; check the path"
    except PermissionError:
        return "permission denied; make the file readable"
    except NotRegularFileError as e:
        return e.advice
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if empty:
        return EMPTY_FILE
    return None


_REPLACED = "the previous version, if any, is unchanged and no partial file was left"
_APPENDED = "every complete record is kept, and a torn last line is cut off before the next append"


class WriteError(LmtrainError, OSError):
    """A file lmtrain could not write; the message names it and says why (exit 2).

    Also an OSError (errno and strerror are the failure's own), so that a caller that words its
    own message, or that treats any failed write alike, keeps working.
    """

    def __init__(self, path: Path, error: OSError, kept: str = _REPLACED) -> None:
        reason, advice = _REASONS.get(
            error.errno or 0, (error.strerror or str(error), f"Check the path, {_ELSEWHERE}")
        )
        self.message = f"{path}: cannot be written ({reason}); {kept}. {advice}"
        self.kept = kept
        super().__init__(error.errno, error.strerror or reason, str(path))

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:  # picklable, as exceptions crossing processes are
        return (WriteError, (Path(self.filename), OSError(self.errno, self.strerror), self.kept))


_ELSEWHERE = "or write somewhere else."
_REASONS = {  # errno: (why, what to do)
    errno.ENOSPC: ("the disk is full", f"Free some disk space, {_ELSEWHERE}"),
    errno.EDQUOT: (
        "the disk quota is exceeded",
        f"Free some space within your quota, {_ELSEWHERE}",
    ),
    errno.EROFS: ("the file system is read-only", "Write to a writable file system."),
    errno.EACCES: ("permission denied", f"Make the folder writable, {_ELSEWHERE}"),
    errno.EPERM: ("permission denied", f"Make the folder writable, {_ELSEWHERE}"),
}

_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[1-9]\d*)\.[0-9a-f]{8}\.tmp")
"""The name of a temporary of atomic_write: `.{name}.{pid}.{8 hex digits}.tmp`."""


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb", exclusive: bool = False) -> Iterator[IO[Any]]:
    """A new file to write in place of `path`: the old file or the whole new one, never a part.

    The temporary beside the target is created with O_EXCL (a symbolic link planted under its
    name is never written through) and mode 0o666, which the umask trims as for any new file
    (mkstemp's 0600 would hide a run's files from the user's group). On a clean exit the data is
    flushed and synced, renamed over `path`, and the rename synced. On any exception, a second
    Ctrl-C included, the temporary is removed; an OSError becomes a WriteError. The pid in its
    name lets sweep_temps remove one that SIGKILL left behind. `exclusive` never replaces a file:
    where `path` exists when the write ends, FileExistsError, and nothing changed.
    """
    path = Path(path)
    tmp = _temp_of(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            # Content and size must reach the disk before the rename; fdatasync skips the
            # timestamps (macOS has no fdatasync).
            _datasync(f.fileno())
        if exclusive:
            _link_new(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, (WriteError, FileExistsError)):
            raise WriteError(path, e) from None
        raise
    fsync_dir(path.parent)


def _link_new(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` only if that name is free: a hard link fails rather than
    replace (a rename would not), and the temporary name goes."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: checked, then renamed
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.replace(tmp, path)
    tmp.unlink(missing_ok=True)


def replace_with_link(source: Path, path: Path) -> bool:
    """Make `path` a hard link of `source` atomically (a link under a temporary name, renamed);
    False, with nothing changed, where the file system cannot link them."""
    tmp = _temp_of(Path(path))
    try:
        os.link(source, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            return False
        raise
    fsync_dir(Path(path).parent)
    return True


def _temp_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (atomic_write)."""
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: Path, text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically (atomic_write)."""
    with atomic_write(path, "w") as f:
        f.write(text)


replace_text = write_text
"""The earlier name of write_text."""


def write_json(path: Path, value: Any, indent: int | None = 2, ensure_ascii: bool = True) -> None:
    """Replace `path` with `value` as JSON and a newline, atomically; NaN is refused (not JSON)."""
    text = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)
    write_text(path, text + "\n")


def stale_temps(directory: Path, names: Collection[str] | None = None) -> list[Path]:
    """The temporaries atomic_write left in `directory` in processes that are gone (SIGKILL, a
    power cut), of writes to `names` only where given. A live process's write in progress, and
    any file not named exactly like one of lmtrain's temporaries, are never among them. A pid
    says nothing about a process of another host or container sharing the folder: call it on
    a folder such a process cannot be writing to (a run directory under its lock), or with the
    names only this command writes there."""
    try:
        entries = sorted(Path(directory).iterdir())
    except OSError:
        return []
    return [
        p
        for p in entries
        if (m := _TEMP.fullmatch(p.name))
        and (names is None or m["name"] in names)
        and not _alive(int(m["pid"]))
        and not p.is_symlink()
        and p.is_file()
    ]


def sweep_temps(directory: Path, names: Collection[str] | None = None) -> list[Path]:
    """Remove stale_temps(directory, names); returns what was removed."""
    removed: list[Path] = []
    for p in stale_temps(directory, names):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # too large to be a process id
        return False
    return True


def repair_tail(path: Path) -> int:
    """Cut a torn last line off a JSON-lines file; returns how many bytes were dropped.

    A write cut short (SIGKILL, a power cut, a full disk) leaves a last line without its newline,
    or zero bytes a file system filled in. Every complete record is kept: a last line that is a
    whole JSON value and only lacks its newline gets one; an unparsable last line is truncated.
    Appending onto a torn line would join the two and damage the file for good. Only the last
    line is read: a resume must not read a long run's whole file (once more) to mend its end.
    """
    try:
        with open(path, "r+b") as f:
            start = _last_line_start(f)
            f.seek(start)
            last = f.read()
            if not last or (last.endswith(b"\n") and _is_json(last)):
                return 0
            if _is_json(last):  # a whole record that only lost its newline
                f.write(b"\n")
                dropped = 0
            else:
                f.truncate(start)
                dropped = len(last)
            _datasync(f.fileno())
            return dropped
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise WriteError(Path(path), e, _APPENDED) from None


def _last_line_start(f: BinaryIO) -> int:
    """Where the last line of `f` begins: after the last newline before its final byte (which
    ends the last line), found by reading backwards a block at a time."""
    end = f.seek(0, os.SEEK_END) - 1
    while end > 0:
        begin = max(0, end - _TAIL_BLOCK)
        f.seek(begin)
        newline = f.read(end - begin).rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


_TAIL_BLOCK = 1 << 16


def open_append(path: Path) -> tuple[TextIO, int]:
    """`path` opened to append JSON lines (created if missing) after repair_tail, and the bytes
    repair_tail dropped. A failed write to it is the caller's to report (WriteError words it)."""
    dropped = repair_tail(path)
    try:
        return open(path, "a", encoding="utf-8"), dropped  # noqa: SIM115 - the caller's to close
    except OSError as e:
        raise WriteError(Path(path), e, _APPENDED) from None


def append_records(path: Path, lines: Iterable[str]) -> int:
    """Append one JSON line per item of `lines` to `path` (open_append); returns the bytes
    repair_tail dropped."""
    f, dropped = open_append(path)
    try:
        with f:
            f.write("".join(line + "\n" for line in lines))
    except OSError as e:
        raise WriteError(Path(path), e, _APPENDED) from None
    return dropped


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        return False
    return True


def _datasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)  # looked up at each call, so a test can fill the disk


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (its entry must reach the disk too); best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
