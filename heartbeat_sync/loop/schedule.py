"""The beat schedule as arithmetic: a workspace's phase, the first beat, and the slots after it.

Nothing here reads a clock, sleeps or draws a random number: the loop passes the clocks' readings
and a draw in, so every rule is tested without threads.

The first beat comes at once (within a small jitter): the platform learns of a restarted workspace
without delay. Every later beat falls on a *slot*: one of the instants where the wall clock,
shifted by the workspace's phase, is a multiple of the interval. The phase is a stable hash of
the workspace id over the interval, as Prometheus spreads its scrapes: a fleet started at one
moment (a platform redeploy restarts every workspace) spreads over the interval from its second
beat on, however it was started, and a restarted workspace keeps its slot. The slots are found
on the wall clock once, at start, and then followed on the monotonic clock, so a wall-clock jump
never bunches or skips beats.

Hashed phases are spread at random, not evenly: 200 of them crowd up to about twice the mean
into some twentieth of the interval. A workspace's siblings (the workspaces under the same
parent, or the other top-level ones) are known to each of them, so each can find the same
order and take an even share: :func:`team_phase` places a team of ``n`` at ``1/n`` apart, the
team's offset hashed from its parent. Every member works it out alone from the same list, so
a team restarted at one moment spreads evenly, and keeps its slots while its members stay.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

#: The first beat comes within this share of the interval...
FIRST_BEAT_SHARE = 0.1
#: ...and never later than this many seconds after start.
FIRST_BEAT_MAX_JITTER = 0.25


def phase_of(workspace_id: str) -> float:
    """The workspace's place in the interval, in [0, 1): the same for the same id, everywhere.

    A hash, not Python's ``hash()`` (salted per process): every process, machine and restart
    agrees on it.
    """
    digest = hashlib.blake2b(workspace_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def team_phase(workspace_id: str, siblings: Iterable[str], parent_id: str | None) -> float:
    """The workspace's phase among its team: itself and ``siblings`` (the ids of the other
    workspaces with the same ``parent_id``), evenly spread over the interval.

    The members are ordered by their hashed phases and placed ``1/n`` apart from an offset
    hashed from the parent's id (so that teams do not all begin at one place). Each member
    computes its own place from the same ids, and all agree. A workspace alone keeps
    :func:`phase_of` its id.
    """
    team = sorted({workspace_id, *siblings}, key=lambda member: (phase_of(member), member))
    if len(team) == 1:
        return phase_of(workspace_id)
    offset = phase_of(f"team:{parent_id or ''}")
    return (offset + team.index(workspace_id) / len(team)) % 1.0


def first_beat_delay(interval: float, draw: float) -> float:
    """Seconds from start to the first beat: ``draw`` (in [0, 1)) of a small jitter.

    The jitter is a tenth of the interval, at most :data:`FIRST_BEAT_MAX_JITTER` seconds:
    enough to keep a fleet that starts at one moment from arriving in one instant.
    """
    return min(1.0, max(0.0, draw)) * min(FIRST_BEAT_SHARE * interval, FIRST_BEAT_MAX_JITTER)


def slot_origin(phase: float, interval: float, mono_now: float, wall_now: float) -> float:
    """A monotonic time on the workspace's slot grid: the next instant at which the wall
    clock minus ``phase * interval`` is a multiple of ``interval``."""
    return mono_now + (phase * interval - wall_now) % interval


def next_slot(origin: float, interval: float, after: float) -> float:
    """The first slot (``origin + k * interval`` for an integer k) strictly later than ``after``.

    Slots are computed from the origin, never by adding intervals up, so no error accumulates;
    slots missed during a stall are skipped, never run in a burst.
    """
    k = math.floor((after - origin) / interval) + 1
    slot = origin + k * interval
    while slot <= after:  # rounding at a slot boundary
        k += 1
        slot = origin + k * interval
    return slot


def slot_after_cycle(
    origin: float, interval: float, scheduled: float, now: float, *, first: bool
) -> float:
    """When the cycle after the one scheduled at ``scheduled`` (finished at ``now``) is due.

    After the first beat, the next slot at least half an interval later: the second beat
    then comes 0.5 to 1.5 intervals after the first, never right behind it. After any other
    beat, the next slot after both the one just run and the present.
    """
    after = max(scheduled + (interval / 2 if first else 0.0), now)
    return next_slot(origin, interval, after)


class TokenBucket:
    """When the next extra step may run: a token bucket, pure arithmetic on given times.

    ``burst`` steps may run back to back after a quiet spell; beyond that, ``rate`` a second.
    At most ``burst + rate * t`` steps run in any ``t`` seconds. It paces both kinds of extra
    work the beat thread does on request: the cycles ``beat_now()`` and a new ``current_task``
    ask for (:data:`FORCED_BURST`, :data:`FORCED_RATE`: a script that changes its task five
    times in a second is beaten five times, a storm once a second), and the polls the event
    stream asks for (:data:`POLL_BURST`, :data:`POLL_RATE`: each event's poll at once, a storm
    paced), so that requests stay well inside the platform's rate limit (600 a minute per
    token) whatever the caller or the platform does. A clock reading older than the last one
    refills nothing.
    """

    def __init__(self, burst: int, rate: float) -> None:
        if burst < 1 or not rate > 0:
            raise ValueError("burst must be >= 1 and rate > 0")
        self.burst = float(burst)
        self.rate = float(rate)
        self._tokens = float(burst)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now if self._at is None else max(self._at, now)

    def ready_at(self, now: float) -> float:
        """The earliest time (``now`` or later) the next step may run."""
        self._refill(now)
        if self._tokens >= 1.0:
            return now
        return now + (1.0 - self._tokens) / self.rate

    def take(self, now: float) -> None:
        """Count one step run at ``now``."""
        self._refill(now)
        self._tokens = max(0.0, self._tokens - 1.0)


#: Cycles asked for (``beat_now()``, a new ``current_task``) that may run back to back, and
#: how many a second once those are spent.
FORCED_BURST = 5
FORCED_RATE = 1.0
#: Polls asked for by the event stream that may run back to back, and how many a second
#: after that (a poll is two or more requests).
POLL_BURST = 10
POLL_RATE = 4.0


# --- the beat thread's next step ----------------------------------------------------------


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
    forced: TokenBucket,
    pacer: TokenBucket,
    register_at: float = math.inf,
    poll_cost: float = 0.0,
    held_until: float = -math.inf,
    polls_from: float = -math.inf,
) -> Step:
    """Decide what to do at ``now`` (pure; the buckets are only read, never spent).

    A registration attempt is due at ``register_at`` and goes first (a beat after it carries
    the token it may bring); nothing the caller asks for makes it come sooner. A cycle is due
    at its slot, or sooner when one was asked for and the forced-cycle bucket has credit; the
    polls alone when the event stream asked and the pacer allows. A due cycle wins over the
    polls (it polls too), and so does one due within ``poll_cost`` seconds (how long the polls
    may take): polls that would still run at the slot would make the beat late. Nothing is
    sent before ``held_until`` (a 429 of the rate limit's key), and no poll alone before
    ``polls_from`` (the rate limit's window runs low: the beats go on).
    """
    if now < held_until:
        return Step(Act.WAIT, until=held_until)  # a 429 holds every request of the key
    if now >= register_at:
        return Step(Act.REGISTER)
    beat_due = min(next_slot, forced.ready_at(now)) if beat_asked else next_slot
    poll_due = max(pacer.ready_at(now), polls_from) if poll_asked else math.inf
    if poll_due + poll_cost >= beat_due:
        poll_due = math.inf  # the cycle at the slot polls
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
            self.next_at = mono_now + first_beat_delay(interval, draw)
            self.move_to(phase_of(workspace_id), mono_now, wall_now)
        else:
            self.next_at = mono_now + draw * start_phase * interval
            self._origin = self.next_at
        self._first = True

    def move_to(self, phase: float, mono_now: float, wall_now: float) -> None:
        """Follow the slots of ``phase`` from now on (the cycle due next keeps its time)."""
        self._origin = slot_origin(phase, self.interval, mono_now, wall_now)

    def after_cycle(self, now: float) -> None:
        """Move on after a cycle that ended at ``now``. An extra cycle run before its slot
        leaves the slot standing; slots missed during a stall are skipped, never run in a
        burst."""
        if self.next_at > now:
            return
        self.next_at = slot_after_cycle(
            self._origin, self.interval, self.next_at, now, first=self._first
        )
        self._first = False
