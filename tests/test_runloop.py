"""The beat thread's decisions, pure: what to do at a given time, and where the next slot is.

No threads, no sleeps: times are numbers passed in.
"""

from __future__ import annotations

import math

import pytest

from heartbeat_sync.loop.schedule import Act, Slots, Step, TokenBucket, next_step


def decide(
    now: float,
    slot: float,
    *,
    beat: bool = False,
    poll: bool = False,
    forced: TokenBucket | None = None,
    pacer: TokenBucket | None = None,
    register: float = math.inf,
    poll_cost: float = 0.0,
) -> Step:
    return next_step(
        now,
        slot,
        beat_asked=beat,
        poll_asked=poll,
        forced=forced or TokenBucket(5, 1.0),
        pacer=pacer or TokenBucket(10, 4.0),
        register_at=register,
        poll_cost=poll_cost,
    )


def spent_forced(now: float) -> TokenBucket:
    bucket = TokenBucket(burst=1, rate=1.0)
    bucket.take(now)
    return bucket


def spent_pacer(now: float) -> TokenBucket:
    pacer = TokenBucket(burst=1, rate=4.0)
    pacer.take(now)
    return pacer


@pytest.mark.parametrize(
    ("case", "step", "expected"),
    [
        ("nothing asked: wait for the slot", decide(10.0, 12.0), Step(Act.WAIT, until=12.0)),
        ("the slot has come: a regular cycle", decide(12.0, 12.0), Step(Act.CYCLE)),
        ("a slot missed by a stall: a cycle", decide(15.0, 12.0), Step(Act.CYCLE)),
        (
            "beat_now with credit: an extra cycle at once",
            decide(10.0, 12.0, beat=True),
            Step(Act.CYCLE, forced=True),
        ),
        (
            "beat_now at the slot: the regular cycle, no credit spent",
            decide(12.0, 12.0, beat=True),
            Step(Act.CYCLE, forced=False),
        ),
        (
            "beat_now with the bucket spent: wait for its refill",
            decide(10.0, 12.0, beat=True, forced=spent_forced(10.0)),
            Step(Act.WAIT, until=11.0),
        ),
        (
            "beat_now with the bucket spent and the slot sooner: wait for the slot",
            decide(10.0, 10.5, beat=True, forced=spent_forced(10.0)),
            Step(Act.WAIT, until=10.5),
        ),
        (
            "an event's poll: the polls alone, at once",
            decide(10.0, 12.0, poll=True),
            Step(Act.POLL),
        ),
        (
            "an event's poll with the pacer spent: wait for it",
            decide(10.0, 12.0, poll=True, pacer=spent_pacer(10.0)),
            Step(Act.WAIT, until=10.25),
        ),
        (
            "an event's poll that would still run at the slot: wait for the cycle (it polls "
            "too), so that the beat is not late",
            decide(11.95, 12.0, poll=True, poll_cost=0.1),
            Step(Act.WAIT, until=12.0),
        ),
        (
            "an event's poll that ends before the slot: at once",
            decide(11.85, 12.0, poll=True, poll_cost=0.1),
            Step(Act.POLL),
        ),
        (
            "a poll and a cycle both due: the cycle (it polls too)",
            decide(12.0, 12.0, poll=True),
            Step(Act.CYCLE),
        ),
        (
            "a poll and a beat both asked: the cycle",
            decide(10.0, 12.0, beat=True, poll=True),
            Step(Act.CYCLE, forced=True),
        ),
        (
            "a registration due: it goes first, even before a due cycle",
            decide(12.0, 12.0, beat=True, poll=True, register=11.0),
            Step(Act.REGISTER),
        ),
        (
            "a registration due before the slot: wait for the registration",
            decide(10.0, 12.0, register=11.0),
            Step(Act.WAIT, until=11.0),
        ),
        (
            "beat_now while a registration waits out its backoff: a cycle, no registration",
            decide(10.0, 12.0, beat=True, register=40.0),
            Step(Act.CYCLE, forced=True),
        ),
    ],
)
def test_next_step(case: str, step: Step, expected: Step) -> None:
    assert step == expected, case


def test_next_step_spends_no_credit() -> None:
    forced, pacer = TokenBucket(1, 1.0), TokenBucket(1, 4.0)
    for _ in range(3):
        assert decide(10.0, 12.0, beat=True, forced=forced).forced
        assert decide(10.0, 12.0, poll=True, pacer=pacer).act is Act.POLL


def test_first_beat_comes_within_the_jitter_then_on_the_workspace_grid() -> None:
    slots = Slots(10.0, "ws-1", None, draw=0.5, mono_now=100.0, wall_now=5000.0)
    assert 100.0 <= slots.next_at <= 100.25
    first = slots.next_at
    slots.after_cycle(first + 0.01)
    second = slots.next_at
    # The second beat 0.5 to 1.5 intervals after the first, on the grid from then on.
    assert first + 5.0 <= second <= first + 15.0
    slots.after_cycle(second + 0.01)
    assert slots.next_at == pytest.approx(second + 10.0)


def test_moving_to_the_team_phase_puts_the_second_beat_on_the_teams_grid() -> None:
    # The wall clock reads 5000 when the monotonic one reads 100: wall = mono + 4900.
    slots = Slots(10.0, "ws-1", None, draw=0.0, mono_now=100.0, wall_now=5000.0)
    first = slots.next_at
    slots.move_to(0.25, mono_now=first + 0.01, wall_now=first + 4900.01)
    assert slots.next_at == first  # the cycle due now keeps its time
    slots.after_cycle(first + 0.02)
    # Half an interval at least after the first beat, where the wall clock is 2.5 past a
    # multiple of 10.
    assert slots.next_at + 4900.0 == pytest.approx(5012.5)
    slots.after_cycle(slots.next_at + 0.01)
    assert slots.next_at + 4900.0 == pytest.approx(5022.5)


def test_an_extra_cycle_leaves_the_slot_standing() -> None:
    slots = Slots(10.0, "ws-1", None, draw=0.0, mono_now=0.0, wall_now=0.0)
    slots.after_cycle(slots.next_at)
    slot = slots.next_at
    slots.after_cycle(slot - 1.0)  # a cycle asked for before the slot
    assert slots.next_at == slot


def test_slots_missed_during_a_stall_are_skipped() -> None:
    slots = Slots(10.0, "ws-1", None, draw=0.0, mono_now=0.0, wall_now=0.0)
    slots.after_cycle(slots.next_at)
    slot = slots.next_at
    slots.after_cycle(slot + 35.0)  # the cycle at that slot took three and a half intervals
    assert slots.next_at == pytest.approx(slot + 40.0)


def test_the_deprecated_start_phase_beats_at_a_fixed_rate_from_the_first_beat() -> None:
    slots = Slots(10.0, "ws-1", 1.0, draw=0.6, mono_now=100.0, wall_now=math.pi)
    assert slots.next_at == pytest.approx(106.0)
    slots.after_cycle(106.1)
    assert slots.next_at == pytest.approx(116.0)  # half an interval at least after the first
    slots.after_cycle(116.1)
    assert slots.next_at == pytest.approx(126.0)
