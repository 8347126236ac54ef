"""The beat thread's loop: wait for the next slot, a cycle the caller asked for, or a poll the
event stream asked for; then run it.

The decisions are pure (:func:`next_step`, :class:`Slots`: times in, times out), so every rule
is tested without threads or sleeps; :class:`RunLoop` only reads the clock, waits and acts.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

from . import _schedule, _team
from ._client import PlatformClient, PlatformError
from ._cycle import Cycle, Outcome
from ._parts import Parts

logger = logging.getLogger(__name__)


class Act(enum.Enum):
    """What the beat thread does next."""

    WAIT = "wait"
    REGISTER = "register"
    POLL = "poll"
    CYCLE = "cycle"


@dataclass(frozen=True)
class Step:
    """The loop's next step: ``WAIT`` until ``until``, ``POLL``, or ``CYCLE`` (``forced``
    when the caller asked for it ahead of its slot)."""

    act: Act
    until: float = 0.0
    forced: bool = False


def next_step(
    now: float,
    next_slot: float,
    *,
    beat_asked: bool,
    poll_asked: bool,
    forced: _schedule.TokenBucket,
    pacer: _schedule.TokenBucket,
    register_at: float = math.inf,
) -> Step:
    """Decide what to do at ``now`` (pure; the buckets are only read, never spent).

    A registration attempt is due at ``register_at`` and goes first (a beat after it carries
    the token it may bring); nothing the caller asks for makes it come sooner. A cycle is due
    at its slot, or sooner when one was asked for and the forced-cycle bucket has credit; the
    polls alone when the event stream asked and the pacer allows. A due cycle wins over the
    polls (it polls too).
    """
    if now >= register_at:
        return Step(Act.REGISTER)
    beat_due = min(next_slot, forced.ready_at(now)) if beat_asked else next_slot
    poll_due = pacer.ready_at(now) if poll_asked else math.inf
    if now < beat_due and now < poll_due:
        return Step(Act.WAIT, until=min(beat_due, poll_due, register_at))
    if now < beat_due:
        return Step(Act.POLL)
    return Step(Act.CYCLE, forced=beat_asked and next_slot > now)


class Slots:
    """Where the beat thread is on its slot grid (pure: the times are given).

    By default the first beat comes at once (a small jitter), the later ones on the slots of
    the workspace's phase. With the deprecated ``start_phase``: the first beat after a random
    share of the interval up to that fraction, then a fixed rate from there.
    """

    def __init__(
        self,
        interval: float,
        workspace_id: str,
        start_phase: float | None,
        draw: float,
        mono_now: float,
        wall_now: float,
    ) -> None:
        self.interval = interval
        if start_phase is None:
            #: When the next regular cycle is due, on the monotonic clock.
            self.next_at = mono_now + _schedule.first_beat_delay(interval, draw)
            self.move_to(_schedule.phase_of(workspace_id), mono_now, wall_now)
        else:
            self.next_at = mono_now + draw * start_phase * interval
            self._origin = self.next_at
        self._first = True

    def move_to(self, phase: float, mono_now: float, wall_now: float) -> None:
        """Follow the slots of ``phase`` from now on (the cycle due next keeps its time)."""
        self._origin = _schedule.slot_origin(phase, self.interval, mono_now, wall_now)

    def after_cycle(self, now: float) -> None:
        """Move on after a cycle that ended at ``now``. An extra cycle run before its slot
        leaves the slot standing; slots missed during a stall are skipped, never run in a
        burst."""
        if self.next_at > now:
            return
        self.next_at = _schedule.slot_after_cycle(
            self._origin, self.interval, self.next_at, now, first=self._first
        )
        self._first = False


class RunLoop:
    """The loop of one run of the beat thread.

    Args:
        cycle: Runs the cycles and the polls.
        parts: What the Heartbeat's beat thread shares: the settings give the slots (the
            interval, the workspace id, the deprecated ``start_phase``, the first beat's
            jitter), the wakeups wake the loop.
        stopped: True once this run must end.
        on_registered: Called once the run's registration is settled (registered, or given
            up): what needs its token may start.
        clock: The monotonic clock.
        wall_clock: The wall clock, read once to find the slots.
    """

    def __init__(
        self,
        cycle: Cycle,
        parts: Parts,
        *,
        stopped: Callable[[], bool],
        on_registered: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        settings = parts.settings
        self._cycle = cycle
        self._wakeups = parts.wakeups
        self._stopped = stopped
        self._on_registered = on_registered
        self._clock = clock
        self._wall_clock = wall_clock
        self._slots = Slots(
            settings.interval_seconds,
            settings.workspace_id,
            settings.start_phase,
            settings.rng.random(),
            clock(),
            wall_clock(),
        )
        # Lookups of the team left to try; none with the deprecated start_phase.
        self._team_tries = _team.MAX_TRIES if settings.start_phase is None else 0
        # Cycles asked for by beat_now()/current_task: a few at once, a storm paced.
        self._forced = _schedule.TokenBucket(_schedule.FORCED_BURST, _schedule.FORCED_RATE)
        # Polls asked for by the event stream: sparse ones at once, a storm paced.
        self._pacer = _schedule.TokenBucket(_schedule.POLL_BURST, _schedule.POLL_RATE)

    def run(self, client: PlatformClient) -> Outcome:
        """Run cycles until stopped (``STOPPED``) or until the workspace is removed
        (``REMOVED``). The run begins with a look at the workspace's state."""
        wakeups = self._wakeups
        if self._cycle.check_at_start(client) is Outcome.REMOVED:
            return Outcome.REMOVED
        while True:
            now = self._clock()
            step = next_step(
                now,
                self._slots.next_at,
                beat_asked=wakeups.beat_asked,
                poll_asked=wakeups.poll_asked,
                forced=self._forced,
                pacer=self._pacer,
                register_at=self._cycle.registration_due(),
            )
            if step.act is Act.WAIT:
                wakeups.sleep(step.until - now)
            if self._stopped():
                return Outcome.STOPPED
            if step.act is Act.WAIT:
                continue
            if step.act is Act.REGISTER:
                if self._cycle.register(client):
                    self._on_registered()
                continue
            wakeups.poll_asked = False  # a cycle polls too; an event during it polls again
            if step.act is Act.POLL:
                self._pacer.take(now)
                outcome = self._cycle.poll(client)
            else:
                wakeups.beat_asked = False
                if step.forced:
                    self._forced.take(now)  # an extra cycle, not the regular slot
                outcome = self._cycle.run(client)
                if outcome is Outcome.BEAT_OK and self._team_tries:
                    self._find_team(client)
                if outcome is not Outcome.REMOVED:
                    self._slots.after_cycle(self._clock())
            if outcome is Outcome.REMOVED:
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
