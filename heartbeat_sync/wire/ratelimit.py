"""The platform's rate limit, one view per key for the whole process.

The platform limits requests per key in a fixed 60 s window: the ``X-Molecule-Org-Id`` header
when sent (every workspace of an organisation shares one bucket), else the bearer token, else
the client's address. Every answer says ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` (left
after this request) and ``X-RateLimit-Reset`` (seconds until the window ends); a request beyond
the limit is answered 429 with ``Retry-After``. A :class:`Budget` is that bucket as this process
sees it, shared by every Heartbeat (and every thread) whose requests fall in it:

* a 429 holds every request of the key until its ``Retry-After``: nothing is sent meanwhile
  (:meth:`Budget.held_until`); when it ends the beats go first, the polls a moment later;
* when what is left of the window is no more than the beats its members will send before it
  resets, the polls wait for the reset (:meth:`Budget.polls_from`): the beats never do.

The budget only reads headers and keeps times; it sends nothing and sleeps nowhere.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Mapping
from typing import Callable

from .._logctx import get_logger
from .http import parse_retry_after

logger = get_logger(__name__)

#: After a 429's hold ends, the polls wait this much longer, so that every member's beat goes
#: first.
BEATS_FIRST = 1.0
#: Polls are deferred while the window has no more than this many requests a member left
#: beyond what the members' beats will take before it resets (a poll is two requests).
POLL_MARGIN = 2
#: Polls deferred this long for a low window go anyway (one poll): beats that fill the window
#: by themselves must not keep every result away for good.
MAX_POLL_DEFER = 60.0
#: A ``Retry-After`` or ``Reset`` beyond this is taken as this (the platform's window is 60 s).
MAX_WAIT = 60.0
#: A 429 holds at least this long (one whose ``Retry-After`` is 0 or in the past too)...
MIN_HOLD = 1.0
#: ... and this long when it says nothing of the wait (not the platform's: it always does).
NO_RETRY_AFTER = 5.0
#: The platform says its waits in whole seconds, truncated (``X-RateLimit-Reset`` and
#: ``Retry-After`` of 57 mean 57 to 58 s): its window ends up to this much after it says, and
#: a request sent at the moment said would still meet the old window (another 429).
RESET_SLACK = 1.0
#: Budgets kept at most (one per key ever seen; the oldest idle one goes first).
MAX_BUDGETS = 4096


def _number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except (ValueError, AttributeError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


class Budget:
    """One rate-limit bucket as this process sees it (see the module docstring).

    Thread-safe. ``describe`` names the key in words for the log (never a token).
    """

    def __init__(self, describe: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.describe = describe
        self._clock = clock
        self._lock = threading.Lock()
        self.limit: int | None = None
        self.remaining: int | None = None
        self._reset_at = -math.inf
        self._hold_until = -math.inf
        self._members: dict[int, float] = {}  # member -> its beat interval
        self._said_hold = False
        self._said_low = False
        self._low_since: float | None = None
        #: 429s seen, and polls deferred for a low window (counted by the callers' asks).
        self.refusals = 0

    # --- members -------------------------------------------------------------------------------

    def join(self, member: int, interval: float) -> None:
        """``member`` (any hashable id) beats every ``interval`` seconds under this key."""
        with self._lock:
            self._members[member] = max(interval, 1e-3)

    def leave(self, member: int) -> None:
        with self._lock:
            self._members.pop(member, None)

    # --- what the answers say ------------------------------------------------------------------

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Take what an answer says of the window (and, for a 429, the hold it asks for)."""
        now = self._clock()
        limit = _number(headers, "X-RateLimit-Limit")
        remaining = _number(headers, "X-RateLimit-Remaining")
        reset = _number(headers, "X-RateLimit-Reset")
        with self._lock:
            if limit is not None:
                self.limit = int(limit)
            if remaining is not None:
                self.remaining = int(remaining)
                if self.remaining > self._reserve(now):
                    self._said_low = False
            if reset is not None:
                self._reset_at = now + min(reset, MAX_WAIT) + RESET_SLACK
            if status != 429:
                if now >= self._hold_until:
                    self._said_hold = False
                return
            self.refusals += 1
            wait = parse_retry_after(headers.get("Retry-After"))  # seconds, or an HTTP date
            if wait is None:
                wait = reset
            # The platform's whole seconds, and the slack they need; nothing said: a guess.
            wait = NO_RETRY_AFTER if wait is None else min(wait, MAX_WAIT) + RESET_SLACK
            until = now + max(wait, MIN_HOLD)
            if until > self._hold_until:
                self._hold_until = until
            said = self._said_hold
            self._said_hold = True
        if not said:
            logger.warning(
                "rate limit reached (429) for %s: every request of it waits %.0f s, then the "
                "beats go first",
                self.describe,
                until - now,
            )

    # --- what may be sent ----------------------------------------------------------------------

    def held_until(self) -> float:
        """Until when (monotonic) nothing may be sent under this key (in the past: now)."""
        with self._lock:
            return self._hold_until

    def polls_from(self) -> float:
        """From when (monotonic) polls may be sent (-inf: any time): after a hold, a moment
        after it (the beats first); while the window has no more than the members' beats left,
        its reset."""
        now = self._clock()
        with self._lock:
            start = self._hold_until + BEATS_FIRST  # -inf: never held
            low = (
                self.remaining is not None
                and self._reset_at > now
                and self.remaining <= self._reserve(now)
            )
            if low and self._low_since is None:
                self._low_since = now
            elif not low:
                self._low_since = None
            if low and self._low_since is not None and now - self._low_since >= MAX_POLL_DEFER:
                low = False  # deferred a whole window already: one poll goes
                self._low_since = now
            if low:
                start = max(start, self._reset_at)
                said = self._said_low
                self._said_low = True
            else:
                said = True
            remaining, limit, reset_in = self.remaining, self.limit, self._reset_at - now
        if not said:
            logger.info(
                "rate limit for %s running low (%s of %s left): polls wait %.0f s for the "
                "window to reset, the beats go on",
                self.describe,
                remaining,
                limit if limit is not None else "?",
                reset_in,
            )
        return start

    def _reserve(self, now: float) -> int:
        # Caller holds the lock: the beats the members will send before the window resets.
        left = max(0.0, self._reset_at - now)
        # Each member's beats until the reset, and room for a poll of each (two requests) that
        # may already be on its way: members decide at the same moment on the same count.
        # At most ceil(left / interval) beats fall in ``left`` seconds, wherever the slots are.
        beats = sum(math.ceil(left / interval) for interval in self._members.values())
        return beats + POLL_MARGIN * max(1, len(self._members))


_budgets: dict[tuple[str, str], Budget] = {}
_budgets_lock = threading.Lock()


def budget_for(platform_url: str, headers: Mapping[str, str]) -> Budget:
    """The process's budget for the key these request headers fall under on that platform."""
    org = (headers.get("X-Molecule-Org-Id") or "").strip()
    auth = headers.get("Authorization") or ""
    if org:
        key, describe = f"org:{org}", f"organisation {org!r}"
    elif auth:
        digest = hashlib.sha256(auth.encode("utf-8", "replace")).hexdigest()[:16]
        key, describe = f"token:{digest}", "this workspace's token"
    else:
        key, describe = "address", "this client's address"
    with _budgets_lock:
        budget = _budgets.get((platform_url, key))
        if budget is None:
            if len(_budgets) >= MAX_BUDGETS:
                _budgets.pop(next(iter(_budgets)))
            budget = _budgets[(platform_url, key)] = Budget(describe)
        return budget
