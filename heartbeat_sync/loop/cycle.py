"""One cycle of the beat thread: the beat, the polls, the registration, and the workspace's
state on the platform.

A cycle returns what came of it (an :class:`Outcome`) for the run to act on; it never raises.
The state check returns the state it found; nothing is set on the side for the caller to read
back.
"""

from __future__ import annotations

import enum
import math
import threading
from typing import Any, Callable, Optional

from .. import _status, _wedge
from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from ..delivery import Inbox, Result
from ..effects import build_beat_body
from ..wire import Credentials, CursorGone, PlatformClient, PlatformError
from . import lifecycle as _lifecycle
from .inbound import Inbound
from .lifecycle import Lifecycle
from .registrar import PENDING, Registrar
from .tally import Tally

logger = get_logger(__name__)

#: After this many failed beats in a row the session is rebuilt (the reference's rule).
MAX_CONSECUTIVE_FAILURES = 10
#: Rows asked for per activity page, and pages read per poll when the server has more.
ACTIVITY_PAGE = 100
ACTIVITY_MAX_PAGES = 5

#: Where a cycle's fresh results go (the side-effect worker's ``submit``).
ResultSink = Callable[[list[Result]], object]
#: What is told of a change of ``status().state`` (old, new).
StateSink = Callable[[str, str], None]
#: The beat's ``runtime_metadata`` (None: the key is left out).
MetadataSource = Callable[[], Optional[dict[str, Any]]]


class Outcome(enum.Enum):
    """What came of a cycle (or of the polls alone)."""

    #: The platform answered the beat; the polls ran.
    BEAT_OK = "beat_ok"
    #: The beat failed, but the platform could be reached; the polls ran.
    BEAT_FAILED = "beat_failed"
    #: The platform could not be reached: the polls would only wait and fail too, so none ran.
    UNREACHABLE = "unreachable"
    #: Only the polls were asked for, and they ran.
    POLLED = "polled"
    #: The workspace is paused on the platform: nothing was sent but a state check.
    PAUSED = "paused"
    #: The workspace was removed from the platform: nothing more may be sent.
    REMOVED = "removed"
    #: ``stop()`` interrupted the cycle.
    STOPPED = "stopped"
    #: The cycle raised (a bug, logged); the next one runs as usual.
    CRASHED = "crashed"


