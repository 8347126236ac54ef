"""The results file and the public reader.

Everything here must survive a SIGKILL at any instruction without losing or duplicating a
result (the reference runtime appends unlocked and never trims a torn tail), and
must hold with any number of writers (processes, forked children) and readers at once.

:class:`ResultsFile` is the JSONL results file. Every writer and reader holds
``FileLock(path + ".lock")``. A delivery goes through the delivery journal
(``path + ".journal"``), whose protocol is written down in :mod:`.journal`: whoever takes the
lock next after a crash finishes the delivery exactly once. Writers decide "already
delivered?" against the id logs on disk (:mod:`.idlog`) and the journal, under the lock,
never against their own memory.

Nothing here calls ``fsync``: the guarantees are against a killed process, not a power cut.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import filelock

from .. import _config, _fork, _safefile
from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from .._safefile import UntrustedFile
from . import journal as _journal
from .idlog import DEFAULT_LOCK_TIMEOUT, IdLog
from .rows import Record, valid_id

__all__ = [
    "IdLog",
    "Record",
    "ResultsFile",
    "UntrustedFile",
    "read_delegation_results",
]

logger = get_logger(__name__)

_TAIL_CHUNK = 64 * 1024
_JOURNAL_VERSION = 2


# One counter per kind of problem (the key): a damaged file or a full disk repeats every
# cycle, and the log should say so without flooding.
_warn = RateLimitedLog(logger)
# A fork while another thread held the counter's lock would leave the child's copy locked.
_fork.on_fork_in_child(_warn.reinit_after_fork)


# --------------------------------------------------------------------------------------------
# ResultsFile
# --------------------------------------------------------------------------------------------


def _encode_record(record: Mapping[str, Any]) -> str:
    # default=str: one odd value (a datetime, say) must not block the whole batch forever.
    return json.dumps(dict(record), ensure_ascii=False, default=str) + "\n"


def _parse_lines(raw: bytes) -> list[Record]:
    """Records from JSONL bytes; invalid, torn and non-object lines are skipped with a warning."""
    lines = raw.split(b"\n")
    # Split on b"\n" only: str.splitlines would also split on U+2028 and friends, which
    # json.dumps(ensure_ascii=False) leaves raw inside strings.
    tail = lines.pop()
    if tail.strip():
        _warn.warning(
            "results-line", "skipping a torn last line (%d bytes) in the results file", len(tail)
        )
    records: list[Record] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            _warn.warning("results-line", "skipping unparseable results line %d: %s", number, exc)
            continue
        if not isinstance(obj, dict):
            _warn.warning("results-line", "skipping results line %d: not a JSON object", number)
            continue
        records.append(obj)
    return records


class ResultsFile:
    """The JSONL results file with exactly-once delivery across crashes and writers.

    Args:
        path: The results file. Resolved once, here: a symbolic link is followed, and the
            lock and journal are named after the target, so every writer and reader of that
            file excludes every other whichever name it was given.
        lock_timeout: Seconds to wait for the lock (default 30).
        id_logs: The writer's id logs, by :attr:`IdLog.name`. A reader passes none.

    A caller may rely on:

    * every complete line is one JSON object; a torn tail left by any crash is cut before the
      next append (C18) and never returned;
    * a delivery interrupted at any point is finished, exactly once, by the next
      :meth:`deliver`, :meth:`consume`, :meth:`peek` or :meth:`recover` from any process;
    * the results file, the journal and the lock file are created 0600. The results file and
      the journal are opened without following a link and refused (one ERROR) unless they are
      regular files owned by this user: a refused journal is neither applied nor removed, a
      refused results file is neither read nor written;
    * the lock file stays on disk on purpose: unlinking a lock file others may be waiting on
      breaks mutual exclusion.
    """

    path: str
    journal_path: str
    lock: filelock.BaseFileLock

    def __init__(
        self,
        path: str | os.PathLike[str],
        lock_timeout: float | None = None,
        id_logs: Iterable[IdLog] = (),
    ) -> None:
        self.path = _safefile.resolve(path)
        self.journal_path = self.path + ".journal"
        # The beat thread passes a short timeout: a consumer stuck while holding the lock
        # must delay a delivery (retried next cycle), never the heartbeat itself.
        timeout = DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout
        self.lock = filelock.FileLock(
            self.path + ".lock", timeout=timeout, mode=_safefile.FILE_MODE
        )
        self._logs: dict[str, IdLog] = {}
        for log in id_logs:
            self._register(log)

    def __repr__(self) -> str:
        return f"ResultsFile({self.path!r})"

    def _register(self, log: IdLog) -> None:
        known = self._logs.setdefault(log.name, log)
        if known is not log and known.path != log.path:
            raise ValueError(f"two id logs named {log.name!r}: {known.path} and {log.path}")

    def deliver(
        self,
        records: Sequence[Record],
        id_logs: Sequence[tuple[IdLog, Sequence[str]]] = (),
        aliases: Mapping[str, str] | None = None,
    ) -> list[Record]:
        """Append the new ``records`` as JSON lines and add the ids to the id logs, as one
        crash-safe step; return the records appended.

        A record is new unless its ``delegation_id``, or the other id ``aliases`` gives it (the
        key of the message it carries), is already in one of ``id_logs`` *on disk* (or in a
        journal still waiting to record it): the decision is taken under the lock against what
        every writer has recorded, so two writers never both append it.
        After a SIGKILL at any point either nothing or everything of this call is (or will be,
        on the next recovery) on disk, never half and never twice. The ``IdLog`` objects are
        updated in memory as well.

        Raises ``filelock.Timeout`` when a lock is not free within its timeout, ``OSError``
        when the results file, the journal or an id log cannot be read or written (the
        append is rolled back where possible), and ``TypeError``/``ValueError`` for a record
        JSON cannot encode. In each case nothing of this call was delivered and the caller
        may retry it. An id log that cannot be written after the append keeps its ids pending
        in the journal and in memory; they are written by the next delivery or ``save``.
        """
        logs = [(log, [i for i in ids if valid_id(i)]) for log, ids in id_logs]
        for log, _ in logs:
            self._register(log)
        if not records and not any(ids for _, ids in logs):
            return []
        with self.lock:
            pending = self._recover_locked()
            known: set[str] = set()
            for log, _ in logs:
                known |= log.ids_on_disk()
                known.update(pending.get(log.name, ()))
            also = aliases or {}
            fresh = [
                r
                for r in records
                if r.get("delegation_id") not in known
                and also.get(str(r.get("delegation_id"))) not in known
            ]
            if len(fresh) != len(records):
                logger.info(
                    "left out %d result(s) already delivered by another writer or run",
                    len(records) - len(fresh),
                )
            data = "".join(_encode_record(r) for r in fresh)
            ids = {name: list(values) for name, values in pending.items()}
            for log, new in logs:
                merged = dict.fromkeys(ids.get(log.name, ()))
                merged.update(dict.fromkeys(i for i in new if i not in known))
                if merged:
                    ids[log.name] = list(merged)
            if not data and not ids:
                return []
            journal = _journal.Journal(_safefile.file_size(self.path), data, ids)
            _journal.write(self.journal_path, journal)
            try:
                _journal.append_text(self.path, journal)
            except OSError:
                _journal.roll_back(self.path, self.journal_path, journal)
                raise
            try:
                _journal.record_ids(self.journal_path, journal, self._logs)
            except OSError as exc:
                # Appended: the journal (still on disk) records the ids on the next recovery.
                _warn.warning("id-log", "could not finish the delivery journal: %s", exc)
        return fresh

    def consume(self) -> list[Record]:
        """Return every record and empty the file (truncated in place, never renamed).

        Lines that do not parse as a JSON object are skipped with a (rate-limited) warning.
        Raises ``filelock.Timeout`` or ``OSError``; the records then stay in the file.
        """
        return self._read(remove=True)

    def peek(self) -> list[Record]:
        """Return every record without removing any (same parsing as :meth:`consume`)."""
        return self._read(remove=False)

    def recover(self) -> None:
        """Finish a delivery a crashed process left half-done, then cut any torn tail.

        Idempotent; a no-op when there is nothing to recover. Ids for an id log this object
        does not know stay in the journal for a writer that does.
        """
        if not self._may_exist():
            return
        with self.lock:
            self._recover_locked()

    def recover_if_pending(self) -> None:
        """:meth:`recover`, only when a journal is there (a single ``lstat`` otherwise)."""
        if os.path.lexists(self.journal_path):
            self.recover()

    # -- internals ---------------------------------------------------------------------------

    def _may_exist(self) -> bool:
        # Neither file there: nothing to read or recover, and no lock file is created in a
        # directory the writer may never use (the default lives in /tmp).
        return os.path.lexists(self.path) or os.path.lexists(self.journal_path)

    def _read(self, *, remove: bool) -> list[Record]:
        if not self._may_exist():
            return []
        with self.lock:
            self._recover_locked()
            fd = _safefile.open_own(self.path, os.O_RDWR if remove else os.O_RDONLY)
            if fd is None:
                return []
            with os.fdopen(fd, "r+b" if remove else "rb") as f:
                raw = f.read()
                if remove and raw:
                    # Truncate, not rename: the writer and other readers keep one inode and
                    # one lock, so nothing appended under the lock can be missed.
                    f.truncate(0)
        return _parse_lines(raw)

    def _recover_locked(self) -> dict[str, list[str]]:
        """Apply a pending journal and cut a torn tail; the caller holds the lock.

        Returns the ids the journal still holds for id logs that could not be written (or
        that this object does not know).
        """
        pending: dict[str, list[str]] = {}
        journal = _journal.read(self.journal_path)
        if journal is not None:
            if journal.offset is not None:
                logger.info("finishing an interrupted delivery to %s", self.path)
            _journal.append_text(self.path, journal)
            pending = _journal.record_ids(self.journal_path, journal, self._logs)
        self._cut_torn_tail()
        return pending

    def _cut_torn_tail(self) -> None:
        """Cut the bytes after the last newline (a line a killed process did not finish)."""
        fd = _safefile.open_own(self.path, os.O_RDWR)
        if fd is None:
            return
        with os.fdopen(fd, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            keep = 0
            end = size
            while end > 0:
                start = max(0, end - _TAIL_CHUNK)
                f.seek(start)
                newline = f.read(end - start).rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            f.truncate(keep)
        _warn.warning("torn-tail", "cut a torn tail of %d bytes from %s", size - keep, self.path)


# --------------------------------------------------------------------------------------------
# Public reader
# --------------------------------------------------------------------------------------------


def read_delegation_results(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Return and remove every delegation result in the results file.

    ``path`` defaults to ``$DELEGATION_RESULTS_FILE`` (read at each call), then
    ``/tmp/delegation_results.jsonl``. Works under the writer's lock, so a result is returned
    by exactly one call and none is lost to a concurrent write. A missing file gives ``[]``.
    Never raises for I/O trouble or for anything in the files: it logs a warning and returns
    ``[]``, and the results stay in the file for the next call. A results file or journal
    that is a link or owned by another user is refused (one ERROR), never read.
    """
    if path is None:
        # Looked up at each call, so a test or a program can set the environment first.
        path = _config.env_path(None, _config.ENV_RESULTS_FILE, _config.DEFAULT_RESULTS_FILE)
    try:
        return ResultsFile(path).consume()
    except (OSError, ValueError) as exc:  # filelock.Timeout and a refused file included
        logger.warning("could not read delegation results from %s: %s", os.fspath(path), exc)
        return []
