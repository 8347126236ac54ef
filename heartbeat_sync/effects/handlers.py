"""The message handlers' pool: the user's ``on_message`` on threads of their own.

A handler is the user's code and may take an hour. It runs on one of ``max_concurrent`` daemon
threads, never on the beat thread or the side-effect thread, so the beats go on whatever it
does. The beat thread asks :meth:`HandlerPool.free` before it reads more messages: while the
pool is full, messages wait on the platform. A handler that raises is logged with its
traceback and counted; the next message is handled as usual.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from .. import _fork, _logctx
from .._logctx import get_logger
from ..delivery import InboundMessage

logger = get_logger(__name__)

#: What the user gives: a message in, an answer out (a string), or None for no answer.
MessageHandler = Callable[[InboundMessage], Optional[str]]
#: Told when a handler has returned (its answer, or None) or raised (``failed``).
Finished = Callable[[InboundMessage, Optional[str], bool], None]


@dataclass(frozen=True)
class PoolCounts:
    """What the pool has done, and is doing, read at one instant."""

    handled: int
    failed: int
    running: int
    #: Seconds the longest-running handler has run, or None when none runs.
    oldest: float | None


class HandlerPool:
    """Runs ``handler`` for each message it is given, at most ``max_concurrent`` at a time.

    Args:
        handler: The user's message handler.
        max_concurrent: Handlers running at once (each on its own daemon thread).
        finished: Called on the handler's thread after each handler returned or raised
            (its answer, whether it failed); an exception in it is logged, never raised.
        name: The threads' name.
        clock: The monotonic clock (for how long a handler has run).
    """

    def __init__(
        self,
        handler: MessageHandler,
        *,
        max_concurrent: int,
        finished: Finished,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self.max_concurrent = max_concurrent
        self._finished = finished
        self.name = name
        self._clock = clock
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[InboundMessage] = collections.deque()
        self._threads: list[threading.Thread] = []
        # thread ident -> (when its handler began, the message's id)
        self._started: dict[int, tuple[float, str]] = {}
        self._closed = False
        self._handled = 0
        self._failed = 0

    def _after_fork_in_child(self) -> None:
        # The child has none of the parent's threads; its messages are the parent's to finish.
        self._init_state()

    def free(self) -> int:
        """How many more messages could start now."""
        with self._cond:
            return max(0, self.max_concurrent - len(self._started) - len(self._queue))

    def running(self) -> int:
        """Handlers running now."""
        with self._cond:
            return len(self._started)

    def running_ids(self) -> frozenset[str]:
        """The ids of the messages whose handlers run now."""
        with self._cond:
            return frozenset(message_id for _, message_id in self._started.values())

    def counts(self) -> PoolCounts:
        """What the pool has done and is doing."""
        with self._cond:
            now = self._clock()
            oldest = min((began for began, _ in self._started.values()), default=None)
            return PoolCounts(
                handled=self._handled,
                failed=self._failed,
                running=len(self._started),
                oldest=None if oldest is None else now - oldest,
            )

    def open(self) -> None:
        """Take messages again (a new run begins)."""
        with self._cond:
            self._closed = False

    def submit(self, message: InboundMessage) -> bool:
        """Start ``message``'s handler as soon as a thread is free. False when the pool is
        stopping (the message then stays claimed: a later run offers it again)."""
        with self._cond:
            if self._closed:
                return False
            self._queue.append(message)
            self._threads = [t for t in self._threads if t.is_alive()]
            wanted = min(self.max_concurrent, len(self._started) + len(self._queue))
            if len(self._threads) < wanted:
                thread = _logctx.thread(self._run, self.name)
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
            return True

    def stop(self, timeout: float) -> bool:
        """Take no more messages and wait up to ``timeout`` for the running handlers to return
        (they cannot be interrupted). True when none runs any more. Messages not yet started
        are left: they stay claimed, and a later run offers them again."""
        deadline = self._clock() + max(0.0, timeout)
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            while self._started:
                remaining = deadline - self._clock()
                if remaining <= 0 or self._on_a_handler_thread():
                    break
                self._cond.wait(remaining)
            return not self._started or (len(self._started) == 1 and self._on_a_handler_thread())

    def threads(self) -> list[threading.Thread]:
        """The pool's threads that are alive."""
        with self._cond:
            return [t for t in self._threads if t.is_alive()]

    def _on_a_handler_thread(self) -> bool:
        return threading.get_ident() in self._started

    def _run(self) -> None:
        me = threading.get_ident()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if not self._cond.wait(60.0) and not self._queue:
                        break  # idle a minute: the thread ends, a later message starts one
                if not self._queue:
                    this = threading.current_thread()
                    self._threads = [t for t in self._threads if t is not this]
                    return
                message = self._queue.popleft()
                self._started[me] = (self._clock(), message.id)
            answer, failed = self._call(message)
            try:
                self._finished(message, answer, failed)
            except Exception:  # the pool must outlive a bug in what follows a handler
                logger.exception("recording the end of message %s's handler failed", message.id)
            with self._cond:
                del self._started[me]
                if failed:
                    self._failed += 1
                else:
                    self._handled += 1
                self._cond.notify_all()

    def _call(self, message: InboundMessage) -> tuple[str | None, bool]:
        try:
            answer = self._handler(message)
        except Exception:
            logger.exception(
                "the message handler raised on message %s (from %s); the next one is handled",
                message.id,
                message.source_id or message.source,
            )
            return None, True
        if answer is not None and not isinstance(answer, str):
            logger.warning(
                "the message handler returned %s for message %s: only a str is an answer",
                type(answer).__name__,
                message.id,
            )
            return None, False
        return answer, False
