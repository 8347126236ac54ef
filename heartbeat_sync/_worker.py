"""The side-effect worker: wake-up self-messages and notifications, off the beat thread.

A slow or hanging ``/a2a`` (up to 120 s) or ``/notify`` must never delay a heartbeat, so the
beat thread only hands batches of results to this worker through a bounded queue and moves on.
:class:`Worker` is the thread and its queue, with nothing of the platform in it;
:class:`SideEffectWorker` sends what the pure :class:`~heartbeat_sync._policy.SideEffectPolicy`
says is due, on its own session.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Callable, Generic, TypeVar

from . import _fork, _texts
from ._client import PlatformClient, PlatformError
from ._http import RETRY_STATUSES
from ._policy import (
    DROP_QUEUE_FULL,
    DROP_STOPPED,
    NOTIFY_PAUSE_SECONDS,
    Notify,
    Refusal,
    SideEffectCounts,
    SideEffectPolicy,
    Wakeup,
)
from ._ratelimit import RateLimitedLog
from ._rows import Result

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Worker(Generic[T]):
    """A daemon thread that works through a bounded queue; subclasses say what the work is.

    :meth:`submit` never blocks: when the queue is full or the worker is stopped the item is
    refused (and handed to :meth:`_rejected`). The thread moves queued items into the work it
    holds (:meth:`_accept`) and runs one :meth:`_step` whenever :meth:`_due_in` says something
    is due. :meth:`flush` and :meth:`stop` are bounded; a forked child starts afresh with
    nothing queued, so it never repeats the parent's work.

    The hooks named ``_accept``, ``_rejected``, ``_held``, ``_due_in`` and ``_discard`` are
    called with the worker's lock held and must not block; ``_open``, ``_step``, ``_close`` run
    on the worker thread without it, and ``_interrupt`` on the thread calling :meth:`stop`.
    """

    def __init__(self, *, max_queue: int, name: str) -> None:
        self.max_queue = max_queue
        self.name = name
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[T] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._busy = False
        # Callables run on this thread (the user's state-change callback), and whether to end
        # once they ran (the workspace was removed).
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._finishing = False

    def _after_fork_in_child(self) -> None:
        # The child has no worker thread, and the parent's locks may have been held at fork.
        self._init_state()

    # --- hooks ----------------------------------------------------------------------------

    def _accept(self, item: T) -> None:
        """Take a queued item into the work held (lock held, worker thread)."""
        raise NotImplementedError

    def _rejected(self, item: T, reason: str) -> None:
        """``item`` will never be worked on: the queue was full, or the worker stopped."""

    def _held(self) -> int:
        """Pieces of work taken from the queue and not yet done."""
        return 0

    def _due_in(self) -> float | None:
        """Seconds until held work is due (0 or less: now); None when nothing is held."""
        return None

    def _discard(self) -> None:
        """Drop all held work: the worker is ending."""

    def _open(self) -> None:
        """Called first on the worker thread."""

    def _step(self) -> None:
        """Do one piece of due work (worker thread, without the lock)."""

    def _close(self) -> None:
        """Called last on the worker thread."""

    def _interrupt(self) -> None:
        """Cut short the step in flight: :meth:`stop` was called."""

    # --- the callers' side ----------------------------------------------------------------

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
                    raise RuntimeError(f"{self.name} of the previous run is still ending")
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            self._after_fork_in_child()

    def submit(self, item: T) -> bool:
        """Queue ``item``. Never blocks; False when it was refused (queue full, or stopped)."""
        self._check_pid()
        with self._cond:
            if self._stopping or self._thread is None:
                self._rejected(item, DROP_STOPPED)
                return False
            if len(self._queue) >= self.max_queue:
                self._rejected(item, DROP_QUEUE_FULL)
                return False
            self._queue.append(item)
            self._cond.notify_all()  # the worker, and any flush() waiting on the same condition
            return True

    def call_soon(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the worker thread, before any further step. Never blocks.

        An exception in ``fn`` is logged, never raised. Returns False when the worker is not
        running (``fn`` is then not called).
        """
        self._check_pid()
        with self._cond:
            if self._stopping or self._thread is None or not self._thread.is_alive():
                return False
            self._calls.append(fn)
            self._cond.notify()
            return True

    def finish(self) -> None:
        """End the thread once the queued calls ran; work still queued or held is dropped."""
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

    def idle(self) -> bool:
        """True when nothing is queued, held or in flight."""
        with self._cond:
            return self._idle()

    def _idle(self) -> bool:
        return not (self._queue or self._busy or self._held())

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been done, or ``timeout`` passes. True if idle.

        Held work that is not due within ``timeout`` counts as not done: when it is all that is
        left, this returns False at once instead of waiting for nothing.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._idle():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                if not (self._queue or self._busy):
                    due = self._due_in()
                    if due is not None and due > remaining:
                        return False
                self._cond.wait(remaining)  # notified after every step and every submit
            return True

    def stop(self, timeout: float) -> bool:
        """Ask the thread to end and wait up to ``timeout``. True if it has ended.

        Work still queued or held is dropped. A step in flight is interrupted, so the thread
        ends promptly even if what it waits on hangs.
        """
        with self._cond:
            self._stopping = True
            thread = self._thread
            busy = self._busy
            self._cond.notify_all()
        if busy:
            self._interrupt()
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        return not thread.is_alive()

    # --- the worker thread ----------------------------------------------------------------

    def _ready(self) -> bool:
        if self._stopping or self._queue or self._calls or self._finishing:
            return True
        due = self._due_in()
        return due is not None and due <= 0

    def _run(self) -> None:
        self._open()
        try:
            while True:
                with self._cond:
                    while not self._ready():
                        self._cond.wait(self._due_in())
                    calls = list(self._calls)
                    self._calls.clear()
                    if self._stopping or (self._finishing and not calls):
                        self._discard_all()
                        return
                    while self._queue:
                        self._accept(self._queue.popleft())
                    self._busy = True
                try:
                    if calls:
                        self._run_calls(calls)
                    else:
                        self._step()
                except Exception:  # the worker must outlive any bug in one step
                    logger.exception("side-effect step failed")
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            self._close()

    def _run_calls(self, calls: list[Callable[[], None]]) -> None:
        for fn in calls:
            try:
                fn()
            except Exception:  # the user's callback must never end this thread
                logger.exception("state-change callback failed")

    def _discard_all(self) -> None:
        # Caller holds the lock.
        for item in self._queue:
            self._rejected(item, DROP_STOPPED)
        self._queue.clear()
        self._discard()
        self._cond.notify_all()


