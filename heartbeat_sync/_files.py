"""The results file, the id logs (activity cursor, seen file), and the public reader.

Everything here must survive a SIGKILL at any instruction without losing or duplicating a
result (CONTRACT.md §13 C18; the reference appends unlocked and never trims a torn tail).

* :class:`IdLog` is an ordered, bounded set of ids persisted as one comma-joined line, oldest
  first, rewritten atomically (temp file + ``os.replace``). Eviction keeps the newest ids by
  insertion order, never by sorting (C3, C4).
* :class:`ResultsFile` is the JSONL results file. Every writer and reader holds
  ``FileLock(path + ".lock")``. A delivery first writes a journal (``path + ".journal"``) that
  holds the byte offset, the exact text to append and the ids to record; applying the journal
  is idempotent (truncate to the offset, append, add ids), so whoever takes the lock next after
  a crash finishes the delivery exactly once. The kernel drops a dead process's lock, and every
  user of the file runs :meth:`ResultsFile.recover` first thing under the lock, so nothing can be
  written between a crash and its recovery.

Nothing here calls ``fsync``: the guarantees are against a killed process, not a power cut.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

import filelock

from . import _fork
from ._ratelimit import RateLimitedLog

__all__ = [
    "DEFAULT_RESULTS_FILE",
    "RESULTS_FILE_ENV",
    "IdLog",
    "Record",
    "ResultsFile",
    "format_delegation_results",
    "read_delegation_results",
]

logger = logging.getLogger(__name__)

#: One delegation result: ``delegation_id, target_id, source_id, status, summary,
#: response_preview, error, timestamp`` (the reference runtime's record shape).
Record = dict[str, Any]

#: Environment variable naming the results file (read at call time, never at import).
RESULTS_FILE_ENV = "DELEGATION_RESULTS_FILE"
#: Results file used when neither an argument nor the environment names one.
DEFAULT_RESULTS_FILE = "/tmp/delegation_results.jsonl"

# Long enough that only a wedged peer makes it expire; short enough that a beat cycle still
# ends and retries later instead of hanging forever.
_LOCK_TIMEOUT = 30.0
_TAIL_CHUNK = 64 * 1024
# os.open on Windows needs O_BINARY or it translates newlines.
_O_BINARY: int = getattr(os, "O_BINARY", 0)

_MARKER_OPEN = "[A2A_RESULT_FROM_PEER]"
_MARKER_CLOSE = "[/A2A_RESULT_FROM_PEER]"
# The upstream runtime's escapes (molecule-runtime _sanitize_a2a._escape_boundary_markers).
_MARKER_OPEN_ESCAPED = "[/ A2A_RESULT_FROM_PEER]"
_MARKER_CLOSE_ESCAPED = "[/ /A2A_RESULT_FROM_PEER]"
_SUMMARY_MAX = 80
_PREVIEW_MAX = 200


# One counter per kind of problem (the key): a damaged file or a full disk repeats every
# cycle, and the log should say so without flooding.
_warn = RateLimitedLog(logger)
# A fork while another thread held the counter's lock would leave the child's copy locked.
_fork.on_fork_in_child(_warn.reinit_after_fork)


# --------------------------------------------------------------------------------------------
# Low-level file helpers
# --------------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until everything is written (a write may be short, e.g. near a quota)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new content, never a mix.

    The caller holds the lock that guards ``path``, so one fixed temp name is safe and a temp
    file left by a killed process is simply overwritten next time instead of piling up.
    """
    tmp = path + ".tmp"
    # 0o666 less the umask, as open() would: the modes the reference runtime's files get.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY, 0o666)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _unlink_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


#: The longest id an id log keeps (platform ids are 36-character UUIDs).
MAX_ID_LENGTH = 256


