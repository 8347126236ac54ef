"""A few threads that drive many runs: the beat threads of a hub's workspaces, shared.

A lone ``Heartbeat``'s run has a beat thread that loops on :meth:`~.run.Run.step` and sleeps
until the time the step returned. :class:`Drivers` does the same for many runs on a fixed
number of threads: a heap of (when, run), each thread taking the earliest run that is due,
stepping it, and putting it back at the time it said. A run is stepped by one thread at a
time, so its steps keep their order as on a thread of its own; a run whose step waits on a
slow platform holds one thread meanwhile, and the others step the other runs. A run that has
something to do sooner (``beat_now()``, an event's poll, a stop) calls its :class:`Ticket`'s
:meth:`~Ticket.wake`.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Callable, Protocol

from .. import _logctx
from .._logctx import get_logger

logger = get_logger(__name__)


class Steppable(Protocol):
    """What a driver needs of a run (:class:`~.run.Run` is one)."""

    workspace_id: str

    def step(self) -> float | None:
        """Do what is due; when (monotonic) to call again, or None once the run has ended."""

    def close(self) -> None:
        """The driver will not step the run again."""


class Ticket:
    """A run's place in :class:`Drivers`: :meth:`wake` asks for a step now. Made before the
    run (whose constructor takes the wake), then given with it to :meth:`Drivers.add`."""

    __slots__ = ("_drivers", "_run", "_woken", "at", "gone", "stepping")

    def __init__(self, drivers: Drivers) -> None:
        self._drivers = drivers
        self._run: Steppable | None = None
        self._woken = False
        #: When the run is next due (monotonic); inf while it is being stepped.
        self.at = 0.0
        self.stepping = False
        self.gone = False

    def wake(self) -> None:
        """Step the run as soon as a thread is free (from any thread; never blocks long)."""
        self._drivers._wake(self)


class Drivers:
    """``threads`` daemon threads stepping every run added, each when it is due."""

    def __init__(
        self,
        threads: int = 2,
        *,
        name: str = "heartbeat-sync-beats",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        self.threads = threads
        self.name = name
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Ticket]] = []
        self._order = itertools.count()
        self._running: list[threading.Thread] = []
        self._closed = False

    def ticket(self) -> Ticket:
        """A place for a run about to be made."""
        return Ticket(self)

    def add(self, run: Steppable, ticket: Ticket) -> None:
        """Step ``run`` from now on (its first step at once)."""
        with self._cond:
            ticket._run = run
            ticket.at = self._clock()
            heapq.heappush(self._heap, (ticket.at, next(self._order), ticket))
            self._cond.notify()

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
        """The drivers' threads."""
        with self._cond:
            return list(self._running)

    def stop(self, timeout: float) -> bool:
        """End the threads once their steps in flight return (the runs should be halted
        first, which cuts their requests short); True if they ended within ``timeout``. The
        runs not stepped again are closed."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._running)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        done = not any(t.is_alive() for t in threads if t is not threading.current_thread())
        with self._cond:
            left = {id(t): t for _, _, t in self._heap if not t.stepping and not t.gone}
            self._heap.clear()
        for ticket in left.values():
            self._close(ticket)
        return done

    def _wake(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.gone:
                return
            if ticket.stepping or ticket._run is None:
                ticket._woken = True  # stepped again as soon as its step returns
                return
            now = self._clock()
            if ticket.at > now:
                # Moved sooner: the old entry stays in the heap and is skipped when its time
                # comes (its ``at`` no longer matches).
                ticket.at = now
                heapq.heappush(self._heap, (now, next(self._order), ticket))
                self._cond.notify()

    def _take(self) -> Ticket | None:
        """The next due run, waited for (caller holds the lock); None once closed."""
        while not self._closed:
            while self._heap:
                at, _, ticket = self._heap[0]
                if ticket.gone or ticket.stepping or at != ticket.at:
                    heapq.heappop(self._heap)  # stale: moved, taken, or ended
                    continue
                break
            if not self._heap:
                self._cond.wait()
                continue
            wait = self._heap[0][0] - self._clock()
            if wait > 0:
                self._cond.wait(wait)
                continue
            _, _, ticket = heapq.heappop(self._heap)
            ticket.stepping = True
            ticket._woken = False
            return ticket
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                ticket = self._take()
            if ticket is None:
                return
            run = ticket._run
            assert run is not None
            try:
                with _logctx.workspace(run.workspace_id):
                    at = run.step()
            except Exception:  # a bug in one run must not end a thread that drives them all
                logger.exception("a step failed; the run is tried again in a second")
                at = self._clock() + 1.0
            with self._cond:
                ticket.stepping = False
                ended = at is None or self._closed
                if at is not None and not ended:
                    if ticket._woken:
                        at = min(at, self._clock())
                    ticket.at = at
                    heapq.heappush(self._heap, (at, next(self._order), ticket))
                    self._cond.notify()
            if ended:
                self._close(ticket)

    def _close(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.gone and ticket._run is None:
                return
            ticket.gone = True
            run, ticket._run = ticket._run, None
        if run is None:
            return
        try:
            run.close()
        except Exception:
            logger.exception("closing a run failed")
