"""The lock on RUN/.lmtrain/lock: one process at a time trains in a run directory.

POSIX only (Linux, macOS, WSL): the lock is flock(2) on a descriptor lmtrain opens itself, which
is what its guarantees rest on: the kernel drops it however the holder dies; the holder's pid,
host and start time, written in the file, name it in a refusal and tell a stale file from a live
holder; a symbolic link or a non-regular file in its place is refused; a file replaced while
waiting is locked again. A portable lock (the `filelock` package) opens the path itself and, on
Windows, locks the file's first byte, which the refused process then cannot read: the holder
could no longer be named, so it is not used. Where there is no fcntl (native Windows, which
lmtrain does not support: its file reads rely on O_NONBLOCK as well), fit stops with a clear
error instead of an ImportError.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from lmtrain.rundir.layout import RunDirectoryError, Warn, now

try:
    import fcntl
except ImportError:  # native Windows: no flock
    fcntl = None  # type: ignore[assignment]


def no_locking(run_path: Path) -> RunDirectoryError:
    """The error of a platform without POSIX file locking."""
    return RunDirectoryError(
        f"run directory {run_path}: lmtrain fit needs POSIX file locking (fcntl.flock), which "
        f"this platform ({sys.platform}) does not have, to make sure that one process at a time "
        "trains in a run directory. lmtrain runs on Linux, macOS and WSL (Windows Subsystem "
        "for Linux); run it there."
    )


class RunLock:
    """An exclusive lock on RUN/.lmtrain/lock for the life of the run.

    flock: the kernel drops it when the process dies, however it dies, so a lock is never stale
    in practice; the file's content (pid, host, time) is only there to name the holder. A file
    that still names a holder when the lock is free belonged to a process that died.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path, run_path: Path, warn: Warn) -> RunLock:
        if fcntl is None:
            raise no_locking(run_path)
        for _ in range(5):
            try:
                # O_NOFOLLOW: the lock file is truncated and rewritten, so a symlink planted in
                # its place must not make lmtrain write into the file it points to.
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP or path.is_symlink():
                    raise RunDirectoryError(
                        f"{path} is a symbolic link, not lmtrain's lock file; lmtrain will not "
                        f"write through it, and nothing was changed. Remove the link (it is "
                        f"not lmtrain's), or choose another run.dir."
                    ) from None
                raise RunDirectoryError(
                    f"run directory {run_path} cannot be written ({e.strerror or e}: {path}); "
                    "nothing was changed. Choose another run.dir, or fix its permissions."
                ) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise RunDirectoryError(
                    f"{path} is not a regular file, so it cannot be lmtrain's lock file; nothing "
                    "was changed. Remove it, or choose another run.dir."
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(_read_fd(fd))
                os.close(fd)
                raise RunDirectoryError(
                    f"run directory {run_path} is in use by {holder}; two processes must not "
                    "train in one run directory. Nothing was changed. Wait for that process to "
                    "finish (or stop it), or choose another run.dir."
                ) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                # No flock on this filesystem: fall back to the pid the file names.
                previous = _parse_holder(_read_fd(fd))
                if previous is not None and _alive(previous):
                    os.close(fd)
                    raise RunDirectoryError(
                        f"run directory {run_path} is in use by {_describe_holder(previous)}; "
                        "two processes must not train in one run directory. Nothing was "
                        "changed. Wait for that process to finish, or choose another run.dir."
                    ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file while we waited: retry
                os.close(fd)
                continue
            previous = _parse_holder(_read_fd(fd))
            if previous is not None:
                warn(
                    f"warning: run directory {run_path} was locked by "
                    f"{_describe_holder(previous)}, which is no longer running (it was killed or "
                    "crashed); taking it over"
                )
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            return cls(path, fd)
        raise RunDirectoryError(f"could not lock {path}: it keeps being replaced; try again")

    def release(self, remove: bool = False) -> None:
        with contextlib.suppress(OSError):
            if remove:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)  # empty = released cleanly
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return ""


def _parse_holder(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _describe_holder(holder: dict[str, Any] | str | None) -> str:
    if isinstance(holder, str):
        holder = _parse_holder(holder)
    if holder is None:
        return "another process"
    return (
        f"process {holder.get('pid')} on host {holder.get('host', '?')} (since "
        f"{holder.get('since', '?')})"
    )


def _alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so assume it runs
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True
