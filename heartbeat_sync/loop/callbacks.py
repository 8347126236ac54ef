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
import time
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


class CallbackLane:
    """One daemon thread that runs the state-change callbacks of many workspaces (a hub's),
    in the order they were asked for; each workspace holds a :meth:`share` of it.

    The thread starts with the first call. A slow callback delays the others' (they wait in
    line, never lost up to ``max_pending`` each): a hub's callbacks should be quick.
    """

    def __init__(self, name: str = "heartbeat-sync-callbacks", max_pending: int = MAX_PENDING):
        self.name = name
        self.max_pending = max_pending
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[CallbackShare, Callable[[], None]]] = (
            collections.deque()
        )
        self._thread: threading.Thread | None = None
        self._running: CallbackShare | None = None
        self._closed = False

    def share(self, name: str, workspace_id: str = "") -> CallbackShare:
        """A workspace's share of the lane (what a run needs of its callback thread)."""
        return CallbackShare(self, name, workspace_id)

    @property
    def thread(self) -> threading.Thread | None:
        """The lane's thread, alive or not; None before the first call."""
        with self._cond:
            return self._thread

    def stop(self, timeout: float) -> bool:
        """Drop every call not yet run and end the thread once the running call returns."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    def _on_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def _call(self, share: CallbackShare, fn: Callable[[], None]) -> bool:
        with self._cond:
            if self._closed:
                return False
            mine = [n for n, (s, _) in enumerate(self._queue) if s is share]
            if len(mine) >= self.max_pending:
                del self._queue[mine[0]]
                share.dropped += 1
                logger.warning(
                    "state-change callback is slow: dropped the oldest pending call (%d so far)",
                    share.dropped,
                )
            self._queue.append((share, fn))
            if self._thread is None or not self._thread.is_alive():
                self._thread = _logctx.thread(self._run, self.name)
                self._thread.start()
            self._cond.notify_all()
            return True

    def _drop(self, share: CallbackShare) -> None:
        with self._cond:
            self._queue = collections.deque(item for item in self._queue if item[0] is not share)
            self._cond.notify_all()

    def _quiet(self, share: CallbackShare, timeout: float | None) -> bool:
        """Wait until none of ``share``'s calls is queued or running."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._running is share or any(s is share for s, _ in self._queue):
                if self._closed and self._running is not share:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                self._running = None
                self._cond.notify_all()
                while not (self._queue or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                share, fn = self._queue.popleft()
                self._running = share
            try:
                with _logctx.workspace(share.workspace_id):
                    fn()
            except Exception:  # the user's callback must never end this thread
                logger.exception("state-change callback failed")


class CallbackShare:
    """One workspace's calls on a :class:`CallbackLane`: what a run needs of its callback
    thread, as :class:`Callbacks` offers it."""

    def __init__(self, lane: CallbackLane, name: str, workspace_id: str = "") -> None:
        self._lane = lane
        self.name = name
        self.workspace_id = workspace_id
        self.dropped = 0
        self._closed = False
        self._finishing = False

    @property
    def thread(self) -> threading.Thread | None:
        """None: the lane's thread is not this workspace's to wait for."""
        return None

    def open(self) -> None:
        """Accept calls again (a new run begins)."""
        self._closed = False
        self._finishing = False

    def call(self, fn: Callable[[], None]) -> bool:
        """Queue ``fn`` on the lane; never blocks. False when no call is accepted."""
        if self._closed or self._finishing:
            return False
        return self._lane._call(self, fn)

    def finish(self) -> None:
        """Accept no more calls; those queued still run."""
        self._finishing = True

    def stop(self, timeout: float) -> bool:
        """Drop this workspace's calls not yet run; True once none of its calls is running.
        From the lane's thread (a callback that stops its workspace): True at once."""
        self._closed = True
        self._lane._drop(self)
        return self.join(timeout)

    def join(self, timeout: float | None) -> bool:
        """Wait until this workspace's calls have run (True), or ``timeout`` passes. From
        the lane's thread: True at once, as :meth:`Callbacks.join`."""
        if self._lane._on_thread():
            return True
        if not (self._closed or self._finishing):
            return False  # still accepting calls: not ended (Callbacks' thread would not be)
        return self._lane._quiet(self, timeout)
