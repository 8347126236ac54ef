"""What a Heartbeat counts: the agent's reports for the next beat, and the beats' outcomes.

Thread-safe: the agent writes from its threads, the beat thread reads and resets, ``status()``
reads from anywhere. No I/O.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import _status
from ..effects import PoolCounts, SideEffectCounts


@dataclass(frozen=True)
class BeatReport:
    """What one beat tells the platform about the agent, read at one instant."""

    errors: int
    requests: int
    sample_error: str
    active_tasks: int
    current_task: str
    uptime_seconds: float
    #: Busy: as the agent set it, else while tasks are in progress.
    is_busy: bool = False

    @property
    def error_rate(self) -> float:
        """Errors ÷ requests (0.0 with no requests)."""
        return self.errors / self.requests if self.requests else 0.0


class Tally:
    """The counters of one Heartbeat, guarded by one lock.

    Args:
        lock: The lock to guard them with; the Heartbeat passes its own, so that its other
            state and these counters are never held apart.
        clock: Measures uptime; durations are on the monotonic clock, so setting the wall
            clock moves nothing.
    """

    def __init__(
        self, lock: threading.Lock | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = lock if lock is not None else threading.Lock()
        self._clock = clock
        self._start_time = clock()
        self._error_count = 0
        self._request_count = 0
        self._sample_error = ""
        self._active_tasks = 0
        self._current_task = ""
        self._busy: bool | None = None
        self._beats_ok = 0
        self._beats_failed = 0
        self._consecutive_failures = 0
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._standing: dict[str, str] = {}
        self._results_delivered = 0
        self._messages_skipped = 0

    # --- what the agent reports -------------------------------------------------------------

    def record_error(self, error: str) -> None:
        """Count a failed request; ``error`` becomes the next beat's sample."""
        with self._lock:
            self._error_count += 1
            self._request_count += 1
            self._sample_error = str(error)

    def record_success(self) -> None:
        """Count a successful request."""
        with self._lock:
            self._request_count += 1

    def error_rate(self) -> float:
        """Errors ÷ requests since the last successful beat (0.0 with no requests)."""
        with self._lock:
            return self._error_count / self._request_count if self._request_count else 0.0

    def sample_error(self) -> str:
        """The last error recorded."""
        with self._lock:
            return self._sample_error

    def active_tasks(self) -> int:
        """Tasks in progress, as the agent last set them."""
        with self._lock:
            return self._active_tasks

    def set_active_tasks(self, value: int) -> None:
        """Set the tasks in progress (``int(value)``)."""
        with self._lock:
            self._active_tasks = int(value)

    def is_busy(self) -> bool:
        """Busy as the agent set it; without a setting, while tasks are in progress."""
        with self._lock:
            return self._is_busy()

    def _is_busy(self) -> bool:
        # caller holds self._lock
        return self._busy if self._busy is not None else self._active_tasks > 0

    def set_busy(self, value: bool | None) -> None:
        """Say the agent is busy (True) or not (False) whatever the tasks; None: derive it from
        the tasks in progress again."""
        with self._lock:
            self._busy = None if value is None else bool(value)

    def current_task(self) -> str:
        """What the agent is doing, as it last said."""
        with self._lock:
            return self._current_task

    def set_current_task(self, value: str) -> bool:
        """Set what the agent is doing; True when that is a change."""
        with self._lock:
            changed = value != self._current_task
            self._current_task = value
            return changed

    # --- what the beats report --------------------------------------------------------------

    def beat_report(self, handlers: int = 0) -> BeatReport:
        """The agent's reports as the next beat sends them; ``handlers`` (message handlers
        running) count as tasks in progress."""
        with self._lock:
            tasks = self._active_tasks + max(0, handlers)
            busy = self._busy if self._busy is not None else tasks > 0
            return BeatReport(
                errors=self._error_count,
                requests=self._request_count,
                sample_error=self._sample_error,
                active_tasks=tasks,
                current_task=self._current_task,
                uptime_seconds=self._clock() - self._start_time,
                is_busy=busy,
            )

    def beat_succeeded(self, sent: BeatReport) -> int:
        """Count a beat the platform answered; return the failed beats it ends.

        Only what ``sent`` reported is reset: errors recorded meanwhile still count.
        """
        with self._lock:
            self._error_count = max(0, self._error_count - sent.errors)
            self._request_count = max(0, self._request_count - sent.requests)
            recovered = self._consecutive_failures
            self._consecutive_failures = 0
            self._beats_ok += 1
            self._last_success = time.time()
            self._last_error = None
            return recovered

    def beat_failed(self, error: str) -> int:
        """Count a failed beat, ``error`` in words (never a secret); return the failures in
        a row."""
        with self._lock:
            self._consecutive_failures += 1
            self._beats_failed += 1
            self._last_error = error
            return self._consecutive_failures

    def _latest_standing(self) -> str | None:
        return next(reversed(self._standing.values()), None) if self._standing else None

    def set_standing_error(self, key: str, error: str | None) -> None:
        """Record (or, with None, clear) a failure that is not a beat's and lasts until its
        cause is gone: a registration refused, polls refused for want of the tenant header.

        A passing beat does not clear it; ``last_error`` shows it whenever the last beat
        passed.
        """
        with self._lock:
            if error is None:
                self._standing.pop(key, None)
            else:
                self._standing.pop(key, None)
                self._standing[key] = error  # the most recent last

    def skipped(self, count: int) -> None:
        """Count activity rows skipped as no message to anyone (no id)."""
        with self._lock:
            self._messages_skipped += count

    def delivered(self, count: int) -> None:
        """Count results written to the results file."""
        with self._lock:
            self._results_delivered += count

    def live_state(self, paused: bool) -> str:
        """The state of a running Heartbeat: paused, degraded, healthy or starting."""
        with self._lock:
            return self._live_state(paused)

    def status(
        self,
        state: str | None,
        *,
        running: bool,
        paused: bool,
        side: SideEffectCounts,
        workspace_status: str | None,
        registration: tuple[str | None, str | None] = (None, None),
        stream: _status.StreamStatus | None = None,
        handlers: PoolCounts | None = None,
    ) -> _status.Status:
        """``Status`` with the beat counters read at one instant; ``state`` None: the state
        the counters give (``starting``, ``healthy``, ``degraded`` or ``paused``)."""
        with self._lock:
            return _status.Status(
                state=state or self._live_state(paused),
                running=running,
                beats_ok=self._beats_ok,
                beats_failed=self._beats_failed,
                consecutive_failures=self._consecutive_failures,
                last_success=self._last_success,
                last_error=self._last_error or self._latest_standing(),
                results_delivered=self._results_delivered,
                wakeups_sent=side.wakeups_sent,
                notifications_sent=side.notifications_sent,
                side_effects_dropped=sum(side.drops.values()),
                drops=side.drops,
                queue_depth=side.queue_depth,
                workspace_status=workspace_status,
                registration=registration[0],
                registration_error=registration[1],
                stream=stream,
                messages_handled=0 if handlers is None else handlers.handled,
                handler_errors=0 if handlers is None else handlers.failed,
                handlers_running=0 if handlers is None else handlers.running,
                oldest_handler_seconds=None if handlers is None else handlers.oldest,
                replies_sent=side.replies_sent,
                messages_skipped=self._messages_skipped,
            )

    def _live_state(self, paused: bool) -> str:
        # caller holds self._lock
        if paused:
            return _status.PAUSED
        if self._consecutive_failures:
            return _status.DEGRADED
        return _status.HEALTHY if self._beats_ok else _status.STARTING
