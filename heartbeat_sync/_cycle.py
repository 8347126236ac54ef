"""One cycle of the beat thread: the beat, the polls, and the workspace's state on the platform.

A cycle returns what came of it (an :class:`Outcome`) for the run loop to act on; it never
raises, and nothing is set on the side for the caller to read back.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import Callable

from . import _lifecycle, _metadata, _status, _texts, _wedge
from ._auth import Credentials
from ._client import PlatformClient, PlatformError
from ._parts import Parts
from ._polls import Polls
from ._register import PENDING, REGISTER_RETRY_FIRST, REGISTER_RETRY_MAX, Registrar

logger = logging.getLogger("heartbeat_sync")

#: After this many failed beats in a row the session is rebuilt (the reference's rule).
MAX_CONSECUTIVE_FAILURES = 10


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
    """The beat thread's work, one cycle at a time; runs on the beat thread only.

    Args:
        parts: What the Heartbeat's beat thread shares (settings, counters, lifecycle, the
            side-effect worker, the callbacks' thread, the rate-limited log, the stop flag).
        credentials: The token a registration reads and may bring; where a new inbound
            secret is saved.
    """

    def __init__(self, parts: Parts, credentials: Credentials) -> None:
        self._parts = parts
        self._credentials = credentials
        self._life = parts.life  # read at every step
        self._notified_state = _status.STARTING
        self._registrar: Registrar | None = None
        self.polls = Polls(parts, hint=self._hint)

    def run(self, client: PlatformClient) -> Outcome:
        """Beat, then poll (unless paused, removed or unreachable); announce a state change."""
        outcome = self._guarded(self._beat_and_poll, client)
        self._announce_state()
        return outcome

    def poll(self, client: PlatformClient) -> Outcome:
        """Only the polls (the event stream asked for them), with a state check when due;
        a state change found there is announced like a cycle's."""
        outcome = self._guarded(self._polls, client)
        self._announce_state()
        return outcome

    def start_run(self) -> None:
        """A run begins: a registration is owed (when the Heartbeat registers)."""
        settings = self._parts.settings
        if settings.registration is None:
            self._registrar = None
            return
        interval = settings.interval_seconds
        first = min(REGISTER_RETRY_FIRST, interval)
        self._registrar = Registrar(
            settings.registration,
            self._credentials,
            first_delay=first,
            max_delay=min(REGISTER_RETRY_MAX, max(first, interval)),
        )

    def check_at_start(self, client: PlatformClient) -> Outcome:
        """Ask the platform what state the workspace is in before anything else of the run
        (a registration, a beat, a state announced): a workspace paused or removed before the
        start is never beaten, registered or reported healthy."""
        outcome = self._guarded(self._first_check, client)
        if outcome is not Outcome.POLLED:
            self._announce_state()
        return outcome

    def _first_check(self, client: PlatformClient) -> Outcome:
        seen = _lifecycle.probe(client)
        if seen.missing and self._registrar is not None:
            # Not there yet: registering an id the platform does not know creates it.
            logger.debug("the workspace is unknown to the platform; registering creates it")
            return Outcome.POLLED
        self._check_state(client, seen)
        return Outcome.POLLED if self._life.kind == _lifecycle.ACTIVE else self._inactive()

    def registration_due(self) -> float:
        """When a registration attempt is due (monotonic); infinity when none is owed, or
        while the workspace is not active (a pause is never undone by the agent)."""
        registrar = self._registrar
        if registrar is None or self._life.kind != _lifecycle.ACTIVE:
            return math.inf
        return registrar.due_at()

    def register(self, client: PlatformClient) -> bool:
        """Try the registration that is due; True once it is settled (registered, or given
        up), so that whatever waited for its token may start."""
        registrar = self._registrar
        if registrar is None:
            return True
        try:
            state = registrar.attempt(client, self._parts.warn, stopping=self._parts.stopping)
        except Exception:  # a bug must not end the beat thread; try again later
            logger.exception("registration failed")
            registrar.renew()
            return False
        if registrar.error is not None:
            self._parts.tally.set_last_error(registrar.error)
        return state != PENDING

    def registration(self) -> tuple[str | None, str | None]:
        """The registration's state (None when the Heartbeat does not register) and why it
        last failed."""
        registrar = self._registrar
        if registrar is None:
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

    def _beat_and_poll(self, client: PlatformClient) -> Outcome:
        if self.polls.reload_ids:
            self.polls.recover_files()
        if self._life.kind == _lifecycle.PAUSED or self._life.hinted:
            # The platform ignores a paused workspace's beats; a suggested change (an event,
            # a suspicious answer) is looked at before beating a workspace that may be paused.
            self._check_state(client)
            if self._life.kind != _lifecycle.ACTIVE:
                return Outcome.PAUSED
        beaten = self._beat(client)
        if beaten in (Outcome.UNREACHABLE, Outcome.STOPPED):
            return beaten
        polled = self._polls(client)
        return polled if polled in (Outcome.PAUSED, Outcome.REMOVED) else beaten

    def _polls(self, client: PlatformClient) -> Outcome:
        if self.polls.reload_ids:
            self.polls.recover_files()
        for name, poll in (
            ("poll delegations", self.polls.delegations),
            ("poll activity", self.polls.activity),
        ):
            if self._parts.stopping():
                return Outcome.STOPPED
            if self._life.kind != _lifecycle.ACTIVE:
                return self._inactive()
            if self._life.due():
                self._check_state(client)
                if self._life.kind != _lifecycle.ACTIVE:
                    return self._inactive()
            try:
                poll(client)
            except Exception:
                logger.exception("%s failed", name)
        if self._life.due() and not self._parts.stopping():
            self._check_state(client)
        return Outcome.POLLED

    def _inactive(self) -> Outcome:
        return Outcome.REMOVED if self._life.kind == _lifecycle.REMOVED else Outcome.PAUSED

    def _beat(self, client: PlatformClient) -> Outcome:
        report = self._parts.tally.beat_report()
        wedged = _wedge.wedge_reason() if _wedge.is_wedged() else None
        settings = self._parts.settings
        body = _texts.build_beat_body(
            settings.workspace_id,
            error_rate=report.error_rate,
            sample_error=report.sample_error,
            active_tasks=report.active_tasks,
            current_task=report.current_task,
            uptime_seconds=report.uptime_seconds,
            wedge_reason=wedged,
            runtime_metadata=_metadata.collect(settings.runtime_metadata, settings.adapter_module),
        )
        try:
            reply = client.heartbeat(body)
        except Exception as exc:  # PlatformError, or a bug: either way a failed beat
            if self._parts.stopping():
                return Outcome.STOPPED  # interrupted by stop(), not a failure of the platform
            self._hint(exc)
            self._beat_failed(client, exc)
            if isinstance(exc, PlatformError) and exc.connect_error:
                return Outcome.UNREACHABLE
            return Outcome.BEAT_FAILED
        recovered = self._parts.tally.beat_succeeded(report)
        if recovered:
            logger.info("heartbeat recovered after %d failed beat(s)", recovered)
        self._parts.warn.reset("beat")
        if reply.inbound_secret:
            self._credentials.save_inbound_secret(reply.inbound_secret)
        return Outcome.BEAT_OK

    def _beat_failed(self, client: PlatformClient, exc: Exception) -> None:
        # Never repr() a foreign exception: it may quote a request header (the token).
        error = str(exc) if isinstance(exc, PlatformError) else type(exc).__name__
        failures = self._parts.tally.beat_failed(error)
        self._parts.warn.warning("beat", "heartbeat failed (%d consecutive): %s", failures, error)
        if failures % MAX_CONSECUTIVE_FAILURES == 0:
            logger.info("recreating the HTTP session after %d failed beats", failures)
            client.rebuild()

    # --- the workspace's state on the platform ------------------------------------------------

    def _hint(self, exc: BaseException) -> None:
        if _lifecycle.suspicious(exc) and not self._parts.stopping():
            self._life.hint()

    def _check_state(
        self, client: PlatformClient, seen: _lifecycle.Observation | None = None
    ) -> None:
        if seen is None:
            seen = _lifecycle.probe(client)
        old, new = self._life.update(seen)
        if new == old:
            return
        workspace_id = self._parts.settings.workspace_id
        if new == _lifecycle.REMOVED:
            logger.error(
                "workspace %s was removed from the platform (%s): the heartbeat ended, "
                "nothing more is sent",
                workspace_id,
                seen.evidence,
            )
        elif new == _lifecycle.PAUSED:
            logger.warning(
                "workspace %s is %s on the platform: no beats until it is resumed (%s)",
                workspace_id,
                seen.status,
                seen.evidence,
            )
        else:
            logger.info("workspace %s is %s on the platform again", workspace_id, seen.status)
            if seen.status in _lifecycle.AWAITING_AGENT_STATUSES and self._registrar is not None:
                self._registrar.renew()  # a pause cleared the agent's URL

    def _announce_state(self) -> None:
        if self._life.kind == _lifecycle.REMOVED:
            new = _status.REMOVED
        else:
            new = self._parts.tally.live_state(self._life.kind == _lifecycle.PAUSED)
        old, self._notified_state = self._notified_state, new
        callback = self._parts.settings.on_state_change
        if callback is not None and new != old:
            self._parts.callbacks.call(lambda: callback(old, new))
