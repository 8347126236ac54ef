"""The platform's rate limiter, as the real server applies it: one fixed window per key.

The key is the ``X-Molecule-Org-Id`` header when sent (trimmed, any value), else the bearer
token, else the client's address. Every answer carries ``X-Ratelimit-Limit``,
``X-Ratelimit-Remaining`` (left after this request) and ``X-Ratelimit-Reset`` (whole seconds
until the window ends); the request beyond the limit, and every one after it in the window, is
answered ``429 {"error":"rate limit exceeded","retry_after":N}`` with ``Retry-After: N``. The
event stream costs one request when it opens.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Window:
    start: float
    used: int = 0


class RateLimiter:
    """Off (``limit`` None) until :meth:`configure` turns it on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.limit: int | None = None
        self.window = 60.0
        self._windows: dict[str, _Window] = {}
        #: Requests answered 429, all keys together.
        self.refused = 0

    def configure(self, limit: int | None, window: float = 60.0) -> None:
        with self._lock:
            self.limit = limit
            self.window = window
            self._windows.clear()

    def take(self, headers: dict[str, str], address: str) -> tuple[dict[str, str], int | None]:
        """Count one request; return the headers to add and, when it is refused, the
        ``retry_after`` of the 429 (None: served)."""
        with self._lock:
            if self.limit is None:
                return {}, None
            key = _key(headers, address)
            now = self._clock()
            window = self._windows.get(key)
            if window is None or now - window.start >= self.window:
                window = self._windows[key] = _Window(now)
            window.used += 1
            # Whole seconds, truncated, as the platform says them (ratelimit.go:
            # int(time.Until(reset).Seconds())): the window ends up to a second later.
            reset = max(0, int(window.start + self.window - now))
            remaining = max(0, self.limit - window.used)
            added = {
                "X-Ratelimit-Limit": str(self.limit),
                "X-Ratelimit-Remaining": str(remaining),
                "X-Ratelimit-Reset": str(reset),
            }
            if window.used <= self.limit:
                return added, None
            self.refused += 1
            return {**added, "Retry-After": str(reset)}, reset


def _key(headers: dict[str, str], address: str) -> str:
    org = headers.get("x-molecule-org-id", "").strip()
    if org:
        return f"org:{org}"
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return "token:" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()
    return f"ip:{address}"
