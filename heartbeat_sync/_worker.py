"""The side-effect worker: wake-up self-messages and notifications, off the beat thread.

A slow or hanging ``/a2a`` (up to 120 s) or ``/notify`` must never delay a heartbeat, so the
beat thread only hands batches of results to this worker through a bounded queue and moves on.
The worker owns its own session, the wake-up cooldown and coalescing, the retry of a busy
agent's wake-up, and the pause of notifications a workspace has turned off.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Callable

from . import _fork, _texts
from ._client import PlatformClient, PlatformError
from ._http import RETRY_STATUSES
from ._ratelimit import RateLimitedLog
from ._rows import Result

logger = logging.getLogger(__name__)

#: Statuses after which a wake-up is retried: the agent is busy or waking (CONTRACT.md §8).
RETRY_WAKEUP_STATUSES = RETRY_STATUSES
#: The platform's 503 error for a workspace whose agent has no URL: not a busy agent.
NO_AGENT_URL = "workspace has no URL"
DEFAULT_RETRY_DELAY = 15.0
#: How long notifications stay paused after the platform said they are turned off (403).
NOTIFY_PAUSE_SECONDS = 600.0

DROP_QUEUE_FULL = "queue_full"
DROP_WAKEUP_FAILED = "wakeup_failed"
DROP_NOTIFY_FAILED = "notify_failed"
DROP_NOTIFY_DISABLED = "notify_disabled"
DROP_NOTIFY_BACKLOG = "notify_backlog"
DROP_STOPPED = "stopped"


class SideEffectWorker:
    """Sends wake-ups and notifications for batches of results, on its own daemon thread.

    :meth:`submit` never blocks: when the queue is full the batch's side effects are dropped
    and counted (its results are already safe in the results file). At most one wake-up is
    sent per ``cooldown``; results that arrive meanwhile are announced together as soon as it
    ends. A wake-up answered 503 (agent busy or waking) is retried after ``Retry-After``
    until ``retry_deadline`` seconds after the first attempt; one answered 503 ``workspace
    has no URL`` (no agent to wake) is dropped at once.
    """

    def __init__(
        self,
        client_factory: Callable[[], PlatformClient],
        *,
        cooldown: float = 60.0,
        max_queue: int = 256,
        max_notify_backlog: int = 1000,
        retry_deadline: float = 300.0,
        self_message_timeout: float = 120.0,
        name: str = "heartbeat-sync-side-effects",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_factory = client_factory
        self.cooldown = cooldown
        self.max_queue = max_queue
        self.max_notify_backlog = max_notify_backlog
        self.retry_deadline = retry_deadline
        self.self_message_timeout = self_message_timeout
        self.name = name
        self._clock = clock
        self._warn = RateLimitedLog(logger)
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._inbox: collections.deque[list[Result]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        self._client: PlatformClient | None = None
        self._pending_wake: list[Result] = []
        # Results beyond the listed ones are only counted: memory stays bounded.
        self._wake_more = 0
        self._pending_notify: collections.deque[Result] = collections.deque()
        self._next_wake_at = float("-inf")
        self._last_was_wakeup = False
        self._first_attempt_at: float | None = None
        self._notify_paused_until = float("-inf")
        self._parent_name: str | None = None
        # Callables run on this thread (the user's state-change callback), and whether to end
        # once they ran (the workspace was removed).
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._finishing = False
        self.wakeups_sent = 0
        self.notifications_sent = 0
        self.dropped: dict[str, int] = {}

    def _after_fork_in_child(self) -> None:
        # The child has no worker thread, and the parent's locks may have been held at fork:
        # start afresh with nothing queued, so the child never repeats the parent's effects.
        self._init_state()
        self._warn.reinit_after_fork()

    # --- the beat thread's side -----------------------------------------------------------

    @property
    def thread(self) -> threading.Thread | None:
        """The worker's thread, alive or not; None before the first start."""
        with self._cond:
            return self._thread

    def start(self) -> None:
        """Start the thread (once; again in a forked child, lazily).

        Raises RuntimeError when the thread of an earlier run is still ending: a new thread
        beside it would share its queue.
        """
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                if self._stopping:
                    raise RuntimeError("the side-effect thread of the previous run is still ending")
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def submit(self, results: Sequence[Result]) -> bool:
        """Queue the side effects of one batch of new results. Never blocks.

        Returns False (and counts the drop) when the queue is full or the worker is stopped.
        """
        if not results:
            return True
        if os.getpid() != self._pid:
            self._after_fork_in_child()
        with self._cond:
            if self._stopping or self._thread is None:
                self._drop(DROP_STOPPED, len(results))
                return False
            if len(self._inbox) >= self.max_queue:
                self._drop(DROP_QUEUE_FULL, len(results))
                self._warn.warning(
                    "queue_full", "side-effect queue full: dropped a batch of %d", len(results)
                )
                return False
            self._inbox.append(list(results))
            self._cond.notify_all()  # the worker, and any flush() waiting on the same condition
            return True

    def call_soon(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the worker thread, after what is queued before it. Never blocks.

        An exception in ``fn`` is logged, never raised. Returns False when the worker is not
        running (``fn`` is then not called).
        """
        if os.getpid() != self._pid:
            self._after_fork_in_child()
        with self._cond:
            if self._stopping or self._thread is None or not self._thread.is_alive():
                return False
            self._calls.append(fn)
            self._cond.notify()
            return True

    def finish(self) -> None:
        """End the thread once the queued calls ran; wake-ups and notifications still pending
        are dropped (counted as ``stopped``), nothing more is sent."""
        with self._cond:
            self._finishing = True
            self._cond.notify_all()

    def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for the thread to end; True if so."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None or not thread.is_alive()
        thread.join(timeout)
        return not thread.is_alive()

    def _drop(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    @property
    def queue_depth(self) -> int:
        """Batches waiting plus wake-up and notifications not yet sent."""
        with self._cond:
            return len(self._inbox) + (1 if self._pending_wake else 0) + len(self._pending_notify)

    def pending_summary(self) -> str:
        """What the worker still has to do, in words (for the exit hook's log line)."""
        with self._cond:
            batches = len(self._inbox)
            wake = len(self._pending_wake) + self._wake_more
            notes = len(self._pending_notify)
            busy = self._busy
        parts = []
        if batches:
            parts.append(f"{batches} queued batch(es)")
        if wake:
            parts.append(f"a wake-up for {wake} result(s)")
        if notes:
            parts.append(f"{notes} notification(s)")
        if busy and not parts:
            parts.append("a request in flight")
        return ", ".join(parts) or "nothing"

    def idle(self) -> bool:
        with self._cond:
            return not (self._inbox or self._pending_wake or self._pending_notify or self._busy)

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been sent, or ``timeout`` passes. True if idle.

        A wake-up held back by the cooldown or a busy agent counts as not sent; when it is the
        only thing left and cannot go out within ``timeout``, this returns False at once
        instead of waiting for nothing.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._inbox or self._pending_wake or self._pending_notify or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                if self._only_held_wakeup(remaining):
                    return False
                self._cond.wait(remaining)
            return True

    def _only_held_wakeup(self, within: float) -> bool:
        # Caller holds the lock.
        if self._inbox or self._pending_notify or self._busy or not self._pending_wake:
            return False
        return self._next_wake_at - self._clock() > within

    def stop(self, timeout: float) -> bool:
        """Ask the thread to end and wait up to ``timeout``. True if it has ended.

        Work still queued is dropped and counted. A request in flight is interrupted (its
        connection is shut down), so the thread ends promptly even if the platform hangs.
        """
        with self._cond:
            self._stopping = True
            thread = self._thread
            client = self._client if self._busy else None
            self._cond.notify_all()
        if client is not None:
            client.abort()
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        return not thread.is_alive()

    # --- the worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        client = self._client_factory()
        self._client = client
        try:
            while True:
                with self._cond:
                    while not (
                        self._stopping
                        or self._inbox
                        or self._calls
                        or self._finishing
                        or self._due()
                    ):
                        self._cond.wait(self._wait_time())
                    if self._stopping:
                        self._drop_all()
                        return
                    calls = list(self._calls)
                    self._calls.clear()
                    if self._finishing and not calls:
                        self._drop_all()  # the workspace is gone: nothing more is sent
                        return
                    while self._inbox:
                        batch = self._inbox.popleft()
                        listed = max(0, _texts.TRIGGER_MAX_LINES - len(self._pending_wake))
                        self._pending_wake.extend(batch[:listed])
                        self._wake_more += max(0, len(batch) - listed)
                        room = self.max_notify_backlog - len(self._pending_notify)
                        self._pending_notify.extend(batch[: max(0, room)])
                        if len(batch) > room:
                            self._drop(DROP_NOTIFY_BACKLOG, len(batch) - max(0, room))
                    self._busy = True
                try:
                    if calls:
                        self._run_calls(calls)
                    else:
                        self._step(client)
                except Exception:  # the worker must outlive any bug in one step
                    logger.exception("side-effect step failed")
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            client.close()

    def _run_calls(self, calls: list[Callable[[], None]]) -> None:
        for fn in calls:
            try:
                fn()
            except Exception:  # the user's callback must never end this thread
                logger.exception("state-change callback failed")

    def _wait_time(self) -> float | None:
        now = self._clock()
        waits = []
        if self._pending_wake:
            waits.append(self._next_wake_at - now)
        return max(0.0, min(waits)) if waits else None

    def _due(self) -> bool:
        now = self._clock()
        if self._pending_wake and now >= self._next_wake_at:
            return True
        return bool(self._pending_notify)

    def _drop_all(self) -> None:
        count = sum(len(b) for b in self._inbox) + len(self._pending_notify)
        if self._pending_wake:
            count += 1
        if count:
            self._drop(DROP_STOPPED, count)
        self._inbox.clear()
        self._pending_notify.clear()
        self._pending_wake = []
        self._wake_more = 0
        self._cond.notify_all()

    def _step(self, client: PlatformClient) -> None:
        now = self._clock()
        with self._cond:
            wake_due = bool(self._pending_wake) and now >= self._next_wake_at
            # After a wake-up, one notification goes first: with a short cooldown and results
            # arriving steadily, wake-ups would otherwise starve the notifications.
            if wake_due and self._last_was_wakeup and self._pending_notify:
                wake_due = False
            batch = list(self._pending_wake) if wake_due else []
            more = self._wake_more
        self._last_was_wakeup = wake_due
        if wake_due:
            self._send_wakeup(client, batch, more)
            return
        with self._cond:
            result = self._pending_notify.popleft() if self._pending_notify else None
        if result is not None:
            self._send_notify(client, result)

    def _parent(self, client: PlatformClient) -> str:
        """The parent workspace's name ("" if none); cached only once the lookup succeeded."""
        if self._parent_name is not None:
            return self._parent_name
        try:
            own = client.workspace(client.workspace_id)
            parent_id = own.get("parent_id")
            name = ""
            if isinstance(parent_id, str) and parent_id:
                parent = client.workspace(parent_id)
                raw = parent.get("name")
                name = raw if isinstance(raw, str) else ""
        except PlatformError as exc:
            self._warn.warning("parent", "parent lookup failed, will retry: %s", exc)
            return ""
        self._warn.reset("parent")
        self._parent_name = name
        return name

    def _send_wakeup(self, client: PlatformClient, batch: list[Result], more: int) -> None:
        text = _texts.trigger_text(batch, self._parent(client), more)
        now = self._clock()
        if self._first_attempt_at is None:
            self._first_attempt_at = now
        try:
            client.self_message(text, str(uuid.uuid4()), timeout=self.self_message_timeout)
        except PlatformError as exc:
            if self._stopping:
                return  # interrupted by stop(); the wake-up is counted as dropped there
            if isinstance(exc.body, dict) and exc.body.get("delivery_confirmed") is True:
                # The agent received it; only its answer was lost (CONTRACT.md §8). Sending
                # it again would wake the agent twice.
                logger.info("wake-up delivered; the agent's answer was lost (%s)", exc)
                self._delivered(batch, more)
                return
            error = exc.body.get("error") if isinstance(exc.body, dict) else None
            # The platform knows no agent URL for this workspace (it beats but never
            # registered one): no retry can deliver this; the next results try again.
            no_agent = exc.status == 503 and error == NO_AGENT_URL
            retryable = (exc.status in RETRY_WAKEUP_STATUSES or exc.connect_error) and not no_agent
            deadline = self._first_attempt_at + self.retry_deadline
            now = self._clock()
            if retryable and now < deadline:
                delay = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_DELAY
                delay = min(max(delay, 0.05), deadline - now)
                logger.info("wake-up not delivered (%s); retrying in %.1f s", exc, delay)
                with self._cond:
                    self._next_wake_at = now + delay
                return
            self._warn.warning("wakeup", "wake-up failed, dropped: %s", exc)
            with self._cond:
                self._drop(DROP_WAKEUP_FAILED, 1)
                self._finish_wakeup(batch, more, now)
            return
        logger.info("wake-up sent for %d result(s)", len(batch))
        self._delivered(batch, more)

    def _delivered(self, batch: list[Result], more: int) -> None:
        self._warn.reset("wakeup")
        with self._cond:
            self.wakeups_sent += 1
            self._finish_wakeup(batch, more, self._clock())

    def _finish_wakeup(self, batch: list[Result], more: int, now: float) -> None:
        # Results that arrived while this wake-up was in flight stay pending for the next one.
        sent = {id(r) for r in batch}
        self._pending_wake = [r for r in self._pending_wake if id(r) not in sent]
        self._wake_more = max(0, self._wake_more - more)
        self._next_wake_at = now + self.cooldown
        self._first_attempt_at = None

    def _send_notify(self, client: PlatformClient, result: Result) -> None:
        now = self._clock()
        if now < self._notify_paused_until:
            with self._cond:
                self._drop(DROP_NOTIFY_DISABLED, 1)
            return
        try:
            client.notify(_texts.notify_text(result))
        except PlatformError as exc:
            if self._stopping:
                with self._cond:
                    self._drop(DROP_STOPPED, 1)
                return
            error = exc.body.get("error") if isinstance(exc.body, dict) else None
            if exc.status == 403 and error == "talk_to_user_disabled":
                logger.info(
                    "notifications are turned off for this workspace; pausing them for %.0f s",
                    NOTIFY_PAUSE_SECONDS,
                )
                self._notify_paused_until = now + NOTIFY_PAUSE_SECONDS
                with self._cond:
                    self._drop(DROP_NOTIFY_DISABLED, 1)
                return
            self._warn.warning("notify", "notification failed, dropped: %s", exc)
            with self._cond:
                self._drop(DROP_NOTIFY_FAILED, 1)
            return
        self._warn.reset("notify")
        with self._cond:
            self.notifications_sent += 1
