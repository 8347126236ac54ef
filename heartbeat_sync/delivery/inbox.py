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

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from .._ratelimit import RateLimitedLog
from . import rows as _rows
from .activity import ActivityPager, row_ids
from .results import IdLog, ResultsFile
from .rows import Result

logger = logging.getLogger(__name__)

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

    def activity_page(self, rows: Sequence[Any], since: str | None, page_size: int) -> Page:
        """Deliver the ``a2a_receive`` rows of one activity page read after ``since``; return
        the fresh results and where the next page starts.

        A page that does not hold ``since`` (a server that ignores it, or none was sent) is the
        newest window, newest first: it is read oldest first, and it ends the poll.
        """
        honoured = since is not None and not any(
            isinstance(r, dict) and r.get("id") == since for r in rows
        )
        if not honoured or _rows.newest_first(rows):
            honoured = False
            rows = list(reversed(rows))
        parsed = _rows.activity_results(rows, self.workspace_id, self._cursor, self._clock())
        if parsed.malformed:
            self._warn.warning(
                "activity-rows", "skipped %d malformed activity row(s)", parsed.malformed
            )
        seqs = [q for q in (_rows.seq_of(r) for r in rows) if q is not None]
        fresh: list[Result] = []
        if parsed.results:
            delivered = self._deliver(parsed.results, [(self._cursor, parsed.ids)], parsed.aliases)
            if delivered is None:
                # The pager stays put: the next poll reads these rows again.
                return Page(failed=True)
            fresh = delivered
        elif parsed.ids:
            self._cursor.add(parsed.ids)
            self._cursor.save()
        full = honoured and len(rows) >= page_size
        after = self._pager.read(since if honoured else None, row_ids(rows), full)
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
            return Page(fresh, None, max(seqs, default=None))
        return Page(fresh, after, max(seqs, default=None))

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