def _refusal(exc: PlatformError) -> Refusal:
    return Refusal.read(exc.status, exc.body, exc.retry_after, exc.connect_error)


class SideEffectWorker(Worker[list[Result]]):
    """Sends wake-ups and notifications for batches of results, on its own daemon thread.

    :meth:`submit` never blocks: when the queue is full the batch's side effects are dropped
    and counted (its results are already safe in the results file). When to send what is
    :class:`~heartbeat_sync._policy.SideEffectPolicy`'s rule: one wake-up per ``cooldown``
    for the results that arrived meanwhile, a busy agent's wake-up retried after
    ``Retry-After`` until ``retry_deadline``, one notification per result.
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
        self.max_notify_backlog = max_notify_backlog
        self.retry_deadline = retry_deadline
        self.self_message_timeout = self_message_timeout
        self._clock = clock
        self._warn = RateLimitedLog(logger)
        super().__init__(max_queue=max_queue, name=name)

    def _init_state(self) -> None:
        super()._init_state()
        self._policy: SideEffectPolicy[Result] = SideEffectPolicy(
            retry_statuses=RETRY_STATUSES,
            cooldown=self.cooldown,
            retry_deadline=self.retry_deadline,
            max_notify_backlog=self.max_notify_backlog,
            max_listed=_texts.TRIGGER_MAX_LINES,
            clock=self._clock,
        )
        self._client: PlatformClient | None = None
        self._parent_name: str | None = None

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._warn.reinit_after_fork()

    # --- the beat thread's side -----------------------------------------------------------

    def submit(self, results: Sequence[Result]) -> bool:
        """Queue the side effects of one batch of new results. Never blocks.

        Returns False (and counts the drop) when the queue is full or the worker is stopped.
        """
        if not results:
            return True
        return super().submit(list(results))

    def snapshot(self) -> SideEffectCounts:
        """The counters and the queue depth, taken together under the worker's lock."""
        with self._cond:
            return self._policy.counts(queued=len(self._queue))

    def pending_summary(self) -> str:
        """What the worker still has to do, in words (for the exit hook's log line)."""
        with self._cond:
            return self._policy.describe(queued=len(self._queue), busy=self._busy)

    # --- hooks: the policy under the worker's lock ----------------------------------------

    def _accept(self, item: list[Result]) -> None:
        self._policy.add(item)

    def _rejected(self, item: list[Result], reason: str) -> None:
        self._policy.drop(reason, len(item))
        if reason == DROP_QUEUE_FULL:
            self._warn.warning(
                "queue_full", "side-effect queue full: dropped a batch of %d", len(item)
            )

    def _held(self) -> int:
        return self._policy.held()

    def _due_in(self) -> float | None:
        return self._policy.due_in()

    def _discard(self) -> None:
        self._policy.discard()

    # --- the worker thread ----------------------------------------------------------------

    def _open(self) -> None:
        self._client = self._client_factory()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _interrupt(self) -> None:
        client = self._client
        if client is not None:
            client.abort()  # shuts the connection down: the request in flight ends now

    def _step(self) -> None:
        client = self._client
        assert client is not None  # _open() ran first on this thread
        with self._cond:
            action = self._policy.next()
        if isinstance(action, Wakeup):
            self._send_wakeup(client, action)
        elif isinstance(action, Notify):
            self._send_notify(client, action.result)

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

    def _send_wakeup(self, client: PlatformClient, wakeup: Wakeup[Result]) -> None:
        text = _texts.trigger_text(wakeup.results, self._parent(client), wakeup.more)
        error: PlatformError | None = None
        try:
            client.self_message(text, str(uuid.uuid4()), timeout=self.self_message_timeout)
        except PlatformError as exc:
            if self._stopping:
                return  # interrupted by stop(); the wake-up is counted as dropped there
            error = exc
        with self._cond:
            outcome = self._policy.wakeup_done(wakeup, None if error is None else _refusal(error))
            delay = self._policy.wakeup_in()
        if outcome == "sent":
            logger.info("wake-up sent for %d result(s)", len(wakeup.results) + wakeup.more)
        elif outcome == "confirmed":
            logger.info("wake-up delivered; the agent's answer was lost (%s)", error)
        elif outcome == "retry":
            logger.info("wake-up not delivered (%s); retrying in %.1f s", error, delay or 0.0)
            return
        else:
            self._warn.warning("wakeup", "wake-up failed, dropped: %s", error)
            return
        self._warn.reset("wakeup")

    def _send_notify(self, client: PlatformClient, result: Result) -> None:
        try:
            client.notify(_texts.notify_text(result))
        except PlatformError as exc:
            with self._cond:
                if self._stopping:
                    self._policy.drop(DROP_STOPPED, 1)
                    return
                outcome = self._policy.notify_done(_refusal(exc))
            if outcome == "paused":
                logger.info(
                    "notifications are turned off for this workspace; pausing them for %.0f s",
                    NOTIFY_PAUSE_SECONDS,
                )
            else:
                self._warn.warning("notify", "notification failed, dropped: %s", exc)
            return
        self._warn.reset("notify")
        with self._cond:
            self._policy.notify_done(None)
