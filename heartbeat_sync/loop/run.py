"""One run of a Heartbeat's threads: from ``start_thread()`` to ``stop()`` or the workspace's
removal.

A :class:`Run` owns everything that lives and dies with one run, in one place, as
OpenTelemetry's ``BatchProcessor`` owns its thread: the halt event (set by ``stop()``; a thread
of an earlier run never resumes work), the alarm that is both the beat thread's timed sleep and
its "wake now", the asks for a cycle or a poll and the token buckets that pace them, the slots,
the beat thread's client (so that ``stop()`` can abort a request in flight), the event stream,
the wait for the threads of a previous run that ``stop()`` could not end in time, and the end on
removal. What one cycle does is :class:`~.cycle.Cycle`'s; when to do what is
:func:`~.schedule.next_step`'s (pure).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from typing import Callable, Protocol

from .. import _logctx, _status
from .._logctx import get_logger
from .._status import StreamStatus
from ..wire import ONLINE_EVENT, EventStream, PlatformClient, PlatformError, Stream, StreamFactory
from . import lifecycle as _lifecycle
from . import schedule as _schedule
from . import team as _team
from .cycle import Cycle, Outcome
from .inbound import Inbound
from .schedule import Act, Slots, TokenBucket, next_step

logger = get_logger(__name__)

#: An event's poll due within twice the polls' usual time of the slot is left to the cycle
#: (it polls too), so that the beat is never late for it; never more than this share of the
#: interval, so that a slow platform does not hold the events' polls back for long.
POLL_COST_SHARE = 0.25
#: The weight of the last poll's time in the smoothed figure.
POLL_COST_WEIGHT = 0.3


class EffectsThread(Protocol):
    """What a run needs of its side-effect thread (a ``SideEffectWorker``, or a hub member's
    share of one)."""

    @property
    def thread(self) -> threading.Thread | None: ...

    def start(self) -> None: ...

    def flush(self, timeout: float) -> bool: ...

    def stop(self, timeout: float) -> bool: ...

    def join(self, timeout: float | None) -> bool: ...


class CallbackThread(Protocol):
    """What a run needs of the thread of its state-change callbacks (:class:`Callbacks`, or a
    hub member's share of one)."""

    @property
    def thread(self) -> threading.Thread | None: ...

    def open(self) -> None: ...

    def finish(self) -> None: ...

    def stop(self, timeout: float) -> bool: ...

    def join(self, timeout: float | None) -> bool: ...


class Run:
    """One run of the beat, side-effect, event-stream and callback threads.

    Args:
        workspace_id: The workspace.
        interval: Seconds between beats.
        start_phase: The deprecated first-beat share (None: the workspace's slots).
        draw: A random number in [0, 1) for the first beat's jitter.
        cycle: What the beat thread runs; it shares ``halt``.
        halt: This run's stop signal.
        new_client: Makes a platform client (one per thread).
        worker: The side-effect thread, started as the run begins and stopped with it.
        callbacks: The thread of the state-change callbacks, likewise.
        life: The workspace's lifecycle (an event hints at a change).
        events: Hold the event stream open.
        safety_poll_interval: While the stream is up, poll at least this often (seconds) and
            otherwise only when an event asks; None: every cycle polls.
        registers: The run registers first: the stream waits for the token that may bring.
        request_timeout: Seconds a request may take (the removal's wait for the worker).
        previous: Threads of an earlier run still ending: this run waits for them first.
        inbound: The message handlers' side of the run (None: no ``on_message``); ``stop()``
            gives the running handlers what is left of its time.
        wake: Called when the run has something to do sooner than it said (an ask, a stop):
            None for a run on a beat thread of its own (its alarm); a hub's scheduler else.
        streams: Makes the event stream (None: an :class:`~..wire.EventStream` thread).
        team: Look the team up for its even slots (a hub spreads its members itself).

    The loop's body is :meth:`step`: whoever drives the run (its own beat thread, started by
    :meth:`start`, or a hub's worker, after :meth:`host`) calls it, and calls it again when it
    said, or sooner when ``wake`` is called.
    """

    def __init__(
        self,
        *,
        workspace_id: str,
        interval: float,
        start_phase: float | None,
        draw: float,
        cycle: Cycle,
        halt: threading.Event,
        new_client: Callable[[], PlatformClient],
        worker: EffectsThread,
        callbacks: CallbackThread,
        life: _lifecycle.Lifecycle,
        events: bool,
        registers: bool,
        safety_poll_interval: float | None = None,
        request_timeout: float,
        previous: Sequence[threading.Thread] = (),
        inbound: Inbound | None = None,
        wake: Callable[[], None] | None = None,
        streams: StreamFactory | None = None,
        team: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.workspace_id = workspace_id
        self.interval = interval
        self.cycle = cycle
        self.halt = halt
        self._new_client = new_client
        self._worker = worker
        self._callbacks = callbacks
        self._life = life
        self._events_wanted = events
        self._safety = safety_poll_interval
        # When the polls last ran (monotonic; -inf: never this run).
        self._polled_at = -math.inf
        self._registers = registers
        self._request_timeout = request_timeout
        self._previous = list(previous)
        self._inbound = inbound
        self._clock = clock
        self._wall_clock = wall_clock
        # The beat thread's alarm: one Event is both its timed sleep and "wake now". The asks
        # are flags read at the top of the loop, so one raised while a cycle runs is not lost.
        self._alarm = threading.Event()
        self._wake = self._alarm.set if wake is None else wake
        self._streams: StreamFactory = EventStream if streams is None else streams
        self._cycle_asked = False
        self._poll_asked = False
        self._forced = TokenBucket(_schedule.FORCED_BURST, _schedule.FORCED_RATE)
        self._pacer = TokenBucket(_schedule.POLL_BURST, _schedule.POLL_RATE)
        self._poll_cost = 0.0  # seconds the event's polls take, smoothed
        self._slots = Slots(interval, workspace_id, start_phase, draw, clock(), wall_clock())
        # Lookups of the team left to try; none with the deprecated start_phase.
        self._team_tries = _team.MAX_TRIES if start_phase is None and team else 0
        self._phase: float | None = None  # a phase given by a hub, not yet followed
        self._lock = threading.Lock()
        self._begun = False
        self._hosted = False
        self._client: PlatformClient | None = None
        self._events: Stream | None = None
        self._thread: threading.Thread | None = None
        # The steps: the look at the start done; in the rate limit's budget; ended.
        self._started = False
        self._joined = False
        self._polls_from = -math.inf  # the last step's word from the rate limit
        self._closed = False
        self._ended = threading.Event()
        self._local = threading.local()

    # --- from any thread ------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Start the run's threads (once) and return the beat thread. After a slow stop, the
        beat thread starts the others once the previous run's threads have ended."""
        if not self._previous:
            self._begin()  # every thread runs when start_thread() returns
        thread = _logctx.thread(self._main, f"heartbeat-sync-{self.workspace_id[:8]}")
        self._thread = thread
        thread.start()
        return thread

    def host(self) -> bool:
        """Begin the run without a beat thread of its own: its driver calls :meth:`step`.
        False if it was stopped first."""
        self._hosted = True
        return self._begin()

    def move_to(self, phase: float) -> None:
        """Follow the slots of ``phase`` (a share of the interval) from the next step on."""
        self._phase = phase
        self._wake()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _stepping(self) -> bool:
        """True on the thread doing this run's step (a hub's driver, within :meth:`step`)."""
        return getattr(self._local, "stepping", False)

    def _alive(self) -> bool:
        thread = self._thread
        if thread is not None:
            return thread.is_alive()
        return self._hosted and not self._ended.is_set()

    def ask_cycle(self) -> None:
        """Ask for a cycle soon (``beat_now()``, a new ``current_task``)."""
        self._cycle_asked = True
        self._wake()

    def ask_poll(self) -> None:
        """Ask for the polls soon, without a beat (the event stream). Its own flag, so that it
        is never merged into (or held back with) an asked-for cycle."""
        self._poll_asked = True
        self._wake()

    def working(self) -> bool:
        """True while the run's beat thread lives (or its driver steps it) and ``stop()`` was
        not called."""
        return self._alive() and not self.halt.is_set()

    def state(self) -> tuple[bool, str | None]:
        """Whether the beat thread is alive, and ``stopped`` or ``starting`` when that is the
        state whatever the counters say (None: the run is working)."""
        running = self._alive()
        if not running or self.halt.is_set():
            return running, _status.STOPPED
        with self._lock:
            begun = self._begun
        return running, None if begun else _status.STARTING

    def threads(self) -> list[threading.Thread]:
        """The run's threads that are still alive (the next run waits for them)."""
        with self._lock:
            events = self._events
        candidates = [
            self._thread,
            self._worker.thread,
            self._callbacks.thread,
            events.thread if events is not None else None,
        ]
        return [t for t in candidates if t is not None and t.is_alive()]

    def stream_status(self) -> StreamStatus | None:
        """The event stream's counters (None: the run holds no stream)."""
        with self._lock:
            events = self._events
        return None if events is None else events.status()

    def stop(self, timeout: float) -> bool:
        """Stop the run's threads; True if all ended within ``timeout`` (see
        ``Heartbeat.stop``). From a state-change callback, its own thread counts as ended:
        it ends when the callback returns."""
        deadline = time.monotonic() + max(0.0, timeout)
        events = self.interrupt()
        beat_done = True
        thread = self._thread
        if thread is not None:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
            beat_done = not thread.is_alive()
        elif self._hosted and not self._stepping():
            # The driver ends the run at its next step (the interrupt woke it): wait for that.
            beat_done = self._ended.wait(max(0.0, deadline - time.monotonic()))
        inbound = self._inbound
        handlers_done = True
        if inbound is not None:
            # No message starts any more; the running handlers get what is left of the time,
            # then their answers go out (within it too) before the side-effect thread ends.
            handlers_done = inbound.stop(max(0.0, deadline - time.monotonic()))
            self._worker.flush(max(0.0, deadline - time.monotonic()))
        worker_done = self._worker.stop(max(0.0, deadline - time.monotonic()))
        events_done = events is None or events.stop(max(0.0, deadline - time.monotonic()))
        callbacks_done = self._callbacks.stop(max(0.0, deadline - time.monotonic()))
        return beat_done and worker_done and events_done and callbacks_done and handlers_done

    def interrupt(self) -> Stream | None:
        """Halt the run at once and return: no step begins any more, a request in flight is
        aborted, the event stream asked to end (returned, for the caller to wait for)."""
        with self._lock:
            self.halt.set()
            client = self._client
            events = self._events
        self._wake()
        if client is not None:
            client.abort()
        if events is not None:
            events.request_stop()
        return events

    def wait(self, timeout: float | None) -> bool:
        """Wait for the run to end with its threads (see ``Heartbeat.wait``)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        if not self._ended.wait(timeout):
            return False
        # The event is set in the beat thread's last lines: join it, so that a caller who
        # sees True never sees it running.
        beat = self._thread
        if beat is not None and beat is not threading.current_thread():
            beat.join(remaining())
            if beat.is_alive():
                return False
        if not self._worker.join(remaining()):
            return False
        with self._lock:
            events = self._events  # already asked to end, by stop() or by the removal
        left = remaining()
        if events is not None and not events.stop(1e9 if left is None else left):
            return False
        # The last state change (``removed``) is delivered before wait() returns.
        return self._callbacks.join(remaining())

    # --- the beat thread ------------------------------------------------------------------

    def _main(self) -> None:
        try:
            if self._previous and not (self._await_previous() and self._begin()):
                return
            while True:
                at = self.step()
                if at is None:
                    return
                self._sleep(at - self._clock())
        finally:
            self.close()

    def _await_previous(self) -> bool:
        """Wait for the threads of a run that stop() could not end in time. False if halted."""
        logger.warning("the threads of the previous run are still ending; starting after them")
        for old in self._previous:
            while old.is_alive():
                old.join(0.05)  # short joins: stop() ends this wait promptly
                if self.halt.is_set():
                    return False
        logger.info("the previous run has ended; starting")
        return True

    def _begin(self) -> bool:
        # Under the lock that stop() takes too: a run never begins after a stop.
        with self._lock:
            if self.halt.is_set():
                return False
            self._begun = True
            self._worker.start()
            self._callbacks.open()
            if not self._registers:
                self._start_events()  # else once the registration is settled
            return True

    def _start_events(self) -> None:
        # Caller holds self._lock.
        if not self._events_wanted or self.halt.is_set():
            return
        if self._events is not None and self._events.running:
            return
        self._events = self._streams(
            self._new_client,
            self.workspace_id,
            self.ask_poll,
            # The platform sends an event for every beat: a stream silent for a few
            # intervals is likely a dead connection.
            idle_timeout=max(3 * self.interval, 60.0),
            draw=random.SystemRandom().random,
            on_state=self._state_announced,
            on_connect=self._stream_opened,
            canvas=self._inbound is not None,
            name=f"heartbeat-sync-events-{self.workspace_id[:8]}",
        )
        self._events.start()

    def _state_announced(self, kind: str) -> None:
        # From the event stream's thread: the platform says the workspace was paused,
        # hibernated, removed or is online again. Check its state now rather than at the next
        # state check: in a poll step while active (no beat to a workspace that may be
        # paused), in a cycle while paused (which checks before it beats).
        active = self._life.kind == _lifecycle.ACTIVE
        if active and kind == ONLINE_EVENT:
            return  # online already: a registration or a beat's recovery, nothing to learn
        self._life.hint()
        if active:
            self.ask_poll()
        else:
            self.ask_cycle()

    def _stream_opened(self, connects: int) -> None:
        # From the event stream's thread: events sent while no stream was open are lost (the
        # first connection's too: the run began before it), so the polls run now, and the
        # state is checked with them: a change announced meanwhile was missed.
        self._life.hint()
        self.ask_poll()

    def _stream_up(self) -> bool:
        """Whether the event stream is open and read (it then tells of results and state
        changes: the polls need not run every cycle)."""
        with self._lock:
            events = self._events
        return events is not None and events.status().connected

    def _cycle_polls(self, now: float) -> tuple[bool, bool]:
        """Whether this cycle polls, and whether its state check may be periodic: every cycle
        while the stream is down; with it up, when the safety interval has passed or the last
        polls left something behind."""
        if self._safety is None or not self._stream_up():
            return True, True
        return self.cycle.polls_owed() or now - self._polled_at >= self._safety, False

    def handler_finished(self) -> None:
        """A message handler returned: if messages wait on the platform for a free one, the
        polls run now."""
        inbound = self._inbound
        if inbound is not None and inbound.waiting and not self.halt.is_set():
            self.ask_poll()

    def _sleep(self, seconds: float) -> None:
        self._alarm.wait(seconds)
        self._alarm.clear()

    # --- the steps (on the beat thread, or a hub's worker: one at a time) -----------------

    def step(self) -> float | None:
        """Do what is due now, if anything (one step: a registration, the polls, a cycle, or
        the look at the workspace's state that begins the run); return when (monotonic) the
        run next has something to do, or None once it has ended (stopped, or the workspace
        removed; the run's end on removal is done). A ``wake`` may come sooner: call again."""
        self._local.stepping = True
        try:
            return self._step()
        finally:
            self._local.stepping = False

    def _step(self) -> float | None:
        if self.halt.is_set():
            return None
        with self._lock:
            client = self._client
            if client is None:
                client = self._client = self._new_client()
        if not self._started:
            self._started = True
            if self._first(client) is Outcome.REMOVED:
                self._end_on_removal()
                return None
            return self._clock()
        phase, self._phase = self._phase, None
        if phase is not None:
            self._team_tries = 0
            self._slots.move_to(phase, self._clock(), self._wall_clock())
        now = self._clock()
        step = self._next(client, now)
        if step.act is not Act.WAIT:
            if self._act(client, step, now) is Outcome.REMOVED:
                self._end_on_removal()
                return None
            if self.halt.is_set():
                return None
            now = self._clock()
            step = self._next(client, now)
        return step.until if step.act is Act.WAIT else now

    def close(self) -> None:
        """The run is over: out of the rate limit's budget, its client closed, and ended (what
        :meth:`wait` waits for). Called by the driver once :meth:`step` returned None, or when
        it stops stepping; more calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client = self._client
            joined, self._joined = self._joined, False
        try:
            if client is not None:
                if joined:
                    client.budget().leave(id(self))
                client.close()
        finally:
            self._ended.set()

    def _first(self, client: PlatformClient) -> Outcome:
        """The run begins with a look at the workspace's state."""
        cycle = self.cycle
        if cycle.check_at_start(client) is Outcome.REMOVED:
            return Outcome.REMOVED
        if self._registers and not cycle.registration_owed():
            with self._lock:
                self._start_events()  # the look at the start found no registration owed
        client.budget().join(id(self), self.interval)
        with self._lock:
            self._joined = True
        return Outcome.POLLED

    def _next(self, client: PlatformClient, now: float) -> _schedule.Step:
        cycle = self.cycle
        budget = client.budget()  # the key may change with the token
        self._polls_from = polls_from = budget.polls_from()
        return next_step(
            now,
            self._slots.next_at,
            beat_asked=self._cycle_asked,
            poll_asked=self._poll_asked,
            forced=self._forced,
            pacer=self._pacer,
            register_at=cycle.registration_due(),
            poll_cost=min(2.0 * self._poll_cost, POLL_COST_SHARE * self.interval),
            held_until=budget.held_until(),
            polls_from=polls_from,
        )

    def _act(self, client: PlatformClient, step: _schedule.Step, now: float) -> Outcome | None:
        """Do ``step`` (not a wait); what came of it (None: a registration attempt)."""
        cycle = self.cycle
        if step.act is Act.REGISTER:
            if cycle.register(client):
                with self._lock:
                    self._start_events()  # with the token the registration may bring
            return None
        if step.act is Act.POLL:
            self._poll_asked = False  # an event during the polls asks again
            self._pacer.take(now)
            outcome = cycle.poll(client, periodic=not self._stream_up())
            self._polled_at = now
            # How long polls take, smoothed: one due to end after the slot waits for it.
            took = self._clock() - now
            self._poll_cost += POLL_COST_WEIGHT * (took - self._poll_cost)
            return outcome
        self._cycle_asked = False
        if step.forced:
            self._forced.take(now)  # an extra cycle, not the regular slot
        polls, periodic = self._cycle_polls(now)
        # beat_now() asks for a whole cycle, the polls too; an event's poll left to this
        # cycle (it came just before the slot) is done by it.
        polls = polls or step.forced or self._poll_asked
        if polls and now < self._polls_from:
            polls = False  # the rate limit runs low: the beat alone, the polls after
            self._poll_asked = True
        elif polls:
            self._poll_asked = False  # an event during the cycle asks again
        outcome = cycle.run(client, polls=polls, periodic=periodic)
        if polls:
            self._polled_at = now
        if outcome is Outcome.BEAT_OK and self._team_tries:
            self._find_team(client)
        if outcome is not Outcome.REMOVED:
            self._slots.after_cycle(self._clock())
        return outcome

    def _find_team(self, client: PlatformClient) -> None:
        """Move to the team's evenly spread slots once the platform has told the team."""
        self._team_tries -= 1
        try:
            phase = _team.find_phase(client)
        except PlatformError as exc:
            logger.debug("team lookup failed, tried again after a later beat: %s", exc)
            return
        except Exception:  # a bug must not end the beat thread; the hashed phase stays
            logger.exception("team lookup failed")
            phase = None
        self._team_tries = 0
        if phase is not None:
            self._slots.move_to(phase, self._clock(), self._wall_clock())

    def _end_on_removal(self) -> None:
        with self._lock:
            events = self._events
        if events is not None:
            events.request_stop()  # the platform answers a removed workspace's stream 401
        # Nothing more is sent: a wake-up in flight is cut short, pending side effects are
        # dropped. The state-change callback (queued by the cycle) still runs, on its own
        # thread, and that thread ends after it.
        self._callbacks.finish()
        if self._inbound is not None:
            self._inbound.stop(0.0)  # no more messages start; the running ones finish alone
        self._worker.stop(max(1.0, self._request_timeout))
