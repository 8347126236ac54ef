"""The public Heartbeat: a workspace's heartbeat loop on threads."""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import threading
import time
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Protocol

from . import (
    _coalesce,
    _fork,
    _lifecycle,
    _messages,
    _metadata,
    _schedule,
    _status,
    _validate,
    _wedge,
)
from ._activity import ActivityPager, row_ids
from ._auth import ORG_ID_ENV, TOKEN_ENV, Credentials, origin_header, resolve_configs_dir
from ._client import CursorGone, PlatformClient, PlatformError
from ._events import EVENTS_ENV, EventStream, events_enabled
from ._files import DEFAULT_RESULTS_FILE, RESULTS_FILE_ENV, IdLog, ResultsFile
from ._http import SessionFactory, make_session
from ._messages import Result
from ._ratelimit import RateLimitedLog
from ._register import (
    REGISTER_RETRY_FIRST,
    RegistrationError,
    register_until_done,
    registration_body,
)
from ._worker import SideEffectWorker

logger = logging.getLogger("heartbeat_sync")

DEFAULT_CURSOR_FILE = "/tmp/delegation_activity_cursor"
DEFAULT_SEEN_FILE = "/tmp/delegation_seen_ids"
#: After this many failed beats in a row the session is rebuilt (the reference's rule).
MAX_CONSECUTIVE_FAILURES = 10
#: The legacy ``start_phase`` of earlier releases (the first beat within this share of the
#: interval, then a fixed rate from there); the default schedule now spreads by itself.
START_PHASE = 0.1
_GOLDEN = 0.6180339887498949


class RandomSource(Protocol):
    """Anything with a ``random()`` returning a float in [0, 1), like ``random.Random``."""

    def random(self) -> float: ...


