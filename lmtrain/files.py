"""Opening input files safely: regular files only, and bounded reads where a size is implied.

A named pipe, a character device such as /dev/zero or a socket given where lmtrain expects a file
would otherwise hang (a FIFO with no writer) or be read until memory runs out (/dev/zero). Every
input (config, data, score file, vectors) is opened here, and refused before a byte is read when
it is not a regular file. No torch import: the config loader uses this too.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

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
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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


def replace_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: the old file or the whole new one, never a part.

    The temporary file is made fresh by mkstemp (O_EXCL) beside the target, so a symbolic link
    planted under a predictable name is never written through; it gets the permissions the
    umask gives (mkstemp's 0600 would hide a run's files from the user's group). On an OSError
    (a full disk) the temporary file is removed and the error raised for the caller to word.
    """
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.chmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            # Content and size must reach the disk before the rename; fdatasync skips the
            # timestamps (macOS has no fdatasync).
            getattr(os, "fdatasync", os.fsync)(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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


def _umask() -> int:
    """The process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
