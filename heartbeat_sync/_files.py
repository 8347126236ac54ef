"""The results file, its delivery journal, and the public reader.

Everything here must survive a SIGKILL at any instruction without losing or duplicating a
result (CONTRACT.md §13 C18; the reference appends unlocked and never trims a torn tail), and
must hold with any number of writers (processes, forked children) and readers at once.

:class:`ResultsFile` is the JSONL results file. Every writer and reader holds
``FileLock(path + ".lock")``. A delivery first writes a journal (``path + ".journal"``) holding
the byte offset, the exact text to append and the ids to record per id log *by name*
(``"seen"``, ``"cursor"``), never a path; applying it is idempotent (truncate to the offset,
append, merge the ids), so whoever takes the lock next after a crash finishes the delivery
exactly once. A reader knows no id log: it appends the text (so what it returns is whole and
nothing can be appended twice after it empties the file) and leaves the ids in the journal for
the next writer. Writers decide "already delivered?" against the id logs on disk and the
journal, under the lock, never against their own memory. The id logs are in :mod:`._idlog`.

Nothing here calls ``fsync``: the guarantees are against a killed process, not a power cut.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import filelock

from . import _fork, _safefile
from ._idlog import DEFAULT_LOCK_TIMEOUT, IdLog
from ._ratelimit import RateLimitedLog
from ._rows import Record, valid_id
from ._safefile import UntrustedFile

__all__ = [
    "DEFAULT_RESULTS_FILE",
    "RESULTS_FILE_ENV",
    "IdLog",
    "Record",
    "ResultsFile",
    "UntrustedFile",
    "read_delegation_results",
]

logger = logging.getLogger(__name__)

#: Environment variable naming the results file (read at call time, never at import).
RESULTS_FILE_ENV = "DELEGATION_RESULTS_FILE"
#: Results file used when neither an argument nor the environment names one.
DEFAULT_RESULTS_FILE = "/tmp/delegation_results.jsonl"

_TAIL_CHUNK = 64 * 1024
_JOURNAL_VERSION = 2


# One counter per kind of problem (the key): a damaged file or a full disk repeats every
# cycle, and the log should say so without flooding.
_warn = RateLimitedLog(logger)
# A fork while another thread held the counter's lock would leave the child's copy locked.
_fork.on_fork_in_child(_warn.reinit_after_fork)


# --------------------------------------------------------------------------------------------
# Journal
# --------------------------------------------------------------------------------------------


def _id_list(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [i for i in value if valid_id(i)]


class _Journal:
    """One delivery in flight: cut the results file to ``offset``, append ``data``, add ids.

    ``offset`` is ``None`` once the text is in the results file and only ids are left to
    record. ``ids`` maps an id log's name to the ids it must hold. ``legacy`` maps an id log's
    path to ids, from a journal of an earlier version (it held paths; only a path of a known
    log is ever written).
    """

    __slots__ = ("data", "ids", "legacy", "offset")

    def __init__(
        self,
        offset: int | None,
        data: str,
        ids: dict[str, list[str]],
        legacy: dict[str, list[str]] | None = None,
    ) -> None:
        self.offset = offset
        self.data = data
        self.ids = ids
        self.legacy = legacy or {}

    def dumps(self) -> bytes:
        obj: dict[str, object] = {
            "version": _JOURNAL_VERSION,
            "offset": self.offset,
            "data": self.data,
            "ids": self.ids,
        }
        # ensure_ascii (the default) keeps lone surrogates in ``data`` representable.
        return json.dumps(obj).encode("ascii")

    @classmethod
    def loads(cls, raw: bytes) -> _Journal | None:
        """Parse a journal; ``None`` if it is not one this module wrote."""
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        offset, data, ids = obj.get("offset"), obj.get("data"), obj.get("ids")
        if offset is not None and not (
            isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
        ):
            return None
        if not isinstance(data, str):
            return None
        if obj.get("version") == _JOURNAL_VERSION:
            if not isinstance(ids, dict):
                return None
            by_name: dict[str, list[str]] = {}
            for name, values in ids.items():
                checked = _id_list(values)
                if checked is None:
                    return None
                by_name[name] = checked
            return cls(offset, data, by_name)
        # The first version: {"offset", "data", "ids": [[path, ids, max_ids], ...]}.
        if offset is None or not isinstance(ids, list):
            return None
        by_path: dict[str, list[str]] = {}
        for entry in ids:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
                return None
            checked = _id_list(entry[1])
            if checked is None:
                return None
            by_path[entry[0]] = checked
        return cls(offset, data, {}, by_path)


# --------------------------------------------------------------------------------------------
# ResultsFile
# --------------------------------------------------------------------------------------------


def _encode_record(record: Mapping[str, Any]) -> str:
    # default=str: one odd value (a datetime, say) must not block the whole batch forever.
    return json.dumps(dict(record), ensure_ascii=False, default=str) + "\n"


def _to_bytes(text: str) -> bytes:
    # A lone surrogate (from a peer's broken text) cannot be UTF-8 encoded. It only ever sits
    # inside a JSON string, where backslashreplace's "\udXXX" is the JSON escape for that same
    # code unit, so json.loads gives back exactly what was written.
    return text.encode("utf-8", "backslashreplace")


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
    ) -> list[Record]:
        """Append the new ``records`` as JSON lines and add the ids to the id logs, as one
        crash-safe step; return the records appended.

        A record is new unless its ``delegation_id`` is already in one of ``id_logs`` *on
        disk* (or in a journal still waiting to record it): the decision is taken under the
        lock against what every writer has recorded, so two writers never both append it.
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
                known |= log._on_disk()
                known.update(pending.get(log.name, ()))
            fresh = [r for r in records if r.get("delegation_id") not in known]
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
            journal = _Journal(_safefile.file_size(self.path), data, ids)
            _safefile.atomic_write(self.journal_path, journal.dumps())
            try:
                self._append(journal)
            except OSError:
                self._roll_back(journal)
                raise
            try:
                self._record(journal)
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
        try:
            raw = _safefile.read_own(self.journal_path)
        except UntrustedFile:
            raw = None  # reported once; never applied, never removed
        pending: dict[str, list[str]] = {}
        if raw is not None:
            journal = _Journal.loads(raw)
            if journal is None:
                # It is written atomically, so this is outside damage, not our own crash.
                _warn.warning(
                    "journal", "discarding unreadable delivery journal %s", self.journal_path
                )
                _safefile.unlink_if_present(self.journal_path)
            else:
                if journal.offset is not None:
                    logger.info("finishing an interrupted delivery to %s", self.path)
                self._append(journal)
                pending = self._record(journal)
        self._cut_torn_tail()
        return pending

    def _append(self, journal: _Journal) -> None:
        """Append a journal's text at its offset; idempotent.

        Raises ``OSError`` if the results file cannot be written; the journal then stays.
        """
        if journal.offset is not None and journal.data:
            fd = _safefile.create_own(self.path)
            try:
                size = os.fstat(fd).st_size
                if size < journal.offset:
                    # Only a file shrunk outside the lock protocol gets here; writing at the
                    # old offset would pad with NULs, and the data may have been read already.
                    _warn.warning(
                        "journal",
                        "%s is shorter than its journal expects; not re-appending",
                        self.path,
                    )
                else:
                    # Cutting to the offset drops a partial earlier attempt and any torn tail,
                    # which is what makes applying the journal twice harmless.
                    os.ftruncate(fd, journal.offset)
                    os.lseek(fd, journal.offset, os.SEEK_SET)
                    _safefile.write_all(fd, _to_bytes(journal.data))
            finally:
                os.close(fd)

    def _record(self, journal: _Journal) -> dict[str, list[str]]:
        """Merge a journal's ids into the id logs, then remove the journal (or keep only the
        ids that could not be written). Returns those ids.

        Raises ``OSError`` when the journal can be neither removed nor rewritten; it then
        stays as it was, and applying it again is harmless.
        """
        ids = dict(journal.ids)
        for path, values in journal.legacy.items():
            log = next((lg for lg in self._logs.values() if lg.path == path), None)
            if log is None:
                _warn.warning("journal", "dropping ids an old journal held for %s", path)
            else:
                ids[log.name] = ids.get(log.name, []) + values
        pending: dict[str, list[str]] = {}
        for name, values in ids.items():
            log = self._logs.get(name)
            if log is None:
                pending[name] = values
                continue
            try:
                log._update_on_disk(values)
            except OSError as exc:
                pending[name] = values
                _warn.warning("id-log", "could not record delivered ids in %s: %s", log.path, exc)
        if pending:
            # The text is in; only ids are left. Never append it again (a reader may empty the
            # file next), but keep the ids for whoever can write them.
            if journal.offset is not None or pending != journal.ids:
                _safefile.atomic_write(self.journal_path, _Journal(None, "", pending).dumps())
        else:
            _safefile.unlink_if_present(self.journal_path)
        return pending

    def _roll_back(self, journal: _Journal) -> None:
        if journal.offset is None:
            return
        try:
            fd = _safefile.open_own(self.path, os.O_WRONLY)
            if fd is not None:
                try:
                    os.ftruncate(fd, journal.offset)
                finally:
                    os.close(fd)
            _safefile.unlink_if_present(self.journal_path)
        except OSError as exc:
            logger.warning("could not roll back a failed delivery to %s: %s", self.path, exc)

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
        path = os.environ.get(RESULTS_FILE_ENV) or DEFAULT_RESULTS_FILE
    try:
        return ResultsFile(path).consume()
    except (OSError, ValueError) as exc:  # filelock.Timeout and a refused file included
        logger.warning("could not read delegation results from %s: %s", os.fspath(path), exc)
        return []