class _PhaseSequence:
    """Start phases for the Heartbeats of one process: a golden-ratio sequence from a random
    start. Instances started together then spread evenly (independent uniform draws cluster
    by chance); a forked child draws a new start, so forked workers do not beat in step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: float | None = None

    def random(self) -> float:
        with self._lock:
            if self._next is None:
                # Not the shared generator: processes that seed it alike would start in step.
                self._next = random.SystemRandom().random()
            value = self._next
            self._next = (value + _GOLDEN) % 1.0
            return value

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._next = None


_phases = _PhaseSequence()
_fork.on_fork_in_child(_phases.reset)
#: Rows asked for per activity page, and pages read per cycle when the server has more.
ACTIVITY_PAGE = 100
ACTIVITY_MAX_PAGES = 5
#: The least ``max_seen_ids``: twice the delegations the platform lists (50). A smaller log
#: forgets ids still listed, and delivers them again every cycle.
MIN_SEEN_IDS = 100
#: The least ``max_cursor_ids``: twice the activity rows one poll can read.
MIN_CURSOR_IDS = 2 * ACTIVITY_PAGE * ACTIVITY_MAX_PAGES
#: Seconds between state checks when nothing suggests a change (a pause shows in no answer of
#: an ordinary cycle): one cycle in ten at the default interval.
STATE_CHECK_INTERVAL = 300.0
#: The longest wait between registration attempts while the platform cannot be reached.
REGISTER_RETRY_MAX = 60.0

StateCallback = Callable[[str, str], None]


def _env_path(value: str | os.PathLike[str] | None, env: str, default: str) -> str:
    if value is not None:
        return os.fspath(value)
    return os.environ.get(env) or default


class Heartbeat:
    """Keeps a workspace alive on the platform and brings delegation results back, on threads.

    Every ``interval_seconds`` (fixed rate on ``time.monotonic``) the beat thread POSTs a
    heartbeat, reads the workspace's delegations and its ``a2a_receive`` activity, appends new
    results to ``results_file`` (each exactly once, ever) and hands them to a side-effect thread
    that wakes the agent with a self-message and notifies the user. The first beat comes at
    once; the later ones on slots at a phase hashed from the workspace id. With ``events``, a
    third thread holds the platform's event stream open and, when a delegation ends or an
    activity row is written, has the polls run at once instead of at the next slot.

    Args:
        platform_url: Base URL of the platform, e.g. ``http://platform:8080``.
        workspace_id: This workspace's id.
        interval_seconds: Seconds between beats: a number in (0, 86400] (the class does not
            clamp; the platform marks a workspace offline after 180 s without a beat).
        results_file: JSONL file the results are appended to. None: ``$DELEGATION_RESULTS_FILE``,
            else ``/tmp/delegation_results.jsonl``.
        cursor_file: Activity ids already processed. None: ``$DELEGATION_ACTIVITY_CURSOR_FILE``,
            else ``/tmp/delegation_activity_cursor``.
        seen_file: Delegation ids already delivered. None: ``$DELEGATION_SEEN_FILE``, else
            ``/tmp/delegation_seen_ids``.
        configs_dir: Where ``.auth_token`` is read and ``.platform_inbound_secret`` written.
            None: ``$CONFIGS_DIR``, else ``/configs`` if writable, else ``~/.molecule-workspace``.
        self_message_cooldown: Least seconds between two wake-up self-messages, in [0, 86400].
        runtime_metadata: Callable returning the beat's ``runtime_metadata`` (or None). Without
            one, the adapter named by ``$ADAPTER_MODULE`` is asked, as the reference does.
        max_seen_ids: Delegation ids remembered (newest kept); at least
            :data:`MIN_SEEN_IDS`.
        max_cursor_ids: Activity ids remembered (newest kept); at least
            :data:`MIN_CURSOR_IDS`.
        request_timeout: Seconds a whole platform request may take (connect, retries and
            body together), in (0, 3600].
        self_message_timeout: Seconds for the whole wake-up self-message, in (0, 3600].
        wakeup_retry_deadline: How long a wake-up refused by a busy agent is retried, in
            [0, 86400].
        exit_timeout: At interpreter exit, seconds given to pending side effects, in [0, 3600]
            (one deadline for every Heartbeat of the process); None to opt out of the hook.
        origin: The ``Origin`` header sent with every request (what gets past the platform's
            same-origin check), sent as its ``scheme://host[:port]`` (the platform refuses a
            path or a trailing slash). None: when ``$PLATFORM_URL`` is set, the origin of
            ``platform_url`` (the only one the platform accepts from any client), else no header.
        start_phase: Deprecated. None (the default): the first beat at once (within a tenth
            of the interval, at most 0.25 s), then on slots at a phase derived from the
            workspace id, so a fleet spreads over the interval by itself and a restarted
            workspace keeps its slot. A number from 0 to 1 brings back the earlier schedule,
            with a ``DeprecationWarning``: the first beat after a random share of the interval
            up to this fraction, then a fixed rate from there.
        rng: Source of the first beat's jitter (anything with ``random()``), for tests.
            Default: a process-wide golden-ratio sequence from a random start.
        events: Hold ``GET /workspaces/:id/events/stream`` open on a third thread; a delegation
            or activity event then asks for a poll at once (the schedule still polls every
            interval). ``$HEARTBEAT_SYNC_EVENTS`` set to ``0``, ``false``, ``no`` or ``off``
            turns it off too.
        session_factory: Makes each thread's ``requests.Session``; the default mounts urllib3
            ``Retry`` with ``Retry-After`` capped below the interval.
        register: Register the agent (``POST /registry/register``) on the beat thread before
            the first beat, retried with backoff while the platform cannot be reached; again
            after a pause, when the platform waits for the agent. A new token is saved to
            ``configs_dir`` (see :func:`heartbeat_sync.register`).
        agent_card: The agent card sent when registering (None: ``{}``).
        agent_url: Where the platform reaches the agent (push delivery); None registers in
            poll mode.
        org_id: The tenant of a multi-tenant platform, sent as ``X-Molecule-Org-Id`` on every
            request. None: ``$MOLECULE_ORG_ID``, else no header.
        on_state_change: Called as ``on_state_change(old, new)`` with ``status().state`` values
            whenever the state changes (never for ``stopped``), on the side-effect thread, never
            on the beat thread. The change to ``removed`` is the last call.
        state_check_interval: Seconds between state checks when nothing suggests a change
            (None: only on a hint). A pause changes no answer of an ordinary cycle.

    Environment variables are read here, at construction, never at import time.
    """

    def __init__(
        self,
        platform_url: str,
        workspace_id: str,
        interval_seconds: float = 30.0,
        results_file: str | os.PathLike[str] | None = None,
        cursor_file: str | os.PathLike[str] | None = None,
        seen_file: str | os.PathLike[str] | None = None,
        configs_dir: str | os.PathLike[str] | None = None,
        self_message_cooldown: float = 60.0,
        runtime_metadata: _metadata.MetadataSource | None = None,
        *,
        max_seen_ids: int = 1000,
        max_cursor_ids: int = 2000,
        request_timeout: float = 10.0,
        self_message_timeout: float = 120.0,
        wakeup_retry_deadline: float = 300.0,
        exit_timeout: float | None = 2.0,
        origin: str | None = None,
        start_phase: float | None = None,
        rng: RandomSource | None = None,
        session_factory: SessionFactory | None = None,
        register: bool = False,
        agent_card: dict[str, Any] | None = None,
        agent_url: str | None = None,
        org_id: str | None = None,
        on_state_change: StateCallback | None = None,
        state_check_interval: float | None = STATE_CHECK_INTERVAL,
        events: bool = True,
    ) -> None:
        if not platform_url or not isinstance(platform_url, str):
            raise ValueError("platform_url is required")
        _validate.workspace_id(workspace_id)
        day = _validate.ONE_DAY
        interval = _validate.number("interval_seconds", interval_seconds, 0, day, low_open=True)
        cooldown = _validate.number("self_message_cooldown", self_message_cooldown, 0, day)
        request_timeout = _validate.number(
            "request_timeout", request_timeout, 0, 3600, low_open=True
        )
        self_message_timeout = _validate.number(
            "self_message_timeout", self_message_timeout, 0, 3600, low_open=True
        )
        wakeup_retry_deadline = _validate.number(
            "wakeup_retry_deadline", wakeup_retry_deadline, 0, day
        )
        exit_timeout = _validate.optional_number("exit_timeout", exit_timeout, 0, 3600)
        start_phase = _validate.optional_number("start_phase", start_phase, 0, 1)
        self.platform_url = platform_url.rstrip("/")
        self.workspace_id = workspace_id
        self.interval_seconds = interval
        self.results_path = _env_path(results_file, RESULTS_FILE_ENV, DEFAULT_RESULTS_FILE)
        self.cursor_path = _env_path(
            cursor_file, "DELEGATION_ACTIVITY_CURSOR_FILE", DEFAULT_CURSOR_FILE
        )
        self.seen_path = _env_path(seen_file, "DELEGATION_SEEN_FILE", DEFAULT_SEEN_FILE)
        self.configs_dir: Path = resolve_configs_dir(configs_dir)
        self.self_message_cooldown = cooldown
        self._runtime_metadata = runtime_metadata
        self._adapter_module = os.environ.get("ADAPTER_MODULE")
        self.request_timeout = request_timeout
        self.exit_timeout = exit_timeout
        if start_phase is not None:
            warnings.warn(
                "start_phase is deprecated: by default the first beat comes at once and the "
                "later ones on a slot derived from the workspace id, which spreads a fleet",
                DeprecationWarning,
                stacklevel=2,
            )
        self.start_phase = start_phase
        self.events = events_enabled(events, os.environ.get(EVENTS_ENV))
        self._rng: RandomSource = rng if rng is not None else _phases
        # urllib3 sleeps inside a request where stop() cannot reach it: keep that short.
        retry_after_cap = min(5.0, interval / 4)
        self._session_factory: SessionFactory = session_factory or (
            lambda: make_session(retry_after_cap)
        )
        self._credentials = Credentials(
            self.configs_dir,
            origin=origin_header(origin, self.platform_url),
            env_token=os.environ.get(TOKEN_ENV),
            org_id=org_id if org_id is not None else os.environ.get(ORG_ID_ENV),
        )
        self.org_id = self._credentials.org_id
        # Validated now: a registration the platform would refuse fails here, not later.
        self._registration = (
            registration_body(
                workspace_id,
                url=agent_url,
                agent_card=agent_card,
                delivery_mode=None if agent_url else "poll",
            )
            if register
            else None
        )
        if on_state_change is not None and not callable(on_state_change):
            raise ValueError("on_state_change must be callable")
        self._on_state_change = on_state_change
        if state_check_interval is not None and not state_check_interval > 0:
            raise ValueError(
                f"state_check_interval must be > 0 or None, not {state_check_interval!r}"
            )
        self.state_check_interval = state_check_interval
        # A consumer that holds a lock for long must not stall the beat: one short timeout for
        # every lock the beat thread takes (results, seen, cursor).
        self._lock_timeout = min(5.0, max(0.05, interval / 4))
        for arg, value, least in (
            ("max_seen_ids", max_seen_ids, MIN_SEEN_IDS),
            ("max_cursor_ids", max_cursor_ids, MIN_CURSOR_IDS),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                # Fewer ids than one poll returns would deliver the same results every cycle.
                raise ValueError(f"{arg} must be an int >= {least}, not {value!r}")
        self._max_ids = (max_seen_ids, max_cursor_ids)
        self._open_files()
        self._worker = SideEffectWorker(
            self._new_client,
            cooldown=self.self_message_cooldown,
            retry_deadline=wakeup_retry_deadline,
            self_message_timeout=self_message_timeout,
            name=f"heartbeat-sync-side-effects-{workspace_id[:8]}",
        )
        self._warn = RateLimitedLog(logger)
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Set by stop(); one per run, so that a thread of an earlier run never resumes.
        self._halt = threading.Event()
        self._halt.set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._beat_client: PlatformClient | None = None
        self._events: EventStream | None = None
        self._beat_asked = False
        self._poll_asked = False
        # Durations are measured on the monotonic clock: setting the wall clock moves nothing.
        self._start_time = time.monotonic()
        self._error_count = 0
        self._request_count = 0
        self._sample_error = ""
        self._active_tasks = 0
        self._current_task = ""
        self._beats_ok = 0
        self._beats_failed = 0
        self._consecutive_failures = 0
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._results_delivered = 0
        self._reload_ids = True
        self._unreachable = False
        self._warned_foreign: OrderedDict[str, None] = OrderedDict()
        self._life = _lifecycle.Tracker(getattr(self, "state_check_interval", None))
        self._registered = False
        self._notified_state = _status.STARTING
        self._ended = threading.Event()
        self._ended.set()  # nothing runs yet

    def _after_fork_in_child(self) -> None:
        # The child inherits this object but not its threads, and the parent's lock may have
        # been held at the fork: the child's copy is a stopped Heartbeat with fresh locks.
        self._init_state()
        self._warn.reinit_after_fork()
        self._credentials.reinit_after_fork()
        # File locks are per object; the parent's may have been held by its beat thread.
        self._open_files()

    def _open_files(self) -> None:
        timeout = self._lock_timeout
        self._seen = IdLog(self.seen_path, self._max_ids[0], timeout, name="seen")
        self._cursor = IdLog(self.cursor_path, self._max_ids[1], timeout, name="cursor")
        self._results = ResultsFile(self.results_path, timeout, (self._seen, self._cursor))
        # Where the next activity page starts; a new start reads from the cursor file.
        self._pager = ActivityPager()

    def _new_client(self) -> PlatformClient:
        return PlatformClient(
            self.platform_url,
            self.workspace_id,
            self._credentials,
            self._session_factory,
            timeout=self.request_timeout,
        )

    # --- what the agent sets and reads ------------------------------------------------------

    def record_error(self, error: str) -> None:
        """Count a failed request of the agent; ``error`` becomes the beat's ``sample_error``."""
        with self._lock:
            self._error_count += 1
            self._request_count += 1
            self._sample_error = str(error)

    def record_success(self) -> None:
        """Count a successful request of the agent."""
        with self._lock:
            self._request_count += 1

    @property
    def error_rate(self) -> float:
        """Errors ÷ requests since the last successful beat (0.0 with no requests)."""
        with self._lock:
            return self._error_count / self._request_count if self._request_count else 0.0

    @property
    def sample_error(self) -> str:
        """The last error given to :meth:`record_error`."""
        with self._lock:
            return self._sample_error

    @property
    def active_tasks(self) -> int:
        """Tasks in progress, sent with every beat (the platform drains its queue below 1)."""
        with self._lock:
            return self._active_tasks

    @active_tasks.setter
    def active_tasks(self, value: int) -> None:
        with self._lock:
            self._active_tasks = int(value)

    @property
    def current_task(self) -> str:
        """What the agent is doing, sent with every beat. Setting a new value beats at once."""
        with self._lock:
            return self._current_task

    @current_task.setter
    def current_task(self, value: str) -> None:
        value = "" if value is None else str(value)
        with self._lock:
            changed = value != self._current_task
            self._current_task = value
        if changed:
            self.beat_now()

    def beat_now(self) -> None:
        """Run a cycle soon; the regular schedule is unchanged.

        Requests are coalesced: calls made while a cycle waits make that one cycle. A few
        such cycles run at once (5 after a quiet spell); beyond that, one a second (or the
        regular slot, if it comes first). Whatever the caller does, this adds at most
        ``5 + t`` cycles in ``t`` seconds to the schedule's.
        """
        self._beat_asked = True
        self._wake.set()

    def _request_poll(self) -> None:
        # From the event stream: poll delegations and activity soon, without a beat. Its own
        # flag, so that it is never merged into (or held back with) a requested beat.
        self._poll_asked = True
        self._wake.set()

    # --- lifecycle ------------------------------------------------------------------------

    def start_thread(self) -> threading.Thread:
        """Start the beat, side-effect and (with ``events``) event-stream daemon threads;
        return the beat thread.

        Calling it again while they run starts nothing and returns the same thread. After a
        :meth:`stop` that timed out (a thread was still ending), the new beat thread waits
        for the old threads to end, then starts working; ``status().state`` is ``starting``
        meanwhile.
        """
        if os.getpid() != self._pid:
            self._after_fork_in_child()
        with self._lock:
            current = self._thread
            if current is not None and current.is_alive() and not self._halt.is_set():
                return current
            if self._life.kind == _lifecycle.REMOVED and current is not None:
                logger.error(
                    "workspace %s was removed from the platform; not starting again",
                    self.workspace_id,
                )
                return current
            previous = [t for t in (current, self._worker.thread) if t is not None and t.is_alive()]
            halt = threading.Event()
            self._halt = halt
            ended = threading.Event()
            self._ended = ended
            self._stopping = True  # until the new run begins (the old threads see it too)
            if not previous:
                self._begin_run()
            thread = threading.Thread(
                target=self._run,
                args=(halt, ended, previous),
                name=f"heartbeat-sync-{self.workspace_id[:8]}",
                daemon=True,
            )
            self._thread = thread
            thread.start()
            if self.events:
                self._events = EventStream(
                    self._new_client,
                    self.workspace_id,
                    self._request_poll,
                    # The platform sends an event for every beat: a stream silent for a few
                    # intervals is likely a dead connection.
                    idle_timeout=max(3 * self.interval_seconds, 60.0),
                    draw=random.SystemRandom().random,
                    name=f"heartbeat-sync-events-{self.workspace_id[:8]}",
                )
                self._events.start()
        if self.exit_timeout is not None:
            _live.add(self)
            _install_exit_hook()
        return thread

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the threads; return True if all ended within ``timeout`` seconds.

        Returns within ``timeout`` even if the platform hangs: a request in flight is
        interrupted. Pending side effects are dropped (and counted); to give them a chance
        first, see ``exit_timeout``.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._stopping = True
            self._halt.set()
            thread = self._thread
            client = self._beat_client
            events = self._events
        self._wake.set()
        if client is not None:
            client.abort()
        if events is not None:
            events.request_stop()
        beat_done = True
        if thread is not None:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
            beat_done = not thread.is_alive()
        worker_done = self._worker.stop(max(0.0, deadline - time.monotonic()))
        events_done = events is None or events.stop(max(0.0, deadline - time.monotonic()))
        _live.discard(self)
        return beat_done and worker_done and events_done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the Heartbeat has ended: stopped, or its workspace removed.

        Returns True once both threads ended, False if ``timeout`` seconds passed first. A
        Heartbeat never started has ended. So a script can run ``hb.start_thread(); hb.wait()``.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if not self._ended.wait(timeout):
            return False
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._worker.join(remaining)

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` seconds for pending wake-ups and notifications to be sent.

        Returns True when nothing is left. A wake-up held back by the cooldown or by a busy
        agent counts as pending. Call it before :meth:`stop` to give side effects a chance.
        """
        return self._worker.flush(timeout)

    def __enter__(self) -> Heartbeat:
        self.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> _status.Status:
        """An immutable snapshot of the loop's state and counters."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if self._life.kind == _lifecycle.REMOVED:
                state = _status.REMOVED
            elif not running or self._halt.is_set():
                state = _status.STOPPED
            elif self._stopping:
                state = _status.STARTING  # waiting for the threads of the previous run
            else:
                state = self._live_state()
            snapshot: dict[str, Any] = {
                "state": state,
                "running": running,
                "beats_ok": self._beats_ok,
                "beats_failed": self._beats_failed,
                "consecutive_failures": self._consecutive_failures,
                "last_success": self._last_success,
                "last_error": self._last_error,
                "results_delivered": self._results_delivered,
            }
        drops = dict(self._worker.dropped)
        return _status.Status(
            wakeups_sent=self._worker.wakeups_sent,
            notifications_sent=self._worker.notifications_sent,
            side_effects_dropped=sum(drops.values()),
            drops=types.MappingProxyType(drops),
            queue_depth=self._worker.queue_depth,
            workspace_status=self._life.platform_status,
            **snapshot,
        )

    def _live_state(self) -> str:
        # caller holds self._lock
        if self._life.kind == _lifecycle.PAUSED:
            return _status.PAUSED
        if self._consecutive_failures:
            return _status.DEGRADED
        return _status.HEALTHY if self._beats_ok else _status.STARTING

    # --- the beat thread ------------------------------------------------------------------

    def _begin_run(self) -> None:
        # Caller holds self._lock (stop() takes it too: a run never begins after a stop).
        self._stopping = False
        self._wake.clear()
        self._worker.start()

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
        interval = self.interval_seconds
        now = time.monotonic()
        if self.start_phase is None:
            next_at = now + _schedule.first_beat_delay(interval, self._rng.random())
            phase = _schedule.phase_of(self.workspace_id)
            origin = _schedule.slot_origin(phase, interval, now, time.time())
        else:  # the deprecated schedule: a random first beat, then a fixed rate from it
            next_at = now + self._rng.random() * self.start_phase * interval
            origin = next_at
        first = True
        # Cycles asked for by beat_now()/current_task: a few at once, a storm paced.
        forced_cycles = _coalesce.ForcedCycles()
        # Polls asked for by the event stream: sparse ones at once, a storm paced.
        pacer = _schedule.PollPacer()
        try:
            if self._registration is not None:
                self._register_until_done(client)
            while self._life.kind != _lifecycle.REMOVED:
                now = time.monotonic()
                beat_asked, poll_asked = self._beat_asked, self._poll_asked
                beat_due = min(next_at, forced_cycles.due(now)) if beat_asked else next_at
                poll_due = pacer.ready_at(now) if poll_asked else math.inf
                if now < beat_due and now < poll_due:
                    self._wake.wait(min(beat_due, poll_due) - now)
                    # Requests are flags read at the top: one raised meanwhile is not lost.
                    self._wake.clear()
                    if self._stopping or halt.is_set():
                        return
                    continue
                if self._stopping or halt.is_set():
                    return
                self._poll_asked = False  # a cycle polls too; an event during it polls again
                if now < beat_due:  # only the event stream's poll is due
                    pacer.take(now)
                    self._polls(client)
                    continue
                self._beat_asked = False
                if beat_asked and next_at > now:
                    forced_cycles.take(now)  # an extra cycle, not the regular slot
                try:
                    self._cycle(client)
                except Exception:  # nothing may kill the beat thread
                    logger.exception("heartbeat cycle failed")
                self._announce_state()
                if self._life.kind == _lifecycle.REMOVED:
                    break
                now = time.monotonic()
                if next_at > now:
                    continue  # an extra cycle; the regular slot still stands
                # The next slot on the workspace's grid; slots missed during a stall are
                # skipped, never run in a burst.
                next_at = _schedule.slot_after_cycle(origin, interval, next_at, now, first=first)
                first = False
            if self._life.kind == _lifecycle.REMOVED:
                events = self._events
                if events is not None:
                    events.request_stop()  # the platform answers a removed workspace's stream 401
                # The state-change callback (queued above) runs first; nothing else is sent.
                self._worker.finish()
                self._worker.join(max(1.0, self.request_timeout))
        finally:
            client.close()

    # --- registration and the workspace's lifecycle ----------------------------------------

    def _register_until_done(self, client: PlatformClient) -> None:
        assert self._registration is not None

        def wait(delay: float) -> None:
            self._wake.wait(delay)
            self._wake.clear()

        def failed(exc: RegistrationError) -> None:
            with self._lock:
                self._last_error = str(exc)

        self._registered = register_until_done(
            client,
            self._registration,
            self._credentials,
            stopping=lambda: self._stopping,
            wait=wait,
            max_delay=max(REGISTER_RETRY_FIRST, min(REGISTER_RETRY_MAX, self.interval_seconds)),
            warn=self._warn,
            on_failure=failed,
        )

    def _check_state(self, client: PlatformClient) -> None:
        seen = _lifecycle.probe(client)
        old, new = self._life.update(seen)
        if new == old:
            return
        if new == _lifecycle.REMOVED:
            logger.error(
                "workspace %s was removed from the platform (%s): the heartbeat ended, "
                "nothing more is sent",
                self.workspace_id,
                seen.evidence,
            )
        elif new == _lifecycle.PAUSED:
            logger.warning(
                "workspace %s is %s on the platform: no beats until it is resumed (%s)",
                self.workspace_id,
                seen.status,
                seen.evidence,
            )
        else:
            logger.info("workspace %s is %s on the platform again", self.workspace_id, seen.status)
            if self._registration is not None and seen.status in _lifecycle.AWAITING_AGENT_STATUSES:
                self._register_until_done(client)  # a pause cleared the agent's URL

    def _announce_state(self) -> None:
        with self._lock:
            new = _status.REMOVED if self._life.kind == _lifecycle.REMOVED else self._live_state()
            old, self._notified_state = self._notified_state, new
        callback = self._on_state_change
        if callback is not None and new != old:
            self._worker.call_soon(lambda: callback(old, new))

    def _hint(self, exc: BaseException) -> None:
        if _lifecycle.suspicious(exc) and not self._stopping:
            self._life.hint()

    def _cycle(self, client: PlatformClient) -> None:
        if self._reload_ids:
            self._recover_files()
        if self._life.kind == _lifecycle.PAUSED:
            self._check_state(client)  # the platform ignores a paused workspace's beats
            if self._life.kind != _lifecycle.ACTIVE:
                return
        if not self._beat(client) and self._unreachable:
            return  # the platform cannot be reached: the polls would only wait and fail too
        self._polls(client)

    def _polls(self, client: PlatformClient) -> None:
        if self._reload_ids:
            self._recover_files()
        for poll in (self._poll_delegations, self._poll_activity):
            if self._stopping or self._life.kind != _lifecycle.ACTIVE:
                return
            if self._life.due():
                self._check_state(client)
                if self._life.kind != _lifecycle.ACTIVE:
                    return
            try:
                poll(client)
            except Exception:
                logger.exception("%s failed", poll.__name__.lstrip("_").replace("_", " "))
        if self._life.due() and not self._stopping:
            self._check_state(client)

    def _recover_files(self) -> None:
        # Finish a delivery a crash (or a failed write) interrupted, then read the id logs
        # as they are on disk, so that nothing delivered is delivered again.
        try:
            self._results.recover()
            self._seen.reload()
            self._cursor.reload()
            self._reload_ids = False
        except Exception as exc:
            self._warn.warning("files", "cannot read the results or cursor files: %s", exc)

    def _beat(self, client: PlatformClient) -> bool:
        with self._lock:
            errors, requests_ = self._error_count, self._request_count
            rate = errors / requests_ if requests_ else 0.0
            sample, active, task = self._sample_error, self._active_tasks, self._current_task
            uptime = time.monotonic() - self._start_time
        wedged = _wedge.wedge_reason() if _wedge.is_wedged() else None
        body = _messages.build_beat_body(
            self.workspace_id,
            error_rate=rate,
            sample_error=sample,
            active_tasks=active,
            current_task=task,
            uptime_seconds=uptime,
            wedge_reason=wedged,
            runtime_metadata=_metadata.collect(self._runtime_metadata, self._adapter_module),
        )
        try:
            reply = client.heartbeat(body)
        except Exception as exc:  # PlatformError, or a bug: either way a failed beat
            if self._stopping:
                return False  # interrupted by stop(), not a failure of the platform
            self._hint(exc)
            self._unreachable = isinstance(exc, PlatformError) and exc.connect_error
            self._beat_failed(client, exc)
            return False
        self._unreachable = False
        with self._lock:
            # Only what this beat reported is reset: errors recorded meanwhile still count.
            self._error_count = max(0, self._error_count - errors)
            self._request_count = max(0, self._request_count - requests_)
            recovered = self._consecutive_failures
            self._consecutive_failures = 0
            self._beats_ok += 1
            self._last_success = time.time()
            self._last_error = None
        if recovered:
            logger.info("heartbeat recovered after %d failed beat(s)", recovered)
        self._warn.reset("beat")
        if reply.inbound_secret:
            self._credentials.save_inbound_secret(reply.inbound_secret)
        return True

    def _beat_failed(self, client: PlatformClient, exc: Exception) -> None:
        with self._lock:
            self._consecutive_failures += 1
            self._beats_failed += 1
            failures = self._consecutive_failures
            # Never repr() a foreign exception: it may quote a request header (the token).
            error = str(exc) if isinstance(exc, PlatformError) else type(exc).__name__
            self._last_error = error
        self._warn.warning("beat", "heartbeat failed (%d consecutive): %s", failures, error)
        if failures % MAX_CONSECUTIVE_FAILURES == 0:
            logger.info("recreating the HTTP session after %d failed beats", failures)
            client.rebuild()

    def _poll_delegations(self, client: PlatformClient) -> None:
        try:
            rows = client.delegations()
        except PlatformError as exc:
            if not self._stopping:  # a poll interrupted by stop() is not a platform failure
                self._hint(exc)
                self._warn.warning("delegations", "delegations poll failed: %s", exc)
            return
        self._warn.reset("delegations")
        parsed = _messages.delegation_results(rows, self.workspace_id, self._seen, time.time())
        for did, source in parsed.foreign:
            if did not in self._warned_foreign:
                logger.warning(
                    "skipping delegation %s: source_id %r is not this workspace", did, source
                )
                self._warned_foreign[did] = None
                while len(self._warned_foreign) > 1000:
                    self._warned_foreign.popitem(last=False)
        if parsed.malformed:
            self._warn.warning(
                "delegation-rows", "skipped %d malformed delegation row(s)", parsed.malformed
            )
        if parsed.results:
            self._deliver(parsed.results, [(self._seen, parsed.ids)])

    def _poll_activity(self, client: PlatformClient) -> None:
        # Ids a failed write left pending are written now (a no-op when there are none).
        self._cursor.save()
        self._seen.save()
        try:
            self._results.recover_if_pending()
        except OSError as exc:
            self._warn.warning("files", "cannot finish the delivery journal: %s", exc)
        since = self._pager.first_since(self._cursor.ids)
        for _ in range(ACTIVITY_MAX_PAGES):
            try:
                try:
                    rows = client.activity(since, limit=ACTIVITY_PAGE)
                except CursorGone:
                    logger.info("activity cursor unknown to the platform; reading the window")
                    self._pager.forget(since)
                    since = None
                    rows = client.activity(None, limit=ACTIVITY_PAGE)
            except PlatformError as exc:
                if not self._stopping:
                    self._hint(exc)
                    self._warn.warning("activity", "activity poll failed: %s", exc)
                return
            self._warn.reset("activity")
            honoured = since is not None and not any(
                isinstance(r, dict) and r.get("id") == since for r in rows
            )
            if not honoured or _messages.newest_first(rows):
                # A full window (no cursor, a 410, or a server that ignores since_id) comes
                # newest first; results are processed oldest first.
                honoured = False
                rows = list(reversed(rows))
            parsed = _messages.activity_results(rows, self.workspace_id, self._cursor, time.time())
            if parsed.malformed:
                self._warn.warning(
                    "activity-rows", "skipped %d malformed activity row(s)", parsed.malformed
                )
            if parsed.results:
                if not self._deliver(parsed.results, [(self._cursor, parsed.ids)]):
                    return  # the pager stays put: the next poll reads these rows again
            elif parsed.ids:
                self._cursor.add(parsed.ids)
                self._cursor.save()
            full = honoured and len(rows) >= ACTIVITY_PAGE
            after = self._pager.read(since if honoured else None, row_ids(rows), full)
            if after is None or after == since:
                if full:
                    self._warn.warning(
                        "activity-stuck",
                        "the activity cursor cannot advance past %s: a full page without a "
                        "newer well-formed row; reading from there again next cycle",
                        since,
                    )
                else:
                    self._warn.reset("activity-stuck")
                return
            since = after
        logger.info("read %d pages of activity; the rest follows next cycle", ACTIVITY_MAX_PAGES)

    def _deliver(self, results: Sequence[Result], id_logs: list[tuple[IdLog, list[str]]]) -> bool:
        try:
            written = self._results.deliver([r.record for r in results], id_logs)
        except Exception as exc:
            # Nothing is lost: the ids were not recorded, so the next cycle delivers them.
            self._reload_ids = True
            self._warn.warning("deliver", "could not write results: %s", exc)
            return False
        self._warn.reset("deliver")
        # Another writer of the same files may have delivered some already: those are its
        # to announce.
        fresh = {id(r) for r in written}
        results = [r for r in results if id(r.record) in fresh]
        if not results:
            return True
        with self._lock:
            self._results_delivered += len(results)
        logger.info("%d new result(s) written to %s", len(results), self.results_path)
        self._worker.submit(results)
        return True


# --- interpreter exit -------------------------------------------------------------------------

_live: weakref.WeakSet[Heartbeat] = weakref.WeakSet()
_hook_installed = False
_hook_lock = threading.Lock()


def _install_exit_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            atexit.register(_at_exit)
            _hook_installed = True


def _at_exit() -> None:
    """Give pending side effects a short, bounded chance before the daemon threads die.

    Every Heartbeat's side effects are waited for together, from one start: the exit is
    delayed by the largest ``exit_timeout``, not their sum. A wake-up that the cooldown or a
    busy agent holds past that deadline is not waited for.
    """
    started = time.monotonic()
    hbs = [hb for hb in list(_live) if hb.exit_timeout is not None and os.getpid() == hb._pid]
    for hb in hbs:
        worker = hb._worker
        if worker.idle():
            continue
        remaining = started + (hb.exit_timeout or 0.0) - time.monotonic()
        logger.info(
            "heartbeat-sync: waiting up to %.1f s for %s",
            max(0.0, remaining),
            worker.pending_summary(),
        )
        if not worker.flush(max(0.0, remaining)):
            logger.warning("heartbeat-sync: exiting with %s not sent", worker.pending_summary())
    for hb in hbs:
        hb.stop(timeout=0.0)  # ask every thread at once ...
    end = time.monotonic() + 0.5
    for hb in hbs:
        hb.stop(timeout=max(0.0, end - time.monotonic()))  # ... then wait for all together