def valid_id(item: object) -> bool:
    """True for an id an :class:`IdLog` can keep: a non-empty string of at most
    :data:`MAX_ID_LENGTH` characters without a comma or white space (either would split or
    merge ids when the log is read back)."""
    return (
        isinstance(item, str)
        and 0 < len(item) <= MAX_ID_LENGTH
        and "," not in item
        and not any(ch.isspace() for ch in item)
    )


# --------------------------------------------------------------------------------------------
# IdLog
# --------------------------------------------------------------------------------------------


class IdLog:
    """An ordered, bounded, persisted set of ids (the activity cursor, the seen file).

    File format: the ids comma-joined, oldest first, no newline (the reference cursor's format,
    but ordered by insertion). Reading tolerates surrounding whitespace, a trailing newline and
    empty items. At most ``max_ids`` ids are kept: the newest by insertion order.

    A caller may rely on:

    * nothing touches the disk until the first use (``load`` is lazy and idempotent);
    * a missing file is an empty log; an unreadable or damaged one is read as far as it can be
      (invalid items dropped, one warning), never an exception;
    * :meth:`save` replaces the file atomically under ``FileLock(path + ".lock")``, so the file
      always parses, and logs instead of raising on ``OSError`` (the log stays dirty and the
      next ``save`` retries);
    * all methods are thread-safe.
    """

    path: str
    max_ids: int

    def __init__(
        self, path: str | os.PathLike[str], max_ids: int, lock_timeout: float | None = None
    ) -> None:
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, not {max_ids!r}")
        self.path = os.fspath(path)
        self.max_ids = max_ids
        # dict keeps insertion order and gives O(1) membership: an ordered set.
        self._ids: dict[str, None] = {}
        self._loaded = False
        self._dirty = False
        self._warned_corrupt = False
        self._mutex = threading.RLock()
        timeout = _LOCK_TIMEOUT if lock_timeout is None else lock_timeout
        self._file_lock = filelock.FileLock(self.path + ".lock", timeout=timeout)

    def __repr__(self) -> str:
        return f"IdLog({self.path!r}, max_ids={self.max_ids})"

    def load(self) -> None:
        """Read the file once; later calls do nothing (use :meth:`reload` to read again)."""
        with self._mutex:
            if self._loaded:
                return
            self._loaded = True
            self._ids = dict.fromkeys(self._read_file())
            self._trim()

    def reload(self) -> None:
        """Forget the in-memory state, including unsaved additions, and read the file again."""
        with self._mutex:
            self._loaded = False
            self._dirty = False
            self._ids = {}
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
        call, even if a long batch evicted it again at once. An id that is empty or contains a
        comma or whitespace is skipped (logged at debug level): it would corrupt the format.
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
                added.append(item)
            if added:
                self._dirty = True
                self._trim()
            return added

    def save(self) -> None:
        """Write the file if anything was added since the last save; never raises ``OSError``."""
        with self._mutex:
            if not self._dirty:
                return
            try:
                with self._file_lock:
                    self._write()
            except OSError as exc:  # filelock.Timeout is an OSError too
                _warn.warning("id-log", "could not save %s (will retry): %s", self.path, exc)

    # -- internals used by ResultsFile ------------------------------------------------------

    def _write(self) -> None:
        """Write the in-memory ids; the caller holds ``_mutex`` and ``_file_lock``."""
        _atomic_write(self.path, ",".join(self._ids).encode("utf-8"))
        self._dirty = False

    def _update_on_disk(self, ids: Sequence[str]) -> None:
        """Read the file, add ``ids`` and write it back, all under the file lock.

        Raises ``OSError`` (``filelock.Timeout`` included) when it cannot.
        """
        with self._mutex, self._file_lock:
            self._loaded = False
            self._ids = {}
            self.load()
            self.add(ids)
            self._write()

    def _absorb(self, ids: Sequence[str], *, on_disk: bool) -> None:
        """Add ids that a delivery already wrote to the file (``on_disk``) or failed to write.

        When they are on disk the dirty flag is left as it was: memory and file agree on them.
        """
        with self._mutex:
            was_dirty = self._dirty
            self.add(ids)
            if on_disk:
                self._dirty = was_dirty

    def _trim(self) -> None:
        excess = len(self._ids) - self.max_ids
        if excess > 0:
            for old in list(islice(self._ids, excess)):
                del self._ids[old]

    def _read_file(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._warn_corrupt("cannot read %s, starting empty: %s", self.path, exc)
            return []
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._warn_corrupt("%s is not UTF-8, starting empty", self.path)
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


# --------------------------------------------------------------------------------------------
# Journal
# --------------------------------------------------------------------------------------------


class _Journal:
    """One delivery in flight: cut the results file to ``offset``, append ``data``, add ids."""

    __slots__ = ("data", "entries", "offset")

    def __init__(self, offset: int, data: str, entries: list[tuple[str, list[str], int]]) -> None:
        self.offset = offset
        self.data = data
        self.entries = entries

    def dumps(self) -> bytes:
        obj = {
            "offset": self.offset,
            "data": self.data,
            "ids": [[path, ids, max_ids] for path, ids, max_ids in self.entries],
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
        if not (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0):
            return None
        if not isinstance(data, str):
            return None
        if not isinstance(ids, list):
            return None
        entries: list[tuple[str, list[str], int]] = []
        for entry in ids:
            if not (isinstance(entry, list) and len(entry) == 3):
                return None
            path, id_list, max_ids = entry
            if not (isinstance(path, str) and path and isinstance(id_list, list)):
                return None
            if not all(isinstance(i, str) for i in id_list):
                return None
            if not (isinstance(max_ids, int) and not isinstance(max_ids, bool) and max_ids >= 1):
                return None
            entries.append((path, id_list, max_ids))
        return cls(offset, data, entries)


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
    """The JSONL results file with exactly-once delivery across crashes.

    A caller may rely on:

    * every complete line is one JSON object; a torn tail left by any crash is cut before the
      next append (C18) and never returned;
    * a delivery interrupted at any point is finished, exactly once, by the next
      :meth:`deliver`, :meth:`consume`, :meth:`peek` or :meth:`recover` from any process;
    * the lock file (``path + ".lock"``) and, while a delivery is in flight, the journal
      (``path + ".journal"``) live next to the file. The lock file stays on disk on purpose:
      unlinking a lock file others may be waiting on breaks mutual exclusion.

    A writer should call :meth:`recover` once at start-up *before* it loads its id logs, so a
    delivery its previous run left half-done lands in those logs before it decides what is new.
    """

    path: str
    journal_path: str
    lock: filelock.BaseFileLock

    def __init__(self, path: str | os.PathLike[str], lock_timeout: float | None = None) -> None:
        self.path = os.fspath(path)
        self.journal_path = self.path + ".journal"
        # The beat thread passes a short timeout: a consumer stuck while holding the lock
        # must delay a delivery (retried next cycle), never the heartbeat itself.
        timeout = _LOCK_TIMEOUT if lock_timeout is None else lock_timeout
        self.lock = filelock.FileLock(self.path + ".lock", timeout=timeout)

    def __repr__(self) -> str:
        return f"ResultsFile({self.path!r})"

    def deliver(
        self,
        records: Sequence[Record],
        id_logs: Sequence[tuple[IdLog, Sequence[str]]] = (),
    ) -> None:
        """Append ``records`` as JSON lines and add the ids to the id logs, as one crash-safe step.

        After a SIGKILL at any point either nothing or everything of this call is (or will be,
        on the next recovery) on disk, never half and never twice. The ``IdLog`` objects passed
        in are updated in memory as well. If this call finds an earlier delivery left
        half-done, it finishes that one first and then leaves out every record whose
        ``delegation_id`` that delivery had added to one of ``id_logs``: those were delivered
        by it (a writer restarted after a crash would otherwise choose them again).

        Raises ``filelock.Timeout`` when the lock is not free within the lock timeout,
        ``OSError`` when the results file cannot be written (the append is rolled back where
        possible), and ``TypeError``/``ValueError`` for a record JSON cannot encode. In each
        case nothing of this call was delivered and the caller may retry it. An id log that
        cannot be written only logs a warning; its in-memory object stays dirty so its next
        ``save`` retries.
        """
        logs = [(log, list(ids)) for log, ids in id_logs]
        if not records and not any(ids for _, ids in logs):
            return
        with self.lock:
            recovered = self._recover_locked()
            if recovered is not None:
                records = self._skip_recovered(*recovered, records, logs)
            data = "".join(_encode_record(r) for r in records)
            entries = [(os.path.abspath(log.path), ids, log.max_ids) for log, ids in logs if ids]
            if not data and not entries:
                return
            journal = _Journal(_file_size(self.path), data, entries)
            _atomic_write(self.journal_path, journal.dumps())
            try:
                failed = self._apply(journal)
            except OSError:
                self._roll_back(journal)
                raise
        for log, ids in logs:
            log._absorb(ids, on_disk=os.path.abspath(log.path) not in failed)

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

        Idempotent; a no-op when there is nothing to recover.
        """
        if not self._may_exist():
            return
        with self.lock:
            self._recover_locked()

    # -- internals ---------------------------------------------------------------------------

    def _may_exist(self) -> bool:
        # Neither file there: nothing to read or recover, and no lock file is created in a
        # directory the writer may never use (the default lives in /tmp).
        return os.path.exists(self.path) or os.path.exists(self.journal_path)

    def _read(self, *, remove: bool) -> list[Record]:
        if not self._may_exist():
            return []
        with self.lock:
            self._recover_locked()
            try:
                f = open(self.path, "r+b" if remove else "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                return []
            with f:
                raw = f.read()
                if remove and raw:
                    # Truncate, not rename: the writer and other readers keep one inode and
                    # one lock, so nothing appended under the lock can be missed.
                    f.truncate(0)
        return _parse_lines(raw)

    def _recover_locked(self) -> tuple[_Journal, set[str]] | None:
        """Apply a pending journal and cut a torn tail; the caller holds the lock.

        Returns the journal it applied, if any, with the id-log paths it could not write.
        """
        applied: tuple[_Journal, set[str]] | None = None
        try:
            with open(self.journal_path, "rb") as f:
                raw: bytes | None = f.read()
        except FileNotFoundError:
            raw = None
        if raw is not None:
            journal = _Journal.loads(raw)
            if journal is None:
                # It is written atomically, so this is outside damage, not our own crash.
                _warn.warning(
                    "journal", "discarding unreadable delivery journal %s", self.journal_path
                )
                _unlink_if_present(self.journal_path)
            else:
                logger.info("finishing an interrupted delivery to %s", self.path)
                applied = (journal, self._apply(journal))
        self._cut_torn_tail()
        return applied

    def _apply(self, journal: _Journal) -> set[str]:
        """Carry out a journal, then delete it; idempotent. Returns id-log paths not written.

        Raises ``OSError`` if the results file cannot be written; the journal then stays.
        """
        if journal.data:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | _O_BINARY, 0o666)
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
                    _write_all(fd, _to_bytes(journal.data))
            finally:
                os.close(fd)
        failed: set[str] = set()
        for path, ids, max_ids in journal.entries:
            try:
                IdLog(path, max_ids)._update_on_disk(ids)
            except OSError as exc:
                # The results are delivered; losing an id only risks a later duplicate, and
                # keeping the journal would re-append the data after a consumer emptied the file.
                failed.add(path)
                _warn.warning("id-log", "could not record delivered ids in %s: %s", path, exc)
        _unlink_if_present(self.journal_path)
        return failed

    def _roll_back(self, journal: _Journal) -> None:
        try:
            with open(self.path, "r+b") as f:
                f.truncate(journal.offset)
            _unlink_if_present(self.journal_path)
        except OSError as exc:
            logger.warning("could not roll back a failed delivery to %s: %s", self.path, exc)

    def _cut_torn_tail(self) -> None:
        """Cut the bytes after the last newline (a line a killed process did not finish)."""
        try:
            f = open(self.path, "r+b")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with f:
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

    @staticmethod
    def _skip_recovered(
        journal: _Journal,
        failed: set[str],
        records: Sequence[Record],
        logs: list[tuple[IdLog, list[str]]],
    ) -> Sequence[Record]:
        by_path = {path: ids for path, ids, _ in journal.entries}
        delivered: set[str] = set()
        for log, _ in logs:
            path = os.path.abspath(log.path)
            ids = by_path.get(path)
            if ids:
                log._absorb(ids, on_disk=path not in failed)
                delivered.update(ids)
        if not delivered:
            return records
        kept = [r for r in records if r.get("delegation_id") not in delivered]
        if len(kept) != len(records):
            logger.info(
                "left out %d results an interrupted delivery had already written",
                len(records) - len(kept),
            )
        return kept


# --------------------------------------------------------------------------------------------
# Public reader
# --------------------------------------------------------------------------------------------


def read_delegation_results(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Return and remove every delegation result in the results file.

    ``path`` defaults to ``$DELEGATION_RESULTS_FILE`` (read at each call), then
    ``/tmp/delegation_results.jsonl``. Works under the writer's lock, so a result is returned
    by exactly one call and none is lost to a concurrent write. A missing file gives ``[]``.
    Never raises for I/O trouble: it logs a warning and returns ``[]``, and the results stay in
    the file for the next call.
    """
    if path is None:
        path = os.environ.get(RESULTS_FILE_ENV) or DEFAULT_RESULTS_FILE
    try:
        return ResultsFile(path).consume()
    except OSError as exc:  # includes filelock.Timeout
        logger.warning("could not read delegation results from %s: %s", os.fspath(path), exc)
        return []


def _as_text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _escape_markers(text: str) -> str:
    return text.replace(_MARKER_OPEN, _MARKER_OPEN_ESCAPED).replace(
        _MARKER_CLOSE, _MARKER_CLOSE_ESCAPED
    )


def format_delegation_results(records: Iterable[Mapping[str, Any]]) -> str:
    """Text for prompt injection, as the reference runtime's reader produces it.

    One ``- [<status>] <summary>`` line per record (``?`` when the status is empty), plus
    ``  Response: <preview>`` when there is a preview, and ``  Failed: <error>`` for a failed
    delegation whose error is not its summary already; summary cut to 80, preview and error
    to 200 characters after escaping. The whole block is wrapped in
    ``[A2A_RESULT_FROM_PEER]`` ... ``[/A2A_RESULT_FROM_PEER]``; no content can forge either
    marker. ``""`` when there is no record. Non-mapping records are skipped; non-string
    values are ``str()``-ed, ``None`` is empty.
    """
    parts: list[str] = []
    for record in records:
        if not isinstance(record, Mapping):
            continue
        status = _as_text(record.get("status")) or "?"
        summary = _escape_markers(_as_text(record.get("summary")))[:_SUMMARY_MAX]
        # Escape the bracketed status together with its brackets: a status of
        # "/A2A_RESULT_FROM_PEER" would otherwise become a closing marker.
        parts.append(f"{_escape_markers(f'- [{status}]')} {summary}")
        preview = _as_text(record.get("response_preview"))
        if preview:
            parts.append(f"  Response: {_escape_markers(preview)[:_PREVIEW_MAX]}")
        error = _as_text(record.get("error"))
        if status == "failed" and error and error != _as_text(record.get("summary")):
            parts.append(f"  Failed: {_escape_markers(error)[:_PREVIEW_MAX]}")
    if not parts:
        return ""
    return _MARKER_OPEN + "\n" + "\n".join(parts) + "\n" + _MARKER_CLOSE
