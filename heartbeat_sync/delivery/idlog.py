"""The id logs: the activity cursor and the seen file (ordered, bounded, persisted id sets).

Several writers may share one id log (two processes for one workspace, a forked child that
restarts its inherited loop), so nothing here ever overwrites the file with one process's view:
every write reads the file under its lock and merges. Ids added in memory stay pending until a
write succeeds, so a failed write is retried and a re-read never forgets them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from itertools import islice

import filelock

from .. import _fork, _safefile
from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from .rows import valid_id

__all__ = ["DEFAULT_LOCK_TIMEOUT", "IdLog"]

logger = get_logger(__name__)

#: Lock timeout of a file object made without one. Long enough that only a wedged peer makes
#: it expire; the beat thread passes its own short timeout.
DEFAULT_LOCK_TIMEOUT = 30.0

_warn = RateLimitedLog(logger)
_fork.on_fork_in_child(_warn.reinit_after_fork)


class IdLog:
    """An ordered, bounded, persisted set of ids (the activity cursor, the seen file).

    File format: the ids comma-joined, oldest first, no newline (the reference cursor's format,
    but ordered by insertion). Reading tolerates surrounding whitespace, a trailing newline and
    empty items. At most ``max_ids`` ids are kept: the newest by insertion order.

    A caller may rely on:

    * nothing touches the disk until the first use (``load`` is lazy and idempotent);
    * ``path`` is resolved once, at construction: a symbolic link is followed to its target,
      which is where the ids are saved (the link stays a link);
    * a missing file is an empty log; a damaged one is read as far as it can be (invalid
      items dropped, one warning); one that is a link, not a regular file or owned by another
      user is refused with one ERROR: read as empty, and never written;
    * :meth:`save` merges the ids added since the last write into what the file holds now
      (another writer's ids are kept), then replaces it atomically (0600) under
      ``FileLock(path + ".lock")``. It logs instead of raising; ids it could not write stay
      pending, and every later :meth:`save` or :meth:`reload` keeps them and retries;
    * all methods are thread-safe.
    """

    path: str
    name: str
    max_ids: int

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_ids: int,
        lock_timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(max_ids, bool) or not isinstance(max_ids, int) or max_ids < 1:
            raise ValueError(f"max_ids must be an int >= 1, not {max_ids!r}")
        self.path = _safefile.resolve(path)
        self.name = name if name is not None else os.path.basename(os.fspath(path))
        self.max_ids = max_ids
        # dicts keep insertion order and give O(1) membership: ordered sets.
        self._ids: dict[str, None] = {}
        self._pending: dict[str, None] = {}
        self._loaded = False
        self._warned_corrupt = False
        self._mutex = threading.RLock()
        timeout = DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout
        self._file_lock = filelock.FileLock(
            self.path + ".lock", timeout=timeout, mode=_safefile.FILE_MODE
        )

    def __repr__(self) -> str:
        return f"IdLog({self.path!r}, max_ids={self.max_ids})"

    def load(self) -> None:
        """Read the file once; later calls do nothing (use :meth:`reload` to read again)."""
        with self._mutex:
            if self._loaded:
                return
            try:
                on_disk = self._read_file()
            except OSError:  # refused, or unreadable: both already reported
                on_disk = []
            self._merge(on_disk)

    def reload(self) -> None:
        """Read the file again; ids added here and not yet written are kept (and still pending)."""
        with self._mutex:
            self._loaded = False
            self.load()

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        with self._mutex:
            self.load()
            return item in self._ids

    def __len__(self) -> int:
        with self._mutex:
            self.load()
            return len(self._ids)

    @property
    def dirty(self) -> bool:
        """True while some added id has not been written to the file."""
        with self._mutex:
            return bool(self._pending)

    def newest(self) -> str | None:
        """The id inserted last, or ``None`` when the log is empty."""
        with self._mutex:
            self.load()
            return next(reversed(self._ids), None)

    def ids(self) -> list[str]:
        """All ids, oldest first."""
        with self._mutex:
            self.load()
            return list(self._ids)

    def add(self, ids: Iterable[str]) -> list[str]:
        """Append the ids not yet present, in order, in memory only; return those.

        The oldest ids beyond ``max_ids`` are evicted. Every id returned was absent before the
        call, even if a long batch evicted it again at once. An id :func:`valid_id` refuses is
        skipped (logged at debug level): it would corrupt the format.
        """
        if isinstance(ids, str):
            # A bare string is one id, not an iterable of one-character ids.
            ids = (ids,)
        with self._mutex:
            self.load()
            added: list[str] = []
            for item in ids:
                if not valid_id(item):
                    logger.debug("%s: skipping id that cannot be stored: %r", self.path, item)
                    continue
                if item in self._ids:
                    continue
                self._ids[item] = None
                self._pending[item] = None
                added.append(item)
            if added:
                self._trim()
            return added

    def save(self) -> None:
        """Write the pending ids, merged into the file's; never raises ``OSError``."""
        with self._mutex:
            if not self._pending:
                return
            try:
                self.record(())
            except OSError as exc:  # filelock.Timeout is an OSError too
                _warn.warning("id-log", "could not save %s (will retry): %s", self.path, exc)
            else:
                _warn.reset("id-log")

    # -- what the delivery journal needs -----------------------------------------------------

    def ids_on_disk(self) -> set[str]:
        """The ids the file holds now, with the ids added here and not yet written.

        Read under the file lock, so another writer's ids are included; memory is refreshed
        from the file as :meth:`reload` would. A delivery decides "already delivered?" against
        this, never against memory alone. Raises ``OSError`` (``filelock.Timeout`` and a
        refused file included) when it cannot tell, so that a caller never takes "unknown" for
        "not there".
        """
        with self._mutex, self._file_lock:
            on_disk = self._read_file()
            self._loaded = False
            self._merge(on_disk)
            return set(on_disk) | set(self._pending)

    def record(self, ids: Iterable[str]) -> None:
        """Add ``ids`` (as :meth:`add`) and write them with every pending id, now.

        The file's ids are read under its lock and merged first, so no other writer's id is
        lost; recording ids already there changes nothing, which makes a repeated call
        harmless. Unlike :meth:`save` this raises ``OSError`` (``filelock.Timeout`` and a
        refused file included) when the file cannot be written; ``ids`` then stay pending, in
        memory, for the next :meth:`save` or :meth:`record`.
        """
        with self._mutex:
            self.add(ids)
            with self._file_lock:
                on_disk = self._read_file()
                self._loaded = False
                self._merge(on_disk)
                _safefile.atomic_write(self.path, ",".join(self._ids).encode("utf-8"))
                self._pending = {}

    def _merge(self, on_disk: list[str]) -> None:
        """Memory becomes the file's ids, then the pending ones; the caller holds ``_mutex``."""
        merged = dict.fromkeys(on_disk)
        for item in self._pending:
            merged[item] = None
        self._ids = merged
        self._loaded = True
        self._trim()

    def _trim(self) -> None:
        excess = len(self._ids) - self.max_ids
        if excess > 0:
            for old in list(islice(self._ids, excess)):
                del self._ids[old]
                self._pending.pop(old, None)

    def _read_file(self) -> list[str]:
        """The valid ids in the file. Raises ``OSError`` when it exists but cannot be read."""
        try:
            raw = _safefile.read_own(self.path)
        except _safefile.UntrustedFile:
            raise
        except OSError as exc:
            self._warn_corrupt("cannot read %s: %s", self.path, exc)
            raise
        if raw is None:
            return []
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._warn_corrupt("%s is not UTF-8; its ids were dropped", self.path)
            return []
        items = [item.strip() for item in text.split(",")]
        good = [item for item in items if item and valid_id(item)]
        if len(good) != sum(1 for item in items if item):
            self._warn_corrupt("%s holds malformed ids; they were dropped", self.path)
        return good

    def _warn_corrupt(self, msg: str, *args: object) -> None:
        if not self._warned_corrupt:
            self._warned_corrupt = True
            logger.warning(msg, *args)
