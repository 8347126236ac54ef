"""The two polls of a cycle, and delivery: delegations and activity rows become results,
written once to the results file and handed to the side-effect worker.

Each result is delivered exactly once, ever: its id is recorded in the seen or cursor log in
the same locked write that appends it (``ResultsFile.deliver``). When that write fails, nothing
is recorded, and the next poll finds the same results again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Callable

from . import _rows
from ._activity import ActivityPager, row_ids
from ._client import CursorGone, PlatformClient, PlatformError
from ._files import IdLog, ResultsFile
from ._parts import Parts
from ._rows import Result
from ._settings import ACTIVITY_MAX_PAGES, ACTIVITY_PAGE

logger = logging.getLogger("heartbeat_sync")

#: Foreign delegation ids remembered, so that each is warned about once.
_MAX_WARNED_FOREIGN = 1000


class Polls:
    """The delegations and activity polls of one Heartbeat, with the files they deliver to.

    Runs on the beat thread only. A poll never raises for the platform's answer: a failure is
    logged (rate-limited) and ``hint`` is told of it, so that a workspace route answering
    401, 404 or 410 has the workspace's state checked.
    """

    def __init__(self, parts: Parts, *, hint: Callable[[BaseException], None]) -> None:
        settings = parts.settings
        self._parts = parts
        self._hint = hint
        self._warn = parts.warn  # every step logs through it
        self._workspace_id = settings.workspace_id
        self._results_path = settings.results_path
        timeout = settings.lock_timeout
        self._seen = IdLog(settings.seen_path, settings.max_seen_ids, timeout, name="seen")
        self._cursor = IdLog(settings.cursor_path, settings.max_cursor_ids, timeout, name="cursor")
        self._results = ResultsFile(settings.results_path, timeout, (self._seen, self._cursor))
        # Where the next activity page starts; a new start reads from the cursor file.
        self._pager = ActivityPager()
        #: True until the files were read as they are on disk (and after a failed write).
        self.reload_ids = True
        self._warned_foreign: OrderedDict[str, None] = OrderedDict()

    def recover_files(self) -> None:
        """Finish a delivery a crash (or a failed write) interrupted, then read the id logs as
        they are on disk, so that nothing delivered is delivered again."""
        try:
            self._results.recover()
            self._seen.reload()
            self._cursor.reload()
            self.reload_ids = False
        except Exception as exc:
            self._warn.warning("files", "cannot read the results or cursor files: %s", exc)

    def delegations(self, client: PlatformClient) -> None:
        """Deliver the workspace's finished delegations not delivered before."""
        try:
            rows = client.delegations()
        except PlatformError as exc:
            if not self._parts.stopping():  # a poll interrupted by stop() is not a platform failure
                self._hint(exc)
                self._warn.warning("delegations", "delegations poll failed: %s", exc)
            return
        self._warn.reset("delegations")
        parsed = _rows.delegation_results(rows, self._workspace_id, self._seen, time.time())
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
        if parsed.results:
            self._deliver(parsed.results, [(self._seen, parsed.ids)])

    def activity(self, client: PlatformClient) -> None:
        """Deliver the ``a2a_receive`` activity rows past the cursor, up to
        :data:`ACTIVITY_MAX_PAGES` pages; the rest follows next cycle."""
        # Ids a failed write left pending are written now (a no-op when there are none).
        self._cursor.save()
        self._seen.save()
        try:
            self._results.recover_if_pending()
        except OSError as exc:
            self._warn.warning("files", "cannot finish the delivery journal: %s", exc)
        since = self._pager.first_since(self._cursor.ids)
        for _ in range(ACTIVITY_MAX_PAGES):
            try:
                try:
                    rows = client.activity(since, limit=ACTIVITY_PAGE)
                except CursorGone:
                    logger.info("activity cursor unknown to the platform; reading the window")
                    self._pager.forget(since)
                    since = None
                    rows = client.activity(None, limit=ACTIVITY_PAGE)
            except PlatformError as exc:
                if not self._parts.stopping():
                    self._hint(exc)
                    self._warn.warning("activity", "activity poll failed: %s", exc)
                return
            self._warn.reset("activity")
            honoured = since is not None and not any(
                isinstance(r, dict) and r.get("id") == since for r in rows
            )
            if not honoured or _rows.newest_first(rows):
                # A full window (no cursor, a 410, or a server that ignores since_id) comes
                # newest first; results are processed oldest first.
                honoured = False
                rows = list(reversed(rows))
            parsed = _rows.activity_results(rows, self._workspace_id, self._cursor, time.time())
            if parsed.malformed:
                self._warn.warning(
                    "activity-rows", "skipped %d malformed activity row(s)", parsed.malformed
                )
            if parsed.results:
                if not self._deliver(parsed.results, [(self._cursor, parsed.ids)]):
                    return  # the pager stays put: the next poll reads these rows again
            elif parsed.ids:
                self._cursor.add(parsed.ids)
                self._cursor.save()
            full = honoured and len(rows) >= ACTIVITY_PAGE
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
                return
            since = after
        logger.info("read %d pages of activity; the rest follows next cycle", ACTIVITY_MAX_PAGES)

    def _deliver(self, results: Sequence[Result], id_logs: list[tuple[IdLog, list[str]]]) -> bool:
        try:
            written = self._results.deliver([r.record for r in results], id_logs)
        except Exception as exc:
            # Nothing is lost: the ids were not recorded, so the next cycle delivers them.
            self.reload_ids = True
            self._warn.warning("deliver", "could not write results: %s", exc)
            return False
        self._warn.reset("deliver")
        # Another writer of the same files may have delivered some already: those are its
        # to announce.
        fresh = {id(r) for r in written}
        results = [r for r in results if id(r.record) in fresh]
        if not results:
            return True
        self._parts.tally.delivered(len(results))
        logger.info("%d new result(s) written to %s", len(results), self._results_path)
        self._parts.worker.submit(results)
        return True