class Cycle:
    """The work of one run of the beat thread, a step at a time; on the beat thread only.

    Args:
        workspace_id: The workspace.
        inbox: Where the polls' rows become results.
        tally: The counters: what the beats report, and how they went.
        life: The workspace's lifecycle as last learned (it outlives the run: a removed
            workspace is not started again).
        credentials: Where a new inbound secret is saved.
        metadata: The beat's ``runtime_metadata``.
        on_results: Where fresh results go (the side-effect worker).
        on_state: Told of every change of ``status().state``, never on this thread's time
            (it hands the call to the callbacks' thread).
        registrar: The registration this run owes, or None.
        halt: The run's stop signal: a request it interrupts is no failure.
        inbound: The message handlers' side of the run, or None (no ``on_message``): with it,
            every message to the workspace goes to a handler, none to the results file.
        register_if_waiting: The registration is owed only if the workspace waits for its
            agent (a handler's poll-mode registration: an operator's is never changed).
    """

    def __init__(
        self,
        *,
        workspace_id: str,
        inbox: Inbox,
        tally: Tally,
        life: Lifecycle,
        credentials: Credentials,
        metadata: MetadataSource,
        on_results: ResultSink,
        on_state: StateSink,
        registrar: Registrar | None,
        halt: threading.Event,
        inbound: Inbound | None = None,
        register_if_waiting: bool = False,
    ) -> None:
        self._workspace_id = workspace_id
        self._inbox = inbox
        self._tally = tally
        self._life = life
        self._credentials = credentials
        self._metadata = metadata
        self._on_results = on_results
        self._on_state = on_state
        self._registrar = registrar
        self._halt = halt
        self._inbound = inbound
        self._register_if_waiting = register_if_waiting
        self._warn = RateLimitedLog(logger)
        self._announced = _status.STARTING
        # The last generation a beat's reply carried (the August 2026 platform's).
        self._generation: int | None = None
        self._said_tenant = False
        # Acknowledging activity rows: still worth it (False on a platform without the
        # route), and the highest seq acknowledged.
        self._acks = True
        self._acked = -1
        # A state check ran in this cycle (at most one does); and whether one may run for
        # its interval's sake (not while the event stream is up: it announces every change).
        self._checked = False
        self._periodic = True
        # The last polls left something behind.
        self._owed = False

    # --- what the run calls ---------------------------------------------------------------------

    def run(self, client: PlatformClient, *, polls: bool = True, periodic: bool = True) -> Outcome:
        """Beat, then poll (unless paused, removed or unreachable, or not ``polls``: the event
        stream is up and no safety poll is due); announce a state change. ``periodic``: the
        state may be checked for its interval's sake, not only on a hint."""
        self._checked = False
        self._periodic = periodic
        beat_only = not polls
        outcome = self._guarded(self._beat_only if beat_only else self._beat_and_poll, client)
        self._announce_state()
        return outcome

    def poll(self, client: PlatformClient, *, periodic: bool = True) -> Outcome:
        """Only the polls (the event stream asked for them), with a state check when due;
        a state change found there is announced like a cycle's."""
        self._checked = False
        self._periodic = periodic
        outcome = self._guarded(self._polls, client)
        self._announce_state()
        return outcome

    def check_at_start(self, client: PlatformClient) -> Outcome:
        """Ask the platform what state the workspace is in before anything else of the run
        (a registration, a beat, a state announced): a workspace paused or removed before the
        start is never beaten, registered or reported healthy."""
        outcome = self._guarded(self._first_check, client)
        if outcome is not Outcome.POLLED:
            self._announce_state()
        return outcome

    def registration_due(self) -> float:
        """When a registration attempt is due (monotonic); infinity when none is owed, or
        while the workspace is not active (a pause is never undone by the agent)."""
        registrar = self._registrar
        if registrar is None or self._life.kind != _lifecycle.ACTIVE:
            return math.inf
        return registrar.due_at()

    def registration_owed(self) -> bool:
        """Whether this run registers the workspace (or has): False when it registers only
        a workspace that waits for its agent, and this one did not."""
        return self._registrar is not None and self._registrar.owed

    def register(self, client: PlatformClient) -> bool:
        """Try the registration that is due; True once it is settled (registered, or given
        up), so that whatever waited for its token may start."""
        registrar = self._registrar
        if registrar is None:
            return True
        try:
            state = registrar.attempt(client, self._warn, stopping=self._halt.is_set)
        except Exception:  # a bug must not end the beat thread; try again later
            logger.exception("registration failed")
            registrar.renew()
            return False
        self._tally.set_standing_error("registration", registrar.error)
        return state != PENDING

    def registration(self) -> tuple[str | None, str | None]:
        """The registration's state (None when the run does not register) and why it last
        failed."""
        registrar = self._registrar
        if registrar is None or not registrar.owed:
            return None, None
        return registrar.state, registrar.error

    # --- the steps ----------------------------------------------------------------------------

    def _guarded(
        self, step: Callable[[PlatformClient], Outcome], client: PlatformClient
    ) -> Outcome:
        try:
            outcome = step(client)
        except Exception:  # nothing may kill the beat thread
            logger.exception("heartbeat cycle failed")
            outcome = Outcome.CRASHED
        return Outcome.REMOVED if self._life.kind == _lifecycle.REMOVED else outcome

    def _first_check(self, client: PlatformClient) -> Outcome:
        seen = _lifecycle.probe(client)
        if seen.missing and self._registrar is not None:
            # Not there yet: registering an id the platform does not know creates it.
            logger.debug("the workspace is unknown to the platform; registering creates it")
            return Outcome.POLLED
        kind = self._check_state(client, seen)
        registrar = self._registrar
        waiting = seen.status in _lifecycle.WAITING_FOR_AGENT_STATUSES
        if self._register_if_waiting and registrar is not None and not waiting:
            registrar.stand_down()  # registered already, by its operator: left as it is
        return Outcome.POLLED if kind == _lifecycle.ACTIVE else self._inactive(kind)

    def _beat_and_poll(self, client: PlatformClient, polls: bool = True) -> Outcome:
        if self._life.kind == _lifecycle.PAUSED or self._life.hinted:
            # The platform ignores a paused workspace's beats; a suggested change (an event,
            # a suspicious answer) is looked at before beating a workspace that may be paused.
            kind = self._check_state(client)
            if kind != _lifecycle.ACTIVE:
                return self._inactive(kind)
        beaten = self._beat(client)
        if beaten in (Outcome.UNREACHABLE, Outcome.STOPPED) or not polls:
            return beaten
        polled = self._polls(client)
        return polled if polled in (Outcome.PAUSED, Outcome.REMOVED) else beaten

    def _beat_only(self, client: PlatformClient) -> Outcome:
        outcome = self._beat_and_poll(client, polls=False)
        if outcome in (Outcome.BEAT_OK, Outcome.BEAT_FAILED) and self._check_due():
            kind = self._check_state(client)
            if kind != _lifecycle.ACTIVE:
                return self._inactive(kind)
        return outcome

    def _polls(self, client: PlatformClient) -> Outcome:
        owed = False
        for name, poll in (
            ("poll delegations", self._poll_delegations),
            ("poll activity", self._poll_activity),
        ):
            if self._halt.is_set():
                return Outcome.STOPPED
            kind = self._life.kind
            if kind == _lifecycle.ACTIVE and self._check_due():
                kind = self._check_state(client)
            if kind != _lifecycle.ACTIVE:
                return self._inactive(kind)
            try:
                settled = poll(client)
            except Exception:
                logger.exception("%s failed", name)
                settled = False
            owed = owed or not settled
        if not self._halt.is_set():
            self._owed = owed
        if self._check_due() and not self._halt.is_set():
            self._check_state(client)
        return Outcome.POLLED

    def polls_owed(self) -> bool:
        """Whether the last polls left something behind (a failed request or write, pages
        still to read): the next cycle polls then, whatever the event stream."""
        return self._owed

    def _check_due(self) -> bool:
        """A state check is due, and none ran in this cycle yet: however many of its answers
        were suspicious (a server whose database is down refuses every token), one check a
        cycle says all there is to say; a hint raised after it waits for the next cycle."""
        return not self._checked and self._life.due(self._periodic)

    @staticmethod
    def _inactive(kind: str) -> Outcome:
        return Outcome.REMOVED if kind == _lifecycle.REMOVED else Outcome.PAUSED

    def _beat(self, client: PlatformClient) -> Outcome:
        report = self._tally.beat_report(self._inbound.running() if self._inbound else 0)
        wedged = _wedge.wedge_reason() if _wedge.is_wedged() else None
        body = build_beat_body(
            self._workspace_id,
            error_rate=report.error_rate,
            sample_error=report.sample_error,
            active_tasks=report.active_tasks,
            current_task=report.current_task,
            uptime_seconds=report.uptime_seconds,
            wedge_reason=wedged,
            runtime_metadata=self._metadata(),
            is_busy=report.is_busy,
            observed_generation=self._generation,
        )
        try:
            reply = client.heartbeat(body)
        except Exception as exc:  # PlatformError, or a bug: either way a failed beat
            if self._halt.is_set():
                return Outcome.STOPPED  # interrupted by stop(), not a failure of the platform
            self._hint(exc)
            self._beat_failed(client, exc)
            if isinstance(exc, PlatformError) and (exc.connect_error or exc.status == 429):
                # Unreachable, or the rate limit holds every request: polls would only fail.
                return Outcome.UNREACHABLE
            return Outcome.BEAT_FAILED
        recovered = self._tally.beat_succeeded(report)
        if recovered:
            logger.info("heartbeat recovered after %d failed beat(s)", recovered)
        self._warn.reset("beat")
        if reply.inbound_secret:
            self._credentials.save_inbound_secret(reply.inbound_secret)
        if reply.generation is not None:
            # Sent back from the next beat on: the platform then knows the agent saw it.
            self._generation = reply.generation
        return Outcome.BEAT_OK

    def _beat_failed(self, client: PlatformClient, exc: Exception) -> None:
        # Never repr() a foreign exception: it may quote a request header (the token).
        error = str(exc) if isinstance(exc, PlatformError) else type(exc).__name__
        failures = self._tally.beat_failed(error)
        if isinstance(exc, PlatformError) and exc.status == 429:
            # The rate limit's view says it once for every Heartbeat of its key.
            logger.debug("heartbeat refused by the rate limit: %s", error)
        elif not self._tenant_missing(exc):
            self._warn.warning("beat", "heartbeat failed (%d consecutive): %s", failures, error)
        if failures % MAX_CONSECUTIVE_FAILURES == 0:
            logger.info("recreating the HTTP session after %d failed beats", failures)
            client.rebuild()

    # --- the polls ----------------------------------------------------------------------------

    def _poll_failed(self, key: str, what: str, exc: PlatformError) -> None:
        if self._halt.is_set():  # a poll interrupted by stop() is not a platform failure
            return
        if exc.status == 429:  # the rate limit's view says it, once for every Heartbeat
            logger.debug("%s poll not done: %s", what, exc)
            return
        if self._tenant_missing(exc):
            return
        self._hint(exc)
        self._warn.warning(key, "%s poll failed: %s", what, exc)

    def _tenant_missing(self, exc: BaseException) -> bool:
        """A refusal for want of the tenant header: one ERROR a run, ``last_error`` says it;
        then quiet (no retry can help, and the next cycle asks no sooner than its slot)."""
        if not (isinstance(exc, PlatformError) and exc.tenant_required):
            return False
        self._tally.set_standing_error("tenant", str(exc))
        if not self._said_tenant:
            self._said_tenant = True
            logger.error("%s", exc)
        return True

    def _poll_delegations(self, client: PlatformClient) -> bool:
        """True when the poll read the rows and the files took what was fresh in them."""
        try:
            rows = client.delegations()
        except PlatformError as exc:
            self._poll_failed("delegations", "delegations", exc)
            return False
        self._warn.reset("delegations")
        self._delivered(self._inbox.delegations(rows))
        return self._inbox.writable()

    def _poll_activity(self, client: PlatformClient) -> bool:
        """The ``a2a_receive`` rows past the cursor, up to :data:`ACTIVITY_MAX_PAGES` pages;
        the rest follows next poll. True when nothing was left behind (a failed request or
        write, or pages still to read)."""
        inbound = self._inbound
        if inbound is not None and not inbound.ready(client, registered_poll=self._polls_here()):
            inbound = None  # push mode: the messages go to the workspace's URL
        peers_only = inbound is None  # a handler takes the canvas's messages too
        settled = True
        since = self._inbox.activity_since()
        handled: int | None = None  # the highest seq of the rows handled in this poll
        for _ in range(ACTIVITY_MAX_PAGES):
            try:
                try:
                    rows = client.activity(since, limit=ACTIVITY_PAGE, peers_only=peers_only)
                except CursorGone:
                    self._inbox.forget(since)
                    since = None
                    rows = client.activity(None, limit=ACTIVITY_PAGE, peers_only=peers_only)
            except PlatformError as exc:
                self._poll_failed("activity", "activity", exc)
                settled = False
                break
            self._warn.reset("activity")
            if inbound is None:
                page = self._inbox.activity_page(rows, since, ACTIVITY_PAGE)
            else:
                page = self._inbox.activity_page(
                    rows, since, ACTIVITY_PAGE, capacity=inbound.capacity(), owner=inbound.owner
                )
                inbound.dispatch(page.claimed, waiting=page.waiting)
                if page.malformed:
                    self._tally.skipped(page.malformed)
                    self._warn.warning(
                        "message-rows", "skipped %d activity row(s) without an id", page.malformed
                    )
            self._delivered(page.fresh)
            if page.failed:
                return False  # rows left to a later poll: nothing is acknowledged beyond them
            if page.handled_seq is not None:
                handled = max(handled or 0, page.handled_seq)
            if page.next_since is None:
                break
            since = page.next_since
        else:
            logger.info("read %d pages of activity; the rest follows next poll", ACTIVITY_MAX_PAGES)
            settled = False
        self._acknowledge(client, handled)
        return settled and self._inbox.writable()

    def _polls_here(self) -> bool:
        """Whether this run registers the workspace in poll mode (its URL, if it had one, no
        longer takes its messages)."""
        registrar = self._registrar
        return self.registration_owed() and registrar is not None and registrar.poll_mode

    def _acknowledge(self, client: PlatformClient, handled: int | None) -> None:
        """Tell the platform the rows up to ``handled`` (a ``seq``) are safe on this side: the
        results written, the journal committed. Once a poll at most, only past what it was
        told before; a platform without the route (404) is not asked again this run."""
        if handled is None or not self._acks or handled <= self._acked:
            return
        try:
            self._acked = max(handled, client.ack_activity(handled))
        except PlatformError as exc:
            if self._halt.is_set():
                return
            if exc.status == 404:
                self._acks = False
                logger.debug("not acknowledging activity rows this run: %s", exc)
                return
            self._warn.warning("ack", "activity ack failed, tried again next poll: %s", exc)
            return
        self._warn.reset("ack")

    def _delivered(self, fresh: list[Result]) -> None:
        if not fresh:
            return
        self._tally.delivered(len(fresh))
        logger.info("%d new result(s) written to %s", len(fresh), self._inbox.results_path)
        self._on_results(fresh)

    # --- the workspace's state on the platform ------------------------------------------------

    def _hint(self, exc: BaseException) -> None:
        if _lifecycle.suspicious(exc) and not self._halt.is_set():
            self._life.hint()

    def _check_state(
        self, client: PlatformClient, seen: _lifecycle.Observation | None = None
    ) -> str:
        """Ask the platform (unless ``seen`` says already) and return the workspace's kind."""
        since = None
        if seen is None:
            since = self._life.hints_seen()  # a hint during the request is kept
            seen = _lifecycle.probe(client)
        self._checked = True
        old, new = self._life.update(seen, since)
        if new == old:
            return new
        if new == _lifecycle.REMOVED:
            logger.error(
                "workspace %s was removed from the platform (%s): the heartbeat ended, "
                "nothing more is sent",
                self._workspace_id,
                seen.evidence,
            )
        elif new == _lifecycle.PAUSED:
            logger.warning(
                "workspace %s is %s on the platform: no beats until it is resumed (%s)",
                self._workspace_id,
                seen.status,
                seen.evidence,
            )
        else:
            logger.info("workspace %s is %s on the platform again", self._workspace_id, seen.status)
            if seen.status in _lifecycle.AWAITING_AGENT_STATUSES and self._registrar is not None:
                self._registrar.renew()  # a pause cleared the agent's URL
        return new

    def _announce_state(self) -> None:
        if self._life.kind == _lifecycle.REMOVED:
            new = _status.REMOVED
        else:
            new = self._tally.live_state(self._life.kind == _lifecycle.PAUSED)
        old, self._announced = self._announced, new
        if new != old:
            self._on_state(old, new)
