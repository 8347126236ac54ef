"""Opening, replacing and creating the library's own files safely in shared directories.

The default files live in ``/tmp``, which every local user can write. So every file the library
reads is opened without following a symbolic link and must be a regular file owned by the
library's own user; anything else is refused with one ERROR, never trusted and never fatal.
Every file it creates is 0600. Paths are resolved once, when a file object is made, so a link
the operator set up on purpose is followed to its target and every name derived from the path
(lock, journal, temp file) is the target's.

Nothing here logs a file's content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading

from . import _fork
from ._logctx import get_logger

__all__ = [
    "FILE_MODE",
    "UntrustedFile",
    "atomic_write",
    "file_size",
    "open_own",
    "resolve",
    "unlink_if_present",
    "write_all",
]

logger = get_logger(__name__)

#: The mode of every file the library creates.
FILE_MODE = 0o600
# os.open on Windows needs O_BINARY or it translates newlines.
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
# A FIFO planted under our name must not block the open.
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_geteuid = getattr(os, "geteuid", None)
_fchmod = getattr(os, "fchmod", None)


class UntrustedFile(OSError):
    """A file the library will not read or write: a link, not a regular file, or owned by
    another user."""


# Paths already reported, so that a planted file is one ERROR, not one per cycle.
_reported: set[str] = set()
_reported_lock = threading.Lock()


def _after_fork() -> None:
    global _reported_lock
    _reported_lock = threading.Lock()


_fork.on_fork_in_child(_after_fork)


def _refuse(path: str, why: str) -> UntrustedFile:
    with _reported_lock:
        first = path not in _reported
        _reported.add(path)
    if first:
        logger.error(
            "refusing %s: %s. Another user may have planted it; remove it, or give the "
            "library files in a directory only this user can write",
            path,
            why,
        )
    return UntrustedFile(errno.EPERM, f"refusing {why}", path)


def _trusted(path: str) -> None:
    if _reported:  # a cheap test first: almost always empty
        with _reported_lock:
            _reported.discard(path)


def resolve(path: str | os.PathLike[str]) -> str:
    """The absolute path with every symbolic link resolved (a missing file is fine)."""
    return os.path.realpath(os.fspath(path))


def open_own(path: str, flags: int = os.O_RDONLY) -> int | None:
    """Open ``path`` without following a link; ``None`` if it does not exist.

    Raises :class:`UntrustedFile` (after one ERROR per path) when ``path`` is a link, not a
    regular file, or not owned by this process's user; other ``OSError`` as ``os.open``.
    """
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_NONBLOCK | _O_BINARY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise _refuse(path, "it is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "it is not a regular file")
        if _geteuid is not None and info.st_uid != _geteuid():
            raise _refuse(path, f"it is owned by uid {info.st_uid}, not by this user")
        if _O_NONBLOCK:
            # Regular files ignore O_NONBLOCK, but leave the descriptor as open() would.
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    _trusted(path)
    return fd


def read_own(path: str) -> bytes | None:
    """The whole content of ``path`` (see :func:`open_own`); ``None`` if it does not exist."""
    fd = open_own(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until everything is written (a write may be short, e.g. near a quota)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def create_own(path: str, flags: int = os.O_WRONLY) -> int:
    """Open ``path`` for writing, creating it 0600; an existing file must pass :func:`open_own`."""
    fd = open_own(path, flags)
    if fd is not None:
        return fd
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY, FILE_MODE)
    except FileExistsError:
        # Created meanwhile by someone else: check that one.
        fd = open_own(path, flags)
        if fd is None:
            raise
        return fd


def atomic_write(path: str, data: bytes, *, fsync: bool = False, tmp: str | None = None) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new content, never a mix.

    The new file is 0600 whatever the umask. The content goes to a temp file in the same
    directory, which then replaces ``path`` with ``os.replace``; if anything fails the temp
    file is removed and the error raised (``path`` is then unchanged).

    Args:
        path: The file to replace.
        data: Its new content.
        fsync: Flush the content, then the rename, to the disk before returning, for a file
            that must survive a power cut (a token the platform shows once).
        tmp: The temp file's name. The default, ``path + ".tmp"``, is safe when the caller
            holds the lock that guards ``path``; a caller without one passes a name of its
            own (one per process). Whatever sits under that name (a temp file left by a
            killed process, or something planted) is removed first and never written through.
    """
    if tmp is None:
        tmp = path + ".tmp"
    unlink_if_present(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY, FILE_MODE)
    try:
        try:
            if _fchmod is not None:
                _fchmod(fd, FILE_MODE)  # the mode given to open() is filtered by the umask
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(directory: str) -> None:
    # The rename reaches the disk with its directory; not every system can open one for that.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def unlink_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def file_size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0
