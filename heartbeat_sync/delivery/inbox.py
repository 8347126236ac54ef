"""The inbox: where the rows the polls read become results, delivered once, and recovered.

One object owns everything delivery touches: the results file with its journal, the seen log
(delegation ids delivered), the activity cursor (activity ids processed) and the pager that
picks where each activity page starts. The beat thread hands it the rows the platform
answered and gets back what happened: the fresh results (to announce), and for activity the
``since_id`` of the next page (None: this poll is done). Nothing is set on the side for the
caller to read back.

Each result is delivered exactly once, ever: its id is recorded in the seen or cursor log in
the same locked write that appends it (``ResultsFile.deliver``). When that write fails nothing
is recorded, the inbox reads its files again before its next delivery (finishing any journal a
crash left), and the next poll finds the same rows again: nothing is lost, nothing repeated.
The inbox logs its own troubles (files, malformed rows, foreign delegations), rate-limited;
the caller logs the platform's.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from . import rows as _rows
from .activity import ActivityPager, row_ids
from .handoff import HandoffLog, Owner
from .messages import MessageRow, message_row
from .results import IdLog, ResultsFile
from .rows import Result

logger = get_logger(__name__)

#: Foreign delegation ids remembered, so that each is warned about once.
_MAX_WARNED_FOREIGN = 1000


@dataclass(frozen=True)
class Page:
    """What one activity page came to: the results delivered for the first time, where the
    next page starts (None: this poll is done, for now or because ``failed``), and the highest
    ``seq`` among its rows, all now handled for good (None: the rows carry none). ``failed``:
    the results could not be written; the rows are left to a later poll."""

    fresh: list[Result] = field(default_factory=list)
    next_since: str | None = None
    handled_seq: int | None = None
    failed: bool = False
    #: Messages claimed for this process's handlers (with ``capacity``), oldest first.
    claimed: list[MessageRow] = field(default_factory=list)
    #: Rows skipped as no message to anyone (not an object, or without a valid id).
    malformed: int = 0
    #: Messages were left on the platform for want of a free handler.
    waiting: bool = False


class Inbox:
    """The results file and the id logs of one workspace, and the rules that fill them.

    Runs on the beat thread only (the files themselves are safe for any number of writers and
    readers in any process: see :mod:`.results`).

    Args:
        workspace_id: The workspace whose rows these are.
        results_path: The JSONL results file.
        seen_path: The seen log (delegation ids delivered).
        cursor_path: The activity cursor (activity ids processed).
        max_seen: Ids the seen log keeps (newest).
        max_cursor: Ids the cursor keeps (newest).
        lock_timeout: Seconds to wait for a file lock: short, so that a consumer holding one
            delays a delivery (retried next poll), never a beat.
        clock: The wall clock, for the results' timestamps.
    """

    def __init__(
        self,
        workspace_id: str,
        results_path: str,
        seen_path: str,
        cursor_path: str,
        *,
        max_seen: int,
        max_cursor: int,
        lock_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.workspace_id = workspace_id
        self.results_path = results_path
        self._seen = IdLog(seen_path, max_seen, lock_timeout, name="seen")
        self._cursor = IdLog(cursor_path, max_cursor, lock_timeout, name="cursor")
        self._results = ResultsFile(results_path, lock_timeout, (self._seen, self._cursor))
        self._clock = clock
        self._warn = RateLimitedLog(logger)
        # Where the next activity page starts; a new start reads from the cursor file.
        self._pager = ActivityPager()
        # Until the files were read as they are on disk (and again after a failed write).
        self._stale = True
        self._warned_foreign: OrderedDict[str, None] = OrderedDict()
        # Rows without an id already counted (by their content: a poll reads a few seconds
        # of rows again, and these have nothing else to know them by).
        self._counted_malformed: OrderedDict[str, None] = OrderedDict()
        self._handoff = HandoffLog(self._results, self._cursor)
        # The handlers' messages whose end could not be written yet (retried each poll); the
        # handlers' threads add to it.
        self._unfinished: set[str] = set()
        self._unfinished_lock = threading.Lock()
        # Messages older than this (wall time) are not handed over: history at a first start.
        self._backlog_before: float | None = None

    # --- delegations ----------------------------------------------------------------------

    def delegations(self, rows: Sequence[Any]) -> list[Result]:
        """Deliver the finished delegations among ``GET /delegations`` rows that were never
        delivered before; return them (empty when none, or when the files cannot be written:
        the next poll tries again)."""
        if not self._fresh_files():
            return []
        parsed = _rows.delegation_results(rows, self.workspace_id, self._seen, self._clock())
        for did, source in parsed.foreign:
            if did not in self._warned_foreign:
                logger.warning(
                    "skipping delegation %s: source_id %r is not this workspace", did, source
                )
                self._warned_foreign[did] = None
                while len(self._warned_foreign) > _MAX_WARNED_FOREIGN:
                    self._warned_foreign.popitem(last=False)
        if parsed.malformed:
            self._warn.warning(
                "delegation-rows", "skipped %d malformed delegation row(s)", parsed.malformed
            )
        if not parsed.results:
            return []
        return self._deliver(parsed.results, [(self._seen, parsed.ids)]) or []

    # --- activity -------------------------------------------------------------------------

    def activity_since(self) -> str | None:
        """The ``since_id`` of a poll's first activity page (None: the newest window).

        Ids a failed write left pending are written first, and a journal left by a crash is
        finished.
        """
        self._fresh_files()
        self._cursor.save()
        self._seen.save()
        try:
            self._results.recover_if_pending()
        except OSError as exc:
            self._warn.warning("files", "cannot finish the delivery journal: %s", exc)
        # The cursor holds the keys of the messages delivered too: never a place to read from.
        return self._pager.first_since(
            lambda: [i for i in self._cursor.ids() if not _rows.is_message_key(i)]
        )

    def forget(self, since: str | None) -> None:
        """The platform no longer knows ``since`` (410): the next page is the newest window."""
        logger.info("activity cursor unknown to the platform; reading the window")
        self._pager.forget(since)

    # --- messages ---------------------------------------------------------------------------

    def messages_start(
        self, owner: Owner, backlog: float, busy: Collection[str] = ()
    ) -> list[MessageRow]:
        """A run that hands messages to handlers begins: the messages a run that ended left in
        handlers' hands, now ``owner``'s (to be offered again, marked redelivered). On a first
        start (no activity cursor on disk), messages older than ``backlog`` seconds are history
        and never handed over. ``busy``: messages whose handlers still run (left alone)."""
        if not self._fresh_files():
            return []
        self._backlog_before = None if len(self._cursor) else self._clock() - backlog
        try:
            return self._handoff.take_over(owner, busy)
        except OSError as exc:
            self._warn.warning("handoff", "cannot read the hand-off log: %s", exc)
            return []

    def finished(self, row_id: str) -> None:
        """A handler has returned: the message is no longer in its hands (written now, or at
        a later poll when the log cannot be written now). Safe from any thread."""
        with self._unfinished_lock:
            self._unfinished.add(row_id)
        self._write_finished()

    def _write_finished(self) -> None:
        with self._unfinished_lock:
            pending = list(self._unfinished)
        for row_id in pending:
            try:
                self._handoff.finish(row_id)
            except OSError as exc:
                self._warn.warning("handoff", "cannot record a handled message yet: %s", exc)
                return
            with self._unfinished_lock:
                self._unfinished.discard(row_id)

    def take_over(self, owner: Owner, busy: Collection[str] = ()) -> list[MessageRow]:
        """Messages another run (of another process) left unhandled when it ended: now
        ``owner``'s, but for ``busy``. A single ``lstat`` when no message is in anyone's
        hands."""
        try:
            return self._handoff.take_over(owner, busy)
        except OSError as exc:
            self._warn.warning("handoff", "cannot read the hand-off log: %s", exc)
            return []

    def _claim(
        self, rows: Sequence[Any], capacity: int, owner: Owner
    ) -> tuple[int, list[MessageRow], list[str], int] | None:
        """Which of ``rows`` (oldest first) this poll takes: the number of rows read (up to
        the first message beyond ``capacity``), the messages claimed, the ids of the other
        rows read, and how many rows had no id. None when the claim could not be written."""
        taken: list[MessageRow] = []
        others: list[str] = []
        malformed = 0
        cut = len(rows)
        for index, row in enumerate(rows):
            message = message_row(row, self.workspace_id)
            if message is None:
                row_id = row.get("id") if isinstance(row, dict) else None
                if not isinstance(row_id, str) or not _rows.valid_id(row_id):
                    malformed += self._first_sight(row)
                elif row_id not in self._cursor:
                    others.append(row_id)
                continue
            if message.id in self._cursor or (message.key and message.key in self._cursor):
                continue
            if self._history(message):
                others.extend(i for i in (message.id, message.key) if i)
                continue
            if len(taken) >= capacity:
                cut = index  # no handler is free: the rest wait on the platform
                break
            taken.append(message)
        try:
            claimed = self._handoff.claim(taken, owner)
        except OSError as exc:
            self._stale = True
            self._warn.warning("handoff", "could not hand messages over: %s", exc)
            return None
        return cut, claimed, others, malformed

    def _first_sight(self, row: Any) -> int:
        """1 the first time this run's inbox reads the row without an id, else 0."""
        try:
            text = json.dumps(row, sort_keys=True, default=repr)
        except (TypeError, ValueError, RecursionError):
            text = repr(type(row))
        digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
        if digest in self._counted_malformed:
            return 0
        self._counted_malformed[digest] = None
        while len(self._counted_malformed) > _MAX_WARNED_FOREIGN:
            self._counted_malformed.popitem(last=False)
        return 1

    def _history(self, message: MessageRow) -> bool:
        before = self._backlog_before
        if before is None or message.received_at is None:
            return False
        return message.received_at.timestamp() < before

    def activity_page(
        self,
        rows: Sequence[Any],
        since: str | None,
        page_size: int,
        *,
        capacity: int | None = None,
        owner: Owner | None = None,
    ) -> Page:
        """Take the ``a2a_receive`` rows of one activity page read after ``since``; return what
        came of it: the fresh results, where the next page starts, the messages claimed.

        Without ``capacity`` (no handler), a peer's row is a result for the results file. With
        it, a row that is a message (from the canvas or a peer) is claimed for a handler, up to
        ``capacity`` of them (as ``owner``), and the page ends before the first message beyond:
        the rest wait on the platform for a free handler.

        A page that does not hold ``since`` (a server that ignores it, or none was sent) is the
        newest window, newest first: it is read oldest first, and it ends the poll.
        """
        honoured = since is not None and not any(
            isinstance(r, dict) and r.get("id") == since for r in rows
        )
        if not honoured or _rows.newest_first(rows):
            honoured = False
            rows = list(reversed(rows))
        self._write_finished()
        claimed: list[MessageRow] = []
        fresh: list[Result] = []
        malformed = 0
        served = cut = len(rows)
        if capacity is not None and owner is not None:
            taken = self._claim(rows, capacity, owner)
            if taken is None:
                return Page(failed=True)
            cut, claimed, others, malformed = taken
            if others:
                self._cursor.add(others)
                self._cursor.save()
            rows = list(rows[:cut])
        else:
            parsed = _rows.activity_results(rows, self.workspace_id, self._cursor, self._clock())
            if parsed.malformed:
                self._warn.warning(
                    "activity-rows", "skipped %d malformed activity row(s)", parsed.malformed
                )
            if parsed.results:
                delivered = self._deliver(
                    parsed.results, [(self._cursor, parsed.ids)], parsed.aliases
                )
                if delivered is None:
                    # The pager stays put: the next poll reads these rows again.
                    return Page(failed=True)
                fresh = delivered
            elif parsed.ids:
                self._cursor.add(parsed.ids)
                self._cursor.save()
        seqs = [q for q in (_rows.seq_of(r) for r in rows) if q is not None]
        handled = max(seqs, default=None)
        full = honoured and served >= page_size
        cut_short = cut < served
        # Cut short, the page is read up to the cut and the server has more: the next poll
        # reads from there again, when a handler is free.
        after = self._pager.read(since if honoured else None, row_ids(rows), full or cut_short)
        if cut_short:
            return Page(fresh, None, handled, claimed=claimed, malformed=malformed, waiting=True)
        if after is None or after == since:
            if full:
                self._warn.warning(
                    "activity-stuck",
                    "the activity cursor cannot advance past %s: a full page without a "
                    "newer well-formed row; reading from there again next cycle",
                    since,
                )
            else:
                self._warn.reset("activity-stuck")
            return Page(fresh, None, handled, claimed=claimed, malformed=malformed)
        return Page(fresh, after, handled, claimed=claimed, malformed=malformed)

    def writable(self) -> bool:
        """Whether the files took everything the deliveries handed them: False after a write
        failed, while ids wait to be saved or a journal to be finished, until a later poll
        gets them through."""
        return not (
            self._stale
            or self._cursor.dirty
            or self._seen.dirty
            or os.path.lexists(self._results.journal_path)
        )

    # --- the files --------------------------------------------------------------------------

    def _fresh_files(self) -> bool:
        """Read the files as they are on disk when the inbox has not (a start, a failed write):
        finish a delivery a crash interrupted, then reload the id logs. False when they cannot
        be read (logged); nothing is delivered until they can."""
        if not self._stale:
            return True
        try:
            self._results.recover()
            self._seen.reload()
            self._cursor.reload()
        except Exception as exc:
            self._warn.warning("files", "cannot read the results or cursor files: %s", exc)
            return False
        self._stale = False
        return True

    def _deliver(
        self,
        results: Sequence[Result],
        id_logs: list[tuple[IdLog, list[str]]],
        aliases: Mapping[str, str] | None = None,
    ) -> list[Result] | None:
        """Append ``results`` and record their ids, as one step; the ones appended (another
        writer of the same files may have delivered some already: those are its to announce),
        or None when the write failed."""
        try:
            written = self._results.deliver([r.record for r in results], id_logs, aliases)
        except Exception as exc:
            # Nothing is lost: the ids were not recorded, so the next poll delivers them.
            self._stale = True
            self._warn.warning("deliver", "could not write results: %s", exc)
            return None
        self._warn.reset("deliver")
        appended = {id(r) for r in written}
        return [r for r in results if id(r.record) in appended]
