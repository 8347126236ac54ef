"""The user's state-change callbacks, on a thread of their own.

A callback is the user's code: it may block, call :meth:`Heartbeat.stop` or :meth:`Heartbeat.wait`
(a removal is the natural place to clean up), or take a while. Run on the side-effect thread it
would wait behind a wake-up in flight (up to ``self_message_timeout``) and could not stop the
Heartbeat that runs it; run on the beat thread it would delay the beats. So callbacks get their
own daemon thread, started the first time there is something to call, as kazoo runs its
watchers apart from its session thread.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable

from .. import _fork, _logctx
from .._logctx import get_logger

logger = get_logger(__name__)

#: Calls held while the user's callback is slow; beyond this the oldest is dropped (logged).
MAX_PENDING = 1000


class Callbacks:
    """Runs calls in order on one daemon thread, never more than one at a time.

    :meth:`call` never blocks. :meth:`finish` ends the thread once what is queued has run;
    :meth:`stop` drops what is queued and ends it once the call running (if any) returns. A
    call cannot be interrupted, so a stop is bounded only by the user's code; a stop or a
    join from the callback's own thread returns at once (the thread ends when the callback
    returns).
    """

    def __init__(self, name: str, max_pending: int = MAX_PENDING) -> None:
        self.name = name
        self.max_pending = max_pending
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._finishing = False
        self._dropped = 0

    def _after_fork_in_child(self) -> None:
        # The child has no callback thread, and the parent's lock may have been held at fork.
        self._init_state()

    @property
    def thread(self) -> threading.Thread | None:
        """The thread, alive or not; None before the first call."""
        with self._cond:
            return self._thread

    def open(self) -> None:
        """Accept calls again (a new run begins; the previous thread has ended)."""
        with self._cond:
            self._closed = False
            self._finishing = False

    def call(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on the callback thread after the calls queued before it. Never blocks.

        An exception in ``fn`` is logged with its traceback, never raised. Returns False when
        no call is accepted (stopped, or finishing).
        """
        with self._cond:
            if self._closed or self._finishing:
                return False
            if len(self._queue) >= self.max_pending:
                self._queue.popleft()
                self._dropped += 1
                logger.warning(
                    "state-change callback is slow: dropped the oldest pending call (%d so far)",
                    self._dropped,
                )
            self._queue.append(fn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = _logctx.thread(self._run, self.name)
                self._thread.start()
            self._cond.notify()
            return True

    def finish(self) -> None:
        """End the thread once the calls queued so far have run; accept no more."""
        with self._cond:
            self._finishing = True
            self._cond.notify()

    def stop(self, timeout: float) -> bool:
        """Drop the calls not yet run and end the thread; True once it has ended.

        From the callback thread itself (a callback that stops its Heartbeat) this returns
        True at once: the thread ends when that callback returns.
        """
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify()
        return self.join(timeout)

    def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for the thread to end; True if so.

        From the callback thread itself: True at once (it ends when the callback returns, if
        it was told to end), without waiting.
        """
        with self._cond:
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._closed or self._finishing):
                    self._cond.wait()
                if self._closed or not self._queue:
                    return
                fn = self._queue.popleft()
            try:
                fn()
            except Exception:  # the user's callback must never end this thread
                logger.exception("state-change callback failed")
