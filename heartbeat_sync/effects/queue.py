"""A daemon thread that works through a bounded queue, with nothing of the platform in it.

Shaped after sentry-python's background worker: :meth:`Worker.submit` never blocks and reports
a drop, :meth:`Worker.flush` waits on a condition to a deadline, :meth:`Worker.stop` is bounded,
and a forked child starts afresh. :class:`~heartbeat_sync._worker.SideEffectWorker` says what
the work is.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Generic, TypeVar

from .. import _fork
from .policy import DROP_QUEUE_FULL, DROP_STOPPED

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
        if self._stopping or self._queue:
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
                    if self._stopping:
                        self._discard_all()
                        return
                    while self._queue:
                        self._accept(self._queue.popleft())
                    self._busy = True
                try:
                    self._step()
                except Exception:  # the worker must outlive any bug in one step
                    logger.exception("side-effect step failed")
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            self._close()

    def _discard_all(self) -> None:
        # Caller holds the lock.
        for item in self._queue:
            self._rejected(item, DROP_STOPPED)
        self._queue.clear()
        self._discard()
        self._cond.notify_all()
