"""The public Heartbeat: a workspace's heartbeat loop on threads.

``Heartbeat`` is the surface and the composition root: it validates its arguments
(``_settings``), keeps what outlives a run (the counters, the workspace's lifecycle, the inbox,
the side-effect and callback threads), puts each run together (a ``loop.Run`` with its
``loop.Cycle``), and answers ``status()``. The beat thread's work is the ``loop`` package's.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from pathlib import Path
from typing import Any

from . import _exit, _fork, _logctx, _metadata, _settings, _status
from ._logctx import get_logger
from ._settings import (
    MESSAGE_BACKLOG,
    MIN_CURSOR_IDS,
    MIN_SEEN_IDS,
    SAFETY_POLL_INTERVAL,
    STATE_CHECK_INTERVAL,
    RandomSource,
    StateCallback,
)
from .delivery import InboundMessage, Inbox, Owner
from .effects import HandlerPool, MessageHandler, Pump, side_effect_worker
from .loop import (
    CallbackLane,
    Callbacks,
    CallbackShare,
    Cycle,
    Drivers,
    Inbound,
    Lifecycle,
    Registrar,
    Run,
    Tally,
    Ticket,
)
from .wire import Credentials, PlatformClient, SessionFactory, StreamFactory

logger = get_logger(__name__)

__all__ = ["MIN_CURSOR_IDS", "MIN_SEEN_IDS", "Heartbeat"]


class Heartbeat:
    """Keeps a workspace alive on the platform and brings delegation results back, on threads.

    Every ``interval_seconds`` (fixed rate on ``time.monotonic``) the beat thread POSTs a
    heartbeat, reads the workspace's delegations and its ``a2a_receive`` activity, appends new
    results to ``results_file`` (each exactly once, ever) and hands them to a side-effect thread
    that wakes the agent with a self-message and notifies the user. The first beat comes at
    once; the later ones on slots at a phase hashed from the workspace id, then an even share
    of the interval among its siblings (looked up once a run). With ``events``, a
    third thread holds the platform's event stream open and, when a delegation ends or an
    activity row is written, has the polls run at once instead of at the next slot.

    Args:
        platform_url: Base URL of the platform, e.g. ``http://platform:8080``: http or https,
            with a host, without user info (``user:password@``, which requests would send as
            Basic auth in place of the token), query or fragment.
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
        start_phase: Deprecated (a ``DeprecationWarning``). None, the default: the first beat
            at once (within a tenth of the interval, at most 0.25 s), then slots at a phase
            derived from the workspace id, so a fleet spreads by itself and a restarted
            workspace keeps its slot. A number in [0, 1]: the first beat after a random share
            of the interval up to this fraction, then a fixed rate from there.
        rng: Source of the first beat's jitter (anything with ``random()``), for tests.
            Default: a process-wide golden-ratio sequence from a random start.
        events: Hold ``GET /workspaces/:id/events/stream`` open on a third thread; a delegation
            or activity event then asks for a poll at once (the schedule still polls every
            interval), a pause, removal or return of the workspace for a state check at once.
            ``$HEARTBEAT_SYNC_EVENTS`` set to ``0``, ``false``, ``no`` or ``off`` turns it off.
        session_factory: Makes each thread's ``requests.Session``; the default mounts urllib3
            ``Retry`` with ``Retry-After`` capped below the interval.
        register: Register the agent (``POST /registry/register``) on the beat thread, after a
            look at the workspace's state and before the first beat; again after a pause, when
            the platform waits for the agent. The beats never wait for it: a failed attempt is
            tried again between them, after ``Retry-After`` or a doubling wait, and given up
            after repeated refusals (``status().registration`` says so). A new token is saved
            to ``configs_dir`` (see :func:`heartbeat_sync.register`).
        agent_card: The agent card sent when registering (None: ``{}``).
        agent_url: Where the platform reaches the agent: registers in push mode; None
            registers in poll mode.
        org_id: The tenant of a multi-tenant platform, sent as ``X-Molecule-Org-Id`` on every
            request: printable ASCII without white space, surrounding white space stripped.
            None: ``$MOLECULE_ORG_ID`` (checked alike), else no header.
        on_state_change: Called as ``on_state_change(old, new)`` with ``status().state`` values
            whenever the state changes (never for ``stopped``), in order, on a thread of their
            own (never behind a beat or a wake-up in flight). The change to ``removed`` is the
            last call; :meth:`wait` returns after it. A callback may call :meth:`stop`.
        state_check_interval: Seconds between state checks when nothing suggests a change, a
            number in (0, 86400] (None: only on a hint: a suspicious answer, or an event). A
            pause changes no answer of an ordinary cycle. The environment is read here, at
            construction, never at import time.
        on_message: Called as ``on_message(message)`` with each message to the workspace (an
            :class:`~heartbeat_sync.InboundMessage`: from a user on the canvas or from a peer)
            on a pool of its own, once, ever; a returned string is the reply, sent back the
            way the message came. Every ``a2a_receive`` row then goes to it, none to the
            results file (delegation results still do). A workspace no agent has registered
            yet is registered in poll mode; one in push mode is left so, with a warning (its
            messages go to its URL). See the README's "Receiving messages".
        max_concurrent: Handlers running at once, in [1, 64]; while all run, the messages
            wait on the platform.
        message_backlog: At a first start (no activity cursor yet), messages older than this
            many seconds are history and not handed over; in [0, 2592000].
        safety_poll_interval: While the event stream is up, the polls run when an event asks
            for them and at least every this many seconds, in (0, 86400]; the beats keep
            their interval, and the workspace's state is checked on a hint only (the stream
            announces every change, and is checked after it comes back). None: poll every
            cycle whatever the stream. With the stream down, refused or silent, every cycle
            polls, and after a reconnect the polls run at once.
    """

    def __init__(
        self,
        platform_url: str,
        workspace_id: str,
        *positional: Any,
        interval_seconds: float = 30.0,
        results_file: str | os.PathLike[str] | None = None,
        cursor_file: str | os.PathLike[str] | None = None,
        seen_file: str | os.PathLike[str] | None = None,
        configs_dir: str | os.PathLike[str] | None = None,
        self_message_cooldown: float = 60.0,
        runtime_metadata: _metadata.MetadataSource | None = None,
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
        on_message: MessageHandler | None = None,
        max_concurrent: int = 1,
        message_backlog: float = MESSAGE_BACKLOG,
        safety_poll_interval: float | None = SAFETY_POLL_INTERVAL,
    ) -> None:
        # Every argument goes to _settings.settings, whose signature is this one's without
        # the defaults (a test holds the two equal): validated there, in one place.
        arguments = dict(locals())
        del arguments["self"], arguments["positional"]
        if positional:  # the deprecated positional form of earlier releases
            _settings.take_positional(positional, arguments, _DEFAULTS)
        settings = _settings.settings(**arguments)
        self._settings = settings
        self._credentials = Credentials(
            settings.configs_dir,
            origin=settings.origin,
            env_token=settings.env_token,
            org_id=settings.org_id,
        )
        self._worker = side_effect_worker(
            self._new_client,
            cooldown=settings.self_message_cooldown,
            retry_deadline=settings.wakeup_retry_deadline,
            self_message_timeout=settings.self_message_timeout,
            name=f"heartbeat-sync-side-effects-{workspace_id[:8]}",
        )
        self._callbacks: Callbacks | CallbackShare = Callbacks(
            f"heartbeat-sync-callbacks-{workspace_id[:8]}"
        )
        # A hub's workspace: its steps, side effects, callbacks and stream on shared threads.
        self._drivers: Drivers | None = None
        self._streams: StreamFactory | None = None
        self._ticket: Ticket | None = None
        self._pool: HandlerPool | None = None
        if settings.on_message is not None:
            self._pool = HandlerPool(
                settings.on_message,
                max_concurrent=settings.max_concurrent,
                finished=self._message_finished,
                name=f"heartbeat-sync-handler-{workspace_id[:8]}",
            )
        self._init_state()
        _fork.track(self)

    def _init_state(self) -> None:
        # Everything a forked child starts afresh (the files' locks are per object).
        settings = self._settings
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards which run is current
        self._tally = Tally()
        self._life = Lifecycle(settings.state_check_interval)
        self._inbox = Inbox(
            settings.workspace_id,
            settings.results_path,
            settings.seen_path,
            settings.cursor_path,
            max_seen=settings.max_seen_ids,
            max_cursor=settings.max_cursor_ids,
            lock_timeout=settings.lock_timeout,
        )
        self._run: Run | None = None

    def _after_fork_in_child(self) -> None:
        # The child inherits this object but not its threads, and the parent's lock may have
        # been held at the fork: the child's copy is a stopped Heartbeat with fresh locks.
        self._credentials.reinit_after_fork()
        self._init_state()

    def _new_client(self) -> PlatformClient:
        settings = self._settings
        return PlatformClient(
            settings.platform_url,
            settings.workspace_id,
            self._credentials,
            settings.session_factory,
            timeout=settings.request_timeout,
        )

    def _message_finished(self, message: InboundMessage, answer: str | None, failed: bool) -> None:
        # On the handler's thread: the message is out of its hands (recorded first, so that
        # nothing offers it again), then its answer goes back.
        self._inbox.finished(message.id)
        if answer:
            message.reply(answer)
        run = self._run
        if run is not None:
            run.handler_finished()  # a free handler: the messages left waiting are read now

    def _join_hub(
        self, drivers: Drivers, pump: Pump, lane: CallbackLane, streams: StreamFactory | None
    ) -> None:
        """Run on a hub's shared threads rather than threads of its own (before any start)."""
        settings = self._settings
        wid = settings.workspace_id
        self._worker = side_effect_worker(
            self._new_client,
            cooldown=settings.self_message_cooldown,
            retry_deadline=settings.wakeup_retry_deadline,
            self_message_timeout=settings.self_message_timeout,
            name=f"heartbeat-sync-side-effects-{wid[:8]}",
            pump=pump,
        )
        self._callbacks = lane.share(f"heartbeat-sync-callbacks-{wid[:8]}", wid)
        self._drivers = drivers
        self._streams = streams

    def _start_on_hub(self) -> Run | None:
        """Begin a run stepped by the hub's drivers; the run, or None if none began (the
        workspace was removed in an earlier run, or one is running)."""
        drivers = self._drivers
        assert drivers is not None
        with _logctx.workspace(self.workspace_id), self._lock:
            current = self._run
            if current is not None and (current.working() or self._life.removed):
                return None
            run = self._new_run([])
            self._run = run
            ticket = self._ticket
            assert ticket is not None
            if not run.host():
                return None
            drivers.add(run, ticket)
        if self.exit_timeout is not None:
            _exit.add(self)
        return run

    def _new_run(self, previous: list[threading.Thread]) -> Run:
        settings = self._settings
        halt = threading.Event()
        registrar = None
        if settings.registration is not None:
            registrar = Registrar.for_interval(
                settings.registration, self._credentials, settings.interval_seconds
            )
        inbound = None
        if self._pool is not None:
            inbound = Inbound(
                inbox=self._inbox,
                pool=self._pool,
                send=self._worker.submit,
                owner=Owner.new_run(),
                backlog=settings.message_backlog,
            )
        cycle = Cycle(
            workspace_id=settings.workspace_id,
            inbox=self._inbox,
            tally=self._tally,
            life=self._life,
            credentials=self._credentials,
            metadata=functools.partial(
                _metadata.collect, settings.runtime_metadata, settings.adapter_module
            ),
            on_results=self._worker.submit,
            on_state=self._announce,
            registrar=registrar,
            halt=halt,
            inbound=inbound,
            register_if_waiting=settings.register_only_if_waiting,
        )
        return Run(
            workspace_id=settings.workspace_id,
            interval=settings.interval_seconds,
            start_phase=settings.start_phase,
            draw=settings.rng.random(),
            cycle=cycle,
            halt=halt,
            new_client=self._new_client,
            worker=self._worker,
            callbacks=self._callbacks,
            life=self._life,
            events=settings.events,
            safety_poll_interval=settings.safety_poll_interval,
            registers=registrar is not None,
            request_timeout=settings.request_timeout,
            previous=previous,
            inbound=inbound,
            **self._hub_parts(),
        )

    def _hub_parts(self) -> dict[str, Any]:
        """What a run on a hub's threads is given besides (a lone run: nothing)."""
        drivers = self._drivers
        if drivers is None:
            return {}
        self._ticket = ticket = drivers.ticket()
        # The hub spreads its members' beats itself; the team lookup is not needed.
        return {"wake": ticket.wake, "streams": self._streams, "team": False}

    def _announce(self, old: str, new: str) -> None:
        callback = self._settings.on_state_change
        if callback is not None:
            self._callbacks.call(lambda: callback(old, new))

    # --- what it was told (read-only: a Heartbeat's settings never change) ---------------

    @property
    def platform_url(self) -> str:
        """The platform's base URL, without a trailing slash."""
        return self._settings.platform_url

    @property
    def workspace_id(self) -> str:
        """The workspace this Heartbeat keeps alive."""
        return self._settings.workspace_id

    @property
    def interval_seconds(self) -> float:
        """Seconds between beats."""
        return self._settings.interval_seconds

    @property
    def results_path(self) -> str:
        """The results file, resolved (``results_file``, else the environment or default)."""
        return self._settings.results_path

    @property
    def cursor_path(self) -> str:
        """The activity cursor file, resolved."""
        return self._settings.cursor_path

    @property
    def seen_path(self) -> str:
        """The seen file, resolved."""
        return self._settings.seen_path

    @property
    def configs_dir(self) -> Path:
        """Where ``.auth_token`` is read and ``.platform_inbound_secret`` written."""
        return self._settings.configs_dir

    @property
    def self_message_cooldown(self) -> float:
        """Least seconds between two wake-up self-messages."""
        return self._settings.self_message_cooldown

    @property
    def request_timeout(self) -> float:
        """Seconds a whole platform request may take."""
        return self._settings.request_timeout

    @property
    def exit_timeout(self) -> float | None:
        """Seconds the exit hook gives pending side effects (None: no hook)."""
        return self._settings.exit_timeout

    @property
    def start_phase(self) -> float | None:
        """The deprecated first-beat share, or None (the workspace's slots)."""
        return self._settings.start_phase

    @property
    def events(self) -> bool:
        """Whether the event stream is held open (the argument and the environment)."""
        return self._settings.events

    @property
    def safety_poll_interval(self) -> float | None:
        """Seconds between polls while the event stream is up (None: every cycle)."""
        return self._settings.safety_poll_interval

    @property
    def org_id(self) -> str | None:
        """The tenant sent as ``X-Molecule-Org-Id``, or None."""
        return self._settings.org_id

    @property
    def state_check_interval(self) -> float | None:
        """Seconds between state checks without a hint (None: only on a hint)."""
        return self._settings.state_check_interval

    # --- what the agent sets and reads ------------------------------------------------------

    def record_error(self, error: str) -> None:
        """Count a failed request of the agent; ``error`` becomes the beat's ``sample_error``."""
        self._tally.record_error(error)

    def record_success(self) -> None:
        """Count a successful request of the agent."""
        self._tally.record_success()

    @property
    def error_rate(self) -> float:
        """Errors ÷ requests since the last successful beat (0.0 with no requests)."""
        return self._tally.error_rate()

    @property
    def sample_error(self) -> str:
        """The last error given to :meth:`record_error`."""
        return self._tally.sample_error()

    @property
    def active_tasks(self) -> int:
        """Tasks in progress, sent with every beat (the platform drains its queue below 1)."""
        return self._tally.active_tasks()

    @active_tasks.setter
    def active_tasks(self, value: int) -> None:
        self._tally.set_active_tasks(value)

    @property
    def is_busy(self) -> bool:
        """Whether the agent is busy, sent with every beat as ``is_busy``: as set, else while
        :attr:`active_tasks` > 0. Set True or False to say so whatever the tasks; set None to
        go back to the tasks. (The August 2026 platform reads it; the May one ignores it.)"""
        return self._tally.is_busy()

    @is_busy.setter
    def is_busy(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"is_busy must be True, False or None, not {value!r}")
        self._tally.set_busy(value)

    @property
    def current_task(self) -> str:
        """What the agent is doing, sent with every beat. Setting a new value beats at once."""
        return self._tally.current_task()

    @current_task.setter
    def current_task(self, value: str) -> None:
        if self._tally.set_current_task("" if value is None else str(value)):
            self.beat_now()

    def beat_now(self) -> None:
        """Run a cycle soon; the regular schedule is unchanged.

        Requests are coalesced: calls made while a cycle waits make that one cycle. A few
        such cycles run at once (5 after a quiet spell); beyond that, one a second (or the
        regular slot, if it comes first). Whatever the caller does, this adds at most
        ``5 + t`` cycles in ``t`` seconds to the schedule's.
        """
        run = self._run
        if run is not None:
            run.ask_cycle()

    # --- lifecycle ------------------------------------------------------------------------

    def start_thread(self) -> threading.Thread:
        """Start the beat, side-effect and (with ``events``) event-stream daemon threads;
        return the beat thread.

        Calling it again while they run starts nothing and returns the same thread. After a
        :meth:`stop` that timed out (a thread was still ending), the new beat thread waits
        for the old threads to end, then starts working; ``status().state`` is ``starting``
        meanwhile.
        """
        # The threads it starts work for this workspace: their log lines say so.
        with _logctx.workspace(self.workspace_id):
            return self._start_thread()

    def _start_thread(self) -> threading.Thread:
        if self._drivers is not None:
            raise RuntimeError(
                f"workspace {self.workspace_id} belongs to a Hub: start and stop the hub"
            )
        if os.getpid() != self._pid:
            self._after_fork_in_child()
        with self._lock:
            current = self._run
            if current is not None and current.working():
                thread = current.thread
                assert thread is not None
                return thread
            if self._life.removed and current is not None:
                logger.error(
                    "workspace %s was removed from the platform; not starting again",
                    self.workspace_id,
                )
                assert current.thread is not None
                return current.thread
            previous = current.threads() if current is not None else []
            previous = [t for t in previous if t is not threading.current_thread()]
            run = self._new_run(previous)
            self._run = run
            thread = run.start()
        if self.exit_timeout is not None:
            _exit.add(self)
        return thread

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the threads; return True if all ended within ``timeout`` seconds.

        Returns within ``timeout`` even if the platform hangs: a request in flight is
        interrupted. Pending side effects are dropped (and counted); to give them a chance
        first, see ``exit_timeout``. With ``on_message``, no message starts any more, and the
        running handlers get what is left of ``timeout`` to return (they cannot be
        interrupted: one still running makes this return False), their answers sent within it
        too; a message that never started stays for the next run. Called from
        ``on_state_change``, it returns at once: the callback's own thread ends when the
        callback returns.
        """
        with self._lock:
            run = self._run
        done = True if run is None else run.stop(timeout)
        _exit.discard(self)
        return done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the Heartbeat has ended: stopped, or its workspace removed.

        Returns True once its threads ended, False if ``timeout`` seconds passed first. A
        Heartbeat never started has ended. So a script can run ``hb.start_thread(); hb.wait()``.
        """
        with self._lock:
            run = self._run
        return True if run is None else run.wait(timeout)

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` seconds for pending wake-ups and notifications to be sent;
        True when nothing is left. A wake-up held back by the cooldown or by a busy agent
        counts as pending. Call it before :meth:`stop` to give side effects a chance."""
        return self._worker.flush(timeout)

    def __enter__(self) -> Heartbeat:
        self.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> _status.Status:
        """An immutable snapshot of the loop's state and counters."""
        # Taken alone: the worker's lock is never held with ours.
        side = self._worker.inspect(lambda work, queued, busy: work.counts(queued))
        with self._lock:
            run = self._run
        state: str | None
        if run is None:
            running, state = False, _status.STOPPED
            registration: tuple[str | None, str | None] = (None, None)
            stream = None
        else:
            running, state = run.state()
            registration = run.cycle.registration()
            stream = run.stream_status()
        if self._life.removed:
            state = _status.REMOVED
        return self._tally.status(
            state,
            running=running,
            paused=self._life.paused,
            side=side,
            workspace_status=self._life.platform_status,
            registration=registration,
            stream=stream,
            handlers=None if self._pool is None else self._pool.counts(),
        )


#: ``Heartbeat.__init__``'s defaults by name: a deprecated positional argument given again by
#: keyword is an error, as Python's own would be.
_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(Heartbeat.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}
