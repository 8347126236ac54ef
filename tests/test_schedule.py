"""The schedule's arithmetic, without threads or sleeps: phases, the first beat, the slots."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat_sync.loop import schedule as _schedule


def test_phase_is_stable_and_in_range() -> None:
    ids = [str(uuid.UUID(int=i)) for i in range(50)]
    phases = [_schedule.phase_of(i) for i in ids]
    assert phases == [_schedule.phase_of(i) for i in ids]  # the same id, the same phase
    assert all(0.0 <= p < 1.0 for p in phases)
    assert len(set(phases)) == 50
    # A pinned value: every process, machine and release must agree on it.
    assert _schedule.phase_of("00000000-0000-0000-0000-000000000000") == pytest.approx(
        0.15388850845958701, abs=1e-15
    )


def test_phases_of_many_ids_cover_the_interval() -> None:
    rng = random.Random(5)
    phases = [_schedule.phase_of(str(uuid.UUID(int=rng.getrandbits(128)))) for _ in range(2000)]
    tenths = [0] * 10
    for p in phases:
        tenths[int(p * 10)] += 1
    assert min(tenths) > 150 and max(tenths) < 250, tenths


def test_first_beat_comes_at_once_or_within_a_small_jitter() -> None:
    assert _schedule.first_beat_delay(30.0, 0.0) == 0.0
    assert _schedule.first_beat_delay(30.0, 0.999) == pytest.approx(0.24975)
    assert _schedule.first_beat_delay(30.0, 5.0) == _schedule.FIRST_BEAT_MAX_JITTER
    assert _schedule.first_beat_delay(1.0, 0.5) == pytest.approx(0.05)  # a tenth of it


def test_slot_origin_follows_the_wall_clock_phase() -> None:
    # Wall clock 1000.0 s, interval 30 s, phase 0.5: slots at wall times 15 s past each
    # multiple of 30, the next one at 1005.0, i.e. 5 s from now on the monotonic clock.
    assert _schedule.slot_origin(0.5, 30.0, 100.0, 1000.0) == pytest.approx(105.0)
    # A restart at another moment finds the same wall-clock slots.
    assert _schedule.slot_origin(0.5, 30.0, 7.0, 1017.0) == pytest.approx(7.0 + 18.0)


def test_next_slot_is_strictly_later_and_on_the_grid() -> None:
    assert _schedule.next_slot(10.0, 2.0, 10.0) == 12.0
    assert _schedule.next_slot(10.0, 2.0, 9.99) == 10.0
    assert _schedule.next_slot(10.0, 2.0, 17.5) == 18.0
    assert _schedule.next_slot(10.0, 2.0, 3.0) == 4.0  # before the origin too


@given(
    origin=st.floats(-1e6, 1e6),
    interval=st.floats(1e-3, 1e4),
    after=st.floats(-1e6, 1e6),
)
def test_next_slot_property(origin: float, interval: float, after: float) -> None:
    slot = _schedule.next_slot(origin, interval, after)
    assert slot > after
    assert slot - after <= interval * (1 + 1e-9) + 1e-6
    k = (slot - origin) / interval
    assert abs(k - round(k)) < 1e-6 * max(1.0, abs(k))


def test_second_beat_is_half_to_one_and_a_half_intervals_after_the_first() -> None:
    # Slots at ..., 0.0, 1.0, 2.0, ... A first beat at 0.95 is followed by 2.0, not 1.0.
    assert _schedule.slot_after_cycle(0.0, 1.0, 0.95, 0.96, first=True) == 2.0
    # A first beat at 0.4 is followed by 1.0 (0.6 later).
    assert _schedule.slot_after_cycle(0.0, 1.0, 0.4, 0.41, first=True) == 1.0


def test_later_beats_keep_a_fixed_rate_and_skip_missed_slots() -> None:
    assert _schedule.slot_after_cycle(0.0, 1.0, 3.0, 3.2, first=False) == 4.0
    # A cycle that stalled past three slots: the next one after the stall, no burst.
    assert _schedule.slot_after_cycle(0.0, 1.0, 3.0, 6.5, first=False) == 7.0


def test_a_fleet_started_at_one_moment_spreads_from_its_second_beat() -> None:
    rng = random.Random(7)
    interval, start = 30.0, 500.0
    seconds = []
    for _ in range(400):
        ws = str(uuid.UUID(int=rng.getrandbits(128)))
        origin = _schedule.slot_origin(_schedule.phase_of(ws), interval, start, 1.7e9)
        first = start + _schedule.first_beat_delay(interval, rng.random())
        assert first - start <= _schedule.FIRST_BEAT_MAX_JITTER
        seconds.append(_schedule.slot_after_cycle(origin, interval, first, first, first=True))
    tenths = [0] * 10
    for t in seconds:
        tenths[int(((t - start) % interval) / interval * 10)] += 1
    # Lock-step would put all 400 in one tenth; spread puts about 40 in each.
    assert max(tenths) < 80, tenths


def test_token_bucket_lets_sparse_polls_run_at_once() -> None:
    pacer = _schedule.TokenBucket(burst=3, rate=4.0)
    for t in (0.0, 1.0, 2.0, 3.0):  # one a second: never held back
        assert pacer.ready_at(t) == t
        pacer.take(t)


def test_token_bucket_paces_a_storm_after_a_burst() -> None:
    pacer = _schedule.TokenBucket(burst=3, rate=4.0)
    now = 10.0
    for _ in range(3):
        assert pacer.ready_at(now) == now
        pacer.take(now)
    assert pacer.ready_at(now) == pytest.approx(now + 0.25)
    # A long storm runs at the rate: 40 polls take about 10 s.
    for _ in range(40):
        now = pacer.ready_at(now)
        pacer.take(now)
    assert now == pytest.approx(10.0 + 0.25 * 40, abs=1e-6)
    with pytest.raises(ValueError):
        _schedule.TokenBucket(burst=0, rate=1.0)
    with pytest.raises(ValueError):
        _schedule.TokenBucket(burst=1, rate=0.0)


def test_token_bucket_refills_nothing_when_the_clock_reads_earlier() -> None:
    bucket = _schedule.TokenBucket(burst=1, rate=1.0)
    bucket.take(10.0)
    assert bucket.ready_at(5.0) == pytest.approx(6.0)  # an older reading: a whole token short
    assert bucket.ready_at(10.5) == pytest.approx(11.0)  # refilled from 10.0, not from 5.0


def _ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]


def test_a_team_takes_even_shares_of_the_interval_each_member_working_alone() -> None:
    for n in (2, 5, 200):
        team = _ids(n, n)
        parent = "p-1"
        phases = sorted(
            _schedule.team_phase(me, [w for w in team if w != me], parent) for me in team
        )
        gaps = [b - a for a, b in zip(phases, phases[1:])] + [1.0 + phases[0] - phases[-1]]
        # n members, 1/n apart: a 5% window of a team of 200 holds 10, the mean, never more.
        assert all(abs(gap - 1.0 / n) < 1e-9 for gap in gaps), (n, gaps)


def test_a_team_phase_does_not_depend_on_how_the_siblings_are_listed() -> None:
    me, *others = _ids(6, 1)
    expected = _schedule.team_phase(me, others, None)
    assert _schedule.team_phase(me, list(reversed(others)) + others + [me], None) == expected
    assert 0.0 <= expected < 1.0


def test_a_workspace_without_siblings_keeps_the_phase_hashed_from_its_id() -> None:
    me = _ids(1, 2)[0]
    assert _schedule.team_phase(me, [], "p-1") == _schedule.phase_of(me)
    assert _schedule.team_phase(me, [me], None) == _schedule.phase_of(me)


def test_teams_under_different_parents_begin_at_different_places() -> None:
    team = _ids(4, 3)
    firsts = {
        min(_schedule.team_phase(me, team, parent) for me in team)
        for parent in (None, "p-1", "p-2", "p-3")
    }
    assert len(firsts) == 4
