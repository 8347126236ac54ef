"""The hand-off log: which messages are in a handler's hands, and whose.

A message is handed to a handler once, ever: across restarts, across two processes that share
the agent's files, and across a crash. The log is ``<results>.handoff``, a JSON object written
whole (temp file and ``os.replace``, 0600) under the results file's lock, the lock every writer
of the agent's files takes. A hand-off:

1. **claim**: under the lock, against the log and the activity cursor *on disk*, the messages
   no one has claimed or handled are written into the log with their owner (this process and
   run), then their row ids and message keys into the cursor. A message already in the log or
   in the cursor is left alone: another writer has it.
2. **finish**: when the handler returns (or raises), its entry leaves the log. The cursor
   already has its id, so it is never offered again.

A crash between the two steps of a claim leaves the message in the log but not in the cursor:
the next claim finds it in the log and does not offer it again from the platform's row. An
entry whose owner has ended without finishing it (a process killed while its handler ran, or a
run stopped that could not wait for its handler) is taken over by the next writer that looks:
it is offered again, marked redelivered, so nothing is lost and the handler can tell.

Who owns an entry: the process (its pid and, where the system tells, when it started, so a
recycled pid is no match) and the run within it. A run of this process is alive while it is in
:data:`_live_runs`; another process while its pid exists with the same start.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import filelock

from .. import _fork, _safefile
from .._logctx import get_logger
from .idlog import IdLog
from .messages import MessageRow
from .results import ResultsFile

logger = get_logger(__name__)

_VERSION = 1
#: Runs of this process whose handlers may still hold messages.
_live_runs: set[str] = set()
_live_lock = threading.Lock()


def _process_start(pid: int) -> int:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), or 0 where the
    system does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        # The command name (field 2) may hold spaces and parentheses: count after the last ")".
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _after_fork() -> None:
    global _live_lock
    _live_lock = threading.Lock()
    _live_runs.clear()  # the parent's runs are not the child's


_fork.on_fork_in_child(_after_fork)


@dataclass(frozen=True)
class Owner:
    """Who holds a message: a run of a process."""

    pid: int
    start: int
    run: str

    @classmethod
    def new_run(cls) -> Owner:
        """A new run of this process, alive until :meth:`end`."""
        owner = cls(os.getpid(), _process_start(os.getpid()), uuid.uuid4().hex)
        with _live_lock:
            _live_runs.add(owner.run)
        return owner

    def end(self) -> None:
        """The run's handlers have all returned (or the process gives up on them)."""
        with _live_lock:
            _live_runs.discard(self.run)

    def alive(self) -> bool:
        if self.pid == os.getpid() and self.start == _process_start(self.pid):
            with _live_lock:
                return self.run in _live_runs
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, under another user
        except OSError:
            return False
        return self.start == 0 or self.start == _process_start(self.pid)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "run": self.run}

    @classmethod
    def from_json(cls, data: Any) -> Owner | None:
        if not isinstance(data, dict):
            return None
        pid, start, run = data.get("pid"), data.get("start"), data.get("run")
        if type(pid) is not int or type(start) is not int or not isinstance(run, str):
            return None
        return cls(pid, start, run)


class HandoffLog:
    """The messages in handlers' hands (see the module docstring).

    Raises ``OSError`` (``filelock.Timeout`` included) where it cannot read or write.

    Args:
        results: The results file: its lock guards the log, and the log sits beside it.
        cursor: The activity cursor, where a claimed message's row id and key are recorded.
    """

    def __init__(self, results: ResultsFile, cursor: IdLog) -> None:
        self.path = results.path + ".handoff"
        self._lock: filelock.BaseFileLock = results.lock
        self._cursor = cursor

    def claim(self, messages: Sequence[MessageRow], owner: Owner) -> list[MessageRow]:
        """Record ``messages`` as ``owner``'s and return those that were free (no one had
        claimed or handled them), in order. Raises ``OSError`` / ``filelock.Timeout`` when the
        files cannot be read or written: nothing of the call was then recorded as claimed
        (the cursor's ids may stay pending, as for any delivery)."""
        if not messages:
            return []
        with self._lock:
            entries = self._read()
            known = self._cursor.ids_on_disk()
            for entry in entries.values():
                row = MessageRow.from_json(entry.get("row", {}))
                if row is not None and row.key:
                    known.add(row.key)
            known.update(entries)
            free: list[MessageRow] = []
            batch: set[str] = set()
            for message in messages:
                keys = {message.id, *([message.key] if message.key else [])}
                if keys & known or keys & batch:
                    continue
                batch |= keys
                free.append(message)
            if not free:
                return []
            for message in free:
                entries[message.id] = {"owner": owner.to_json(), "row": message.to_json()}
            self._write(entries)  # claimed from here on
            ids = [i for m in free for i in (m.id, m.key) if i]
            try:
                self._cursor.record(ids)
            except OSError as exc:
                # The log holds them, so no one claims them again; the cursor's ids stay
                # pending in memory and are written with the next save.
                logger.warning("could not record claimed messages in the cursor: %s", exc)
            return free

    def finish(self, row_id: str) -> None:
        """The handler of ``row_id`` has returned: it is no longer in anyone's hands."""
        with self._lock:
            entries = self._read()
            if entries.pop(row_id, None) is not None:
                self._write(entries)

    def take_over(self, owner: Owner, busy: Collection[str] = ()) -> list[MessageRow]:
        """The messages whose owner ended before their handler returned, now ``owner``'s: to
        be offered again, marked redelivered; except ``busy`` (their handlers, of an earlier
        run of this process, still run). A single ``lstat`` when there is no log."""
        if not os.path.lexists(self.path):
            return []
        with self._lock:
            entries = self._read()
            taken: list[MessageRow] = []
            changed = False
            for row_id in list(entries):
                entry = entries[row_id]
                row = MessageRow.from_json(entry.get("row", {}))
                if row is None:
                    del entries[row_id]  # nothing could offer it: dropped
                    changed = True
                    continue
                held_by = Owner.from_json(entry.get("owner"))
                if row_id in busy or (held_by is not None and held_by.alive()):
                    continue
                entry["owner"] = owner.to_json()
                taken.append(row)
                changed = True
                logger.info(
                    "message %s was left unhandled by a run that ended; offered again", row_id
                )
            if changed:
                self._write(entries)
            return taken

    def held(self) -> set[str]:
        """The row ids in anyone's hands now (read from disk)."""
        with self._lock:
            return set(self._read())

    def _read(self) -> dict[str, Any]:
        raw = _safefile.read_own(self.path)
        if not raw:
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            logger.error("the hand-off log %s cannot be read; starting it afresh", self.path)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return (
            {k: v for k, v in entries.items() if isinstance(v, dict)}
            if isinstance(entries, dict)
            else {}
        )

    def _write(self, entries: dict[str, Any]) -> None:
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        data = json.dumps({"version": _VERSION, "entries": entries}, ensure_ascii=False)
        _safefile.atomic_write(self.path, data.encode("utf-8", "surrogatepass"))
