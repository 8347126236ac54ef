"""The threads of one Heartbeat, run after run: start, stop to a deadline, and a restart that
waits for the threads a slow stop left behind.

Each run has its own ``halt`` event, so a thread of an earlier run never resumes work; the
beat thread's client is kept so that ``stop()`` can abort a request in flight.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable

from . import _lifecycle, _status
from ._client import PlatformClient
from ._cycle import Cycle, Outcome
from ._events import EventStream
from ._parts import Parts
from ._runloop import RunLoop
from ._sse import ONLINE_EVENT

logger = logging.getLogger("heartbeat_sync")


class Runs:
    """Starts and stops the beat, side-effect and event-stream threads of one Heartbeat.

    Args:
        parts: What the Heartbeat's beat thread shares; its lock guards which run is
            current, its side-effect worker is started with each run, and a removed
            workspace is not started again.
        cycle: What the beat thread runs.
        new_client: Makes a platform client (one per thread).
    """

    def __init__(
        self, parts: Parts, cycle: Cycle, new_client: Callable[[], PlatformClient]
    ) -> None:
        self._parts = parts
        self._lock = parts.lock  # the Heartbeat's: guards which run is current
        self._cycle = cycle
        self._new_client = new_client
        # Set by stop(); one per run, so that a thread of an earlier run never resumes.
        self._halt = threading.Event()
        self._halt.set()
        #: True from stop() until the next run begins: requests it interrupts are no failures.
        self.stopping = False
        self._thread: threading.Thread | None = None
        self._beat_client: PlatformClient | None = None
        #: The event stream of the current (or last) run, if any.
        self.events: EventStream | None = None
        self._ended = threading.Event()
        self._ended.set()  # nothing runs yet

    def start(self) -> threading.Thread:
        """Start a run unless one is running (see ``Heartbeat.start_thread``)."""
        settings = self._parts.settings
        name = settings.workspace_id[:8]
        with self._lock:
            current = self._thread
            if current is not None and current.is_alive() and not self._halt.is_set():
                return current
            if self._parts.life.kind == _lifecycle.REMOVED and current is not None:
                logger.error(
                    "workspace %s was removed from the platform; not starting again",
                    settings.workspace_id,
                )
                return current
            previous = [
                t for t in (current, self._parts.worker.thread) if t is not None and t.is_alive()
            ]
            halt = threading.Event()
            self._halt = halt
            ended = threading.Event()
            self._ended = ended
            self.stopping = True  # until the new run begins (the old threads see it too)
            if not previous:
                self._begin_run()
            thread = threading.Thread(
                target=self._run,
                args=(halt, ended, previous),
                name=f"heartbeat-sync-{name}",
                daemon=True,
            )
            self._thread = thread
            thread.start()
        return thread

    def stop(self, timeout: float) -> bool:
        """Stop the threads; True if all ended within ``timeout`` (see ``Heartbeat.stop``)."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self.stopping = True
            self._halt.set()
            thread = self._thread
            client = self._beat_client
            events = self.events
        self._parts.wakeups.event.set()
        if client is not None:
            client.abort()
        if events is not None:
            events.request_stop()
        beat_done = True
        if thread is not None:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
            beat_done = not thread.is_alive()
        worker_done = self._parts.worker.stop(max(0.0, deadline - time.monotonic()))
        events_done = events is None or events.stop(max(0.0, deadline - time.monotonic()))
        return beat_done and worker_done and events_done

    def wait(self, timeout: float | None) -> bool:
        """Wait for the run to end and the side-effect thread with it (see ``Heartbeat.wait``)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if not self._ended.wait(timeout):
            return False
        # The event is set in the beat thread's last lines: join it, so that a caller who
        # sees True never sees it running.
        with self._lock:
            beat = self._thread
        if beat is not None and beat is not threading.current_thread():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            beat.join(remaining)
            if beat.is_alive():
                return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._parts.worker.join(remaining):
            return False
        events = self.events  # already asked to end, by stop() or by the removal
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return events is None or events.stop(1e9 if remaining is None else remaining)

    def state(self) -> tuple[bool, str | None]:
        """Whether the beat thread is alive, and ``stopped`` or ``starting`` when that is the
        state whatever the counters say (None: a run is working)."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if not running or self._halt.is_set():
                return running, _status.STOPPED
            if self.stopping:
                return running, _status.STARTING  # waiting for the threads of the previous run
            return running, None

    # --- the beat thread ------------------------------------------------------------------

    def _begin_run(self) -> None:
        # Caller holds self._lock (stop() takes it too: a run never begins after a stop).
        self.stopping = False
        self._parts.wakeups.event.clear()
        self._parts.worker.start()
        if self._parts.settings.registration is None:
            self._start_events()  # else the beat thread does, once registered

    def _start_events(self) -> None:
        # Caller holds self._lock. The stream needs the token a registration may bring.
        settings = self._parts.settings
        if not settings.events or self.stopping or self._halt.is_set():
            return
        self.events = EventStream(
            self._new_client,
            settings.workspace_id,
            self._parts.wakeups.ask_poll,
            # The platform sends an event for every beat: a stream silent for a few
            # intervals is likely a dead connection.
            idle_timeout=max(3 * settings.interval_seconds, 60.0),
            draw=random.SystemRandom().random,
            on_state=self._state_announced,
            name=f"heartbeat-sync-events-{settings.workspace_id[:8]}",
        )
        self.events.start()

    def _state_announced(self, kind: str) -> None:
        # From the event stream's thread: the platform says the workspace was paused,
        # hibernated, removed or is online again. Check its state now rather than at the next
        # state check: in a poll step while active (no beat to a workspace that may be
        # paused), in a cycle while paused (which checks before it beats).
        active = self._parts.life.kind == _lifecycle.ACTIVE
        if active and kind == ONLINE_EVENT:
            return  # online already: a registration or a beat's recovery, nothing to learn
        self._parts.life.hint()
        if active:
            self._parts.wakeups.ask_poll()
        else:
            self._parts.wakeups.ask_beat()

    def _await_previous(self, halt: threading.Event, previous: list[threading.Thread]) -> bool:
        """Wait for the threads of a run that stop() could not end in time. False if halted."""
        logger.warning("the threads of the previous run are still ending; starting after them")
        for old in previous:
            while old.is_alive():
                old.join(0.05)  # short joins: stop() ends this wait promptly
                if halt.is_set():
                    return False
        with self._lock:
            if halt.is_set():
                return False
            self._begin_run()
        logger.info("the previous run has ended; starting")
        return True

    def _run(
        self, halt: threading.Event, ended: threading.Event, previous: list[threading.Thread]
    ) -> None:
        try:
            if previous and not self._await_previous(halt, previous):
                return
            self._run_beats(halt)
        finally:
            ended.set()

    def _run_beats(self, halt: threading.Event) -> None:
        client = self._new_client()
        with self._lock:
            self._beat_client = client
        settings = self._parts.settings
        loop = RunLoop(self._cycle, self._parts, stopped=lambda: self.stopping or halt.is_set())
        try:
            if settings.registration is not None:
                self._cycle.register(client)
                with self._lock:
                    self._start_events()
            if loop.run(client) is Outcome.REMOVED:
                events = self.events
                if events is not None:
                    events.request_stop()  # the platform answers a removed workspace's stream 401
                # The state-change callback (queued by the cycle) runs first; nothing else
                # is sent.
                self._parts.worker.finish()
                self._parts.worker.join(max(1.0, settings.request_timeout))
        finally:
            client.close()
