"""Where each activity page starts: page onward past known rows, and re-read an overlap.

The platform answers ``since_id=X`` with the rows whose ``created_at`` is strictly later than
X's, oldest first (``docs/platform.md`` §2.4, checked on the real server; August also orders
rows of one instant by ``seq``). Two things follow:

* The cursor file is not a position. Its newest id may be an arbitrary old row (the reference
  runtime stores its ids sorted), and a page may hold only rows already known. So the next
  page always starts at the last row of the page just read, and the next poll starts near
  where the last one ended, never again at ``cursor.newest()``.
* Rows are written by background tasks: a row can commit after a row with a later
  ``created_at`` was read, and a ``since_id`` of that later row never returns it. So each poll
  starts at an *anchor* some way back and re-reads the rows after it (the cursor makes a re-read
  harmless). A row read at time *s* becomes the anchor only when *s* is at least ``settle``
  seconds before the start of the previous poll. A row that commits at most ``settle`` seconds
  after its ``created_at`` is then always caught: the first poll that can see it starts at a row
  that was committed before it began. Once nothing new has arrived for ``settle`` seconds
  and one more poll, the anchor is the newest row and an idle poll re-reads nothing.

The overlap is bounded by ``overlap_max`` rows: in a burst the anchor moves on anyway, so a poll
always gets past the rows it has read (a late row behind such a burst can then be missed).

Pure logic with an injected clock; the loop does the requests.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from .rows import valid_id

__all__ = ["OVERLAP_MAX", "SETTLE_SECONDS", "START_OVERLAP", "ActivityPager", "row_ids"]

#: A row counts as committed for good this many seconds after it was first read.
SETTLE_SECONDS = 5.0
#: At most this many rows are re-read at the start of a poll.
OVERLAP_MAX = 50
#: After a start, the newest this many ids of the cursor file are re-read once.
START_OVERLAP = 20


def row_ids(rows: Iterable[Any]) -> list[str]:
    """The ids of the well-formed rows, in order."""
    out: list[str] = []
    for row in rows:
        if isinstance(row, dict):
            rid = row.get("id")
            if isinstance(rid, str) and valid_id(rid):
                out.append(rid)
    return out


class ActivityPager:
    """Chooses the ``since_id`` of every activity page (see the module docstring).

    Call :meth:`first_since` at the start of a poll, :meth:`read` after each page whose rows
    were all recorded in the cursor, and :meth:`forget` when the server no longer knows a
    ``since_id`` (410). :meth:`reset` forgets everything (a new start, a fork).
    """

    def __init__(
        self,
        settle: float = SETTLE_SECONDS,
        overlap_max: int = OVERLAP_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settle >= 0:
            raise ValueError(f"settle must be >= 0, not {settle!r}")
        if overlap_max < 1:
            raise ValueError(f"overlap_max must be >= 1, not {overlap_max!r}")
        self.settle = float(settle)
        self.overlap_max = overlap_max
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget the position: the next poll starts from the cursor file again."""
        self._started = False
        self._anchor: str | None = None
        # Rows after the anchor, oldest first, with the time each was first read.
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._last_poll: float | None = None

    @property
    def anchor(self) -> str | None:
        """The row the next poll starts after (``None``: the newest window is read)."""
        return self._anchor

    @property
    def overlap(self) -> int:
        """How many rows the next poll re-reads."""
        return len(self._recent)

    def first_since(self, known: Callable[[], Sequence[str]]) -> str | None:
        """The ``since_id`` of a poll's first page; ``known`` gives the cursor's ids, oldest
        first (asked only on the first poll)."""
        now = self._clock()
        if not self._started:
            self._started = True
            tail = list(known())[-(START_OVERLAP + 1) :]
            if tail:
                self._anchor = tail[0]
                self._recent = OrderedDict((i, now) for i in tail[1:])
        elif self._last_poll is not None:
            threshold = self._last_poll - self.settle
            while self._recent:
                first, seen = next(iter(self._recent.items()))
                if seen > threshold:
                    break
                self._recent.popitem(last=False)
                self._anchor = first
        self._last_poll = now
        if self._anchor is not None:
            return self._anchor
        return next(iter(self._recent), None)

    def forget(self, since: str | None) -> None:
        """The server no longer knows ``since`` (410): never ask for it again."""
        if since is None:
            return
        if since == self._anchor:
            self._anchor = None
        self._recent.pop(since, None)

    def read(self, since: str | None, ids: Sequence[str], full: bool) -> str | None:
        """Record a page read after ``since`` (``None``: a newest-first window, or a server that
        ignored ``since_id``), ``ids`` oldest first; ``full`` when the server may have more.

        Returns the ``since_id`` of the next page, or ``None`` when this poll is done.
        """
        now = self._clock()
        old = self._recent
        page = OrderedDict((i, old.get(i, now)) for i in ids)
        rest = OrderedDict((i, t) for i, t in old.items() if i not in page)
        if since is None:
            # A window holds the newest rows: whatever it lacks is older.
            merged = OrderedDict(list(rest.items()) + list(page.items()))
        else:
            keys = list(old)
            cut = keys.index(since) + 1 if since in old else 0
            before = OrderedDict((i, old[i]) for i in keys[:cut] if i not in page)
            after = [(i, t) for i, t in rest.items() if i not in before]
            # The page holds every row after ``since`` up to its last one; when it is not
            # full, a remembered row it lacks is gone from the server.
            merged = OrderedDict(
                list(before.items()) + list(page.items()) + (after if full else [])
            )
        while len(merged) > self.overlap_max:
            self._anchor, _ = merged.popitem(last=False)
        self._recent = merged
        if since is None or not full or not ids:
            return None
        return ids[-1]
