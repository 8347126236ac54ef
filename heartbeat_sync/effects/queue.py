"""A daemon thread over a bounded queue, handed the work it does; nothing of the platform in it.

Shaped after sentry-python's background worker: :meth:`QueueWorker.submit` never blocks and
reports a drop, :meth:`QueueWorker.flush` waits on a condition to a deadline,
:meth:`QueueWorker.stop` is bounded, and a forked child starts afresh. What the work is comes in
by composition: the worker is handed a factory of a :class:`Work` (the side effects of
:mod:`.sender`), made anew with the worker's condition and stop signal in every process.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Callable, Generic, Protocol, TypeVar

from .. import _fork, _logctx
from .._logctx import get_logger
from .policy import DROP_QUEUE_FULL, DROP_STOPPED

logger = get_logger(__name__)

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
W = TypeVar("W", bound="Work[Any]")
R = TypeVar("R")


class Work(Protocol[T_contra]):
    """What a :class:`QueueWorker` does with its items.

    ``accept``, ``rejected``, ``held``, ``due_in``, ``discard`` and ``describe`` are called
    with the worker's condition held and must not block; ``open``, ``step`` and ``close`` run on
    the worker thread without it (``step`` takes the condition itself when it reads or
    changes what is held); ``interrupt`` runs on the thread calling :meth:`QueueWorker.stop`.
    """

    def accept(self, item: T_contra) -> None:
        """Take a queued item into the work held."""

    def rejected(self, item: T_contra, reason: str) -> None:
        """``item`` will never be worked on: :data:`DROP_QUEUE_FULL` or :data:`DROP_STOPPED`."""

    def held(self) -> int:
        """Pieces of work taken from the queue and not yet done."""

    def due_in(self) -> float | None:
        """Seconds until held work is due (0 or less: now); None when nothing is held."""

    def discard(self) -> None:
        """Drop all held work: the worker is ending."""

    def describe(self, queued: int, busy: bool) -> str:
        """What is left to do, in words, with ``queued`` items not yet accepted."""

    def open(self) -> None:
        """Called first on the worker thread."""

    def step(self) -> None:
        """Do one piece of due work."""

    def close(self) -> None:
        """Called last on the worker thread."""

    def interrupt(self) -> None:
        """Cut short the step in flight: the worker is stopping."""


class QueueWorker(Generic[T, W]):
    """A daemon thread that works through a bounded queue with the :class:`Work` it is handed.

    Args:
        make_work: Makes the work, given the worker's condition (the lock that guards what
            is queued and held) and its stop signal; called again in a forked child, so that
            nothing of the parent's work is repeated there.
        max_queue: Items queued before :meth:`submit` refuses.
        name: The thread's name.
        pump: Do the steps on this :class:`Pump`'s shared threads instead of a thread of the
            worker's own (a hub of many workspaces); None: a thread of its own.
    """

    def __init__(
        self,
        make_work: Callable[[threading.Condition, threading.Event], W],
        *,
        max_queue: int,
        name: str,
        pump: Pump | None = None,
    ) -> None:
        self._make_work = make_work
        self.max_queue = max_queue
        self.name = name
        self._pump = pump
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = threading.Event()
        self._queue: collections.deque[T] = collections.deque()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._work = self._make_work(self._cond, self._stopping)
        # On a pump: attached (started, not yet ended), opened, and ended.
        self._attached = False
        self._opened = False
        self._ended = threading.Event()

    def _after_fork_in_child(self) -> None:
        # The child has no worker thread, and the parent's locks may have been held at fork.
        self._init_state()

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            self._after_fork_in_child()

    # --- the callers' side ----------------------------------------------------------------

    @property
    def thread(self) -> threading.Thread | None:
        """The worker's thread, alive or not; None before the first start, and always on a
        pump (whose threads are not this worker's: :meth:`join` waits for its end)."""
        with self._cond:
            return self._thread

    def _alive(self) -> bool:
        # Caller holds the lock. Steps are still done: by the thread, or by the pump.
        if self._pump is not None:
            return self._attached
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once; again in a forked child, lazily).

        Raises RuntimeError when the thread of an earlier run is still ending: a new thread
        beside it would share its queue.
        """
        self._check_pid()
        pump = self._pump
        with self._cond:
            if self._alive():
                if self._stopping.is_set():
                    raise RuntimeError(f"{self.name} of the previous run is still ending")
                return
            self._stopping.clear()
            if pump is None:
                self._thread = _logctx.thread(self._run, self.name)
                self._thread.start()
                return
            self._attached = True
            self._opened = False
            self._ended.clear()
        pump.attach(self)  # outside our lock: the pump's lock is never taken inside it

    def submit(self, item: T) -> bool:
        """Queue ``item``. Never blocks; False when it was refused (queue full, or stopped)."""
        self._check_pid()
        with self._cond:
            started = self._attached if self._pump is not None else self._thread is not None
            if self._stopping.is_set() or not started:
                self._work.rejected(item, DROP_STOPPED)
                return False
            if len(self._queue) >= self.max_queue:
                self._work.rejected(item, DROP_QUEUE_FULL)
                return False
            self._queue.append(item)
            self._cond.notify_all()  # the worker, and any flush() waiting on the same condition
        if self._pump is not None:
            self._pump.poke()
        return True

    def inspect(self, read: Callable[[W, int, bool], R]) -> R:
        """``read(work, queued, busy)`` under the worker's condition: a consistent view of the
        work and of the items not yet accepted."""
        self._check_pid()
        with self._cond:
            return read(self._work, len(self._queue), self._busy)

    def pending_summary(self) -> str:
        """What the worker still has to do, in words (for the exit hook's log line)."""
        return self.inspect(lambda work, queued, busy: work.describe(queued, busy))

    def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for the thread to end; True if so."""
        if self._pump is not None:
            with self._cond:
                attached = self._attached
            if not attached:
                return True
            if self._pump.on_its_thread():
                return False  # a step of this pump cannot wait for the pump
            return self._ended.wait(timeout)
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
        return not (self._queue or self._busy or self._work.held())

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been done, or ``timeout`` passes. True if idle.

        Held work that is not due within ``timeout`` counts as not done: when it is all that is
        left, this returns False at once instead of waiting for nothing.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._idle():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._alive():
                    return False
                if not (self._queue or self._busy):
                    due = self._work.due_in()
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
            self._stopping.set()
            thread = self._thread
            busy = self._busy
            self._cond.notify_all()
        if busy:
            self._work.interrupt()
        if self._pump is not None:
            self._pump.poke()  # its next step for this worker ends it
            return self.join(max(0.0, timeout))
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        return not thread.is_alive()

    # --- the worker thread ----------------------------------------------------------------

    def _ready(self) -> bool:
        if self._stopping.is_set() or self._queue:
            return True
        due = self._work.due_in()
        return due is not None and due <= 0

    def _pump_due(self) -> float | None:
        """For the pump: seconds until this worker has a step to do (0: now; None: nothing
        held or queued). Never blocks for long: only the worker's own lock."""
        with self._cond:
            if not self._attached:
                return None
            if self._stopping.is_set() or self._queue or not self._opened:
                return 0.0
            return self._work.due_in()

    def _pump_step(self) -> bool:
        """For the pump, on one of its threads: one pass of the worker's loop, if anything is
        due. False once the worker has ended (the pump forgets it)."""
        work = self._work
        with self._cond:
            if not self._attached:
                return False
            opening = not self._opened
            self._opened = True
        try:
            if opening:
                work.open()
            with self._cond:
                if self._stopping.is_set():
                    self._discard_all()
                    ending = True
                elif self._ready():
                    while self._queue:
                        work.accept(self._queue.popleft())
                    self._busy = True
                    ending = False
                else:
                    return True
            if not ending:
                try:
                    work.step()
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
                return True
        except Exception:  # a step's bug must not end the pump's thread: as _run does
            logger.exception("%s: a step failed", self.name)
            return True
        try:
            work.close()
        finally:
            with self._cond:
                self._attached = False
                self._cond.notify_all()
            self._ended.set()
        return False

    def _run(self) -> None:
        work = self._work
        work.open()
        try:
            while True:
                with self._cond:
                    while not self._ready():
                        self._cond.wait(work.due_in())
                    if self._stopping.is_set():
                        self._discard_all()
                        return
                    while self._queue:
                        work.accept(self._queue.popleft())
                    self._busy = True
                try:
                    work.step()
                except Exception:  # the worker must outlive any bug in one step
                    logger.exception("%s: a step failed", self.name)
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            work.close()

    def _discard_all(self) -> None:
        # Caller holds the lock.
        for item in self._queue:
            self._work.rejected(item, DROP_STOPPED)
        self._queue.clear()
        self._work.discard()
        self._cond.notify_all()


class Pump:
    """A few daemon threads that do the steps of many :class:`QueueWorker` s (a hub's
    workspaces), so that N workspaces' side effects cost these threads, not N.

    A worker made with ``pump=`` attaches itself when started and leaves when it has ended.
    One worker's steps are never done by two threads at once, and they keep their order; the
    workers take turns, so a busy one does not starve the others. A step that waits on a slow
    agent (a wake-up may take ``self_message_timeout``) occupies one thread meanwhile: the
    other threads go on with the other workers.
    """

    def __init__(self, threads: int = 2, *, name: str = "heartbeat-sync-effects") -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        self.threads = threads
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._workers: collections.OrderedDict[int, QueueWorker[Any, Any]] = (
            collections.OrderedDict()
        )
        self._busy: set[int] = set()
        self._running: list[threading.Thread] = []
        self._closed = False
        self._pokes = 0
        self._local = threading.local()

    def start(self) -> None:
        """Start the threads (once)."""
        with self._cond:
            if self._running or self._closed:
                return
            for n in range(self.threads):
                thread = _logctx.thread(self._loop, f"{self.name}-{n}")
                self._running.append(thread)
                thread.start()

    @property
    def thread_list(self) -> list[threading.Thread]:
        """The pump's threads."""
        with self._cond:
            return list(self._running)

    def attach(self, worker: QueueWorker[Any, Any]) -> None:
        """Take ``worker``'s steps from now on (its :meth:`QueueWorker.start` calls this)."""
        with self._cond:
            self._workers[id(worker)] = worker
            self._pokes += 1
            self._cond.notify_all()

    def poke(self) -> None:
        """Something changed for one of the workers (an item, a stop): look again."""
        with self._cond:
            self._pokes += 1
            self._cond.notify_all()

    def on_its_thread(self) -> bool:
        """True on one of the pump's threads."""
        return bool(getattr(self._local, "mine", False))

    def stop(self, timeout: float) -> bool:
        """End the threads (the workers should be stopped first); True if they ended within
        ``timeout``."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._running)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads if t is not threading.current_thread())

    def _pick(self) -> QueueWorker[Any, Any] | None:
        """The next worker with a step due, in turn (caller holds the lock, and waits)."""
        while not self._closed:
            pokes = self._pokes
            soonest: float | None = None
            for key, worker in list(self._workers.items()):
                if key in self._busy:
                    continue
                due = worker._pump_due()
                if due is None:
                    continue
                if due <= 0:
                    self._busy.add(key)
                    self._workers.move_to_end(key)  # the others go first next time
                    return worker
                soonest = due if soonest is None else min(soonest, due)
            if self._pokes == pokes:
                self._cond.wait(soonest)
        return None

    def _loop(self) -> None:
        self._local.mine = True
        while True:
            with self._cond:
                worker = self._pick()
                if worker is None:
                    return
            key = id(worker)
            try:
                alive = worker._pump_step()
            except Exception:  # never end a thread that serves every workspace
                logger.exception("%s: a step failed", self.name)
                alive = True
            with self._cond:
                self._busy.discard(key)
                if not alive:
                    self._workers.pop(key, None)
                self._pokes += 1
                self._cond.notify_all()
