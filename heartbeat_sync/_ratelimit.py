"""Rate-limited logging, so that a platform that fails for hours does not flood the log."""

from __future__ import annotations

import logging
import threading
from typing import Any


class RateLimitedLog:
    """Log the first ``first`` occurrences of a problem, then every ``every``-th one.

    This is the reference loop's rule for heartbeat failures (the first 3, then every 10th),
    applied to every kind of repeated warning in the library. :meth:`reset` is called when
    the problem goes away, so that the next occurrence is logged again at once.
    """

    def __init__(self, logger: logging.Logger, first: int = 3, every: int = 10) -> None:
        self._logger = logger
        self._first = first
        self._every = every
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        """Count one occurrence of ``key``; log it at WARNING if due. Returns True if logged."""
        with self._lock:
            n = self._counts.get(key, 0) + 1
            self._counts[key] = n
        if n <= self._first or n % self._every == 0:
            # stacklevel: the record names the caller's line, not this helper's.
            self._logger.warning(msg + " (occurrence %d)", *args, n, stacklevel=2)
            return True
        self._logger.debug(msg, *args, stacklevel=2)
        return False

    def count(self, key: str) -> int:
        """How many times ``key`` occurred since the last reset."""
        with self._lock:
            return self._counts.get(key, 0)

    def reset(self, key: str) -> None:
        """Forget ``key``: the problem is over."""
        with self._lock:
            self._counts.pop(key, None)

    def reinit_after_fork(self) -> None:
        """Give the child of a fork a fresh lock (the parent's may have been held)."""
        self._lock = threading.Lock()
