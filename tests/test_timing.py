"""The schedule: fixed rate on the monotonic clock, no bursts, a random start phase."""

from __future__ import annotations

from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import FixedRandom, HeartbeatFactory, poll_once


def _beat_times(platform: FakePlatform) -> list[float]:
    return [r.time for r in platform.requests_for("heartbeat")]


def test_fixed_rate_does_not_drift_with_slow_requests(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    # Each beat takes 60 ms: a fixed-delay loop (the reference's sleep after work) would
    # drift by 60 ms a beat; a fixed rate keeps the slots.
    platform.fault("heartbeat", delay=0.06)
    interval = 0.15
    with make_hb(interval_seconds=interval):
        assert platform.wait_for(lambda: len(_beat_times(platform)) >= 12, timeout=10)
    # From the second beat on: the first one comes at once, off the workspace's slots.
    times = _beat_times(platform)[1:12]
    span = times[10] - times[0]
    assert abs(span - 10 * interval) < 0.25 * interval, span
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > 0.5 * interval


def test_missed_slots_are_skipped_not_burst(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    interval = 0.1
    platform.fault("heartbeat", delay=0.55, times=1)  # one stall of five and a half slots
    with make_hb(interval_seconds=interval):
        assert platform.wait_for(lambda: len(_beat_times(platform)) >= 6, timeout=10)
    times = _beat_times(platform)[:6]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # After the stall the loop waits for the next slot instead of running the missed ones.
    assert min(gaps[1:]) > 0.5 * interval, gaps
    # ... and the next slot is on the original grid (within a slot of the stall's end).
    assert gaps[0] < 0.55 + interval + 0.05


def test_random_start_phase_is_up_to_ten_percent(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    import time

    interval = 2.0
    started = time.monotonic()
    with make_hb(interval_seconds=interval, rng=FixedRandom(0.999)):
        assert platform.wait_for_requests("heartbeat", 1, timeout=5)
    late = _beat_times(platform)[0] - started
    assert 0.18 < late < 0.5, late
    platform.clear_requests()
    started = time.monotonic()
    with make_hb(interval_seconds=interval, rng=FixedRandom(0.0)):
        assert platform.wait_for_requests("heartbeat", 1, timeout=5)
    assert _beat_times(platform)[0] - started < 0.15


def test_default_start_phases_of_a_process_are_spread_evenly(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    phases = sorted(make_hb(rng=None)._settings.rng.random() for _ in range(20))
    gaps = [b - a for a, b in zip(phases, phases[1:])]
    assert len(set(phases)) == 20
    # A golden-ratio sequence leaves no gap wider than 0.1 between 20 points; 20 independent
    # uniform draws nearly always do (their widest gap is about 0.15 on average).
    assert max(gaps) < 0.1


def test_beat_now_runs_a_cycle_at_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(interval_seconds=30.0)
    with hb:
        assert platform.wait_for_requests("heartbeat", 1, timeout=5)
        assert platform.wait_for_requests("activity", 1, timeout=5)
        assert platform.wait_for(lambda: platform.open_streams(ws.id) == 1)
        hb.beat_now()
        assert platform.wait_for_requests("heartbeat", 2, timeout=5)
        assert platform.wait_for_requests("delegations", 2, timeout=5)
        assert platform.wait_for_requests("activity", 2, timeout=5)
        # The regular schedule is unchanged: no third beat follows on its own (a poll asked
        # for now comes alone, where a cycle still asked for would beat first).
        assert poll_once(platform, hb)
        assert len(platform.requests_for("heartbeat")) == 2


def test_seeding_the_shared_random_generator_does_not_align_processes() -> None:
    import random

    from heartbeat_sync._settings import _phases

    starts = []
    for _ in range(2):
        random.seed(1234)  # what a reproducible worker does before starting its Heartbeat
        _phases.reset()  # as in a freshly started (or forked) process
        starts.append(_phases.random())
    assert starts[0] != starts[1]
