"""The schedule on a running Heartbeat: a fast first beat, then the workspace's own slots."""

from __future__ import annotations

import time

import pytest

from heartbeat_sync.loop import schedule as _schedule
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import FixedRandom, HeartbeatFactory


def _wall(mono: float) -> float:
    return mono + (time.time() - time.monotonic())


def _offset(t: float, phase: float, interval: float) -> float:
    """How far the wall time ``t`` is from the workspace's slot grid (signed, in seconds)."""
    d = (_wall(t) - phase * interval) % interval
    return d if d <= interval / 2 else d - interval


def test_first_beat_at_once_then_beats_on_the_workspace_slots_across_restarts(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    interval = 0.4
    phase = _schedule.phase_of(ws.id)
    for run in range(2):  # a restarted workspace keeps its slot
        platform.clear_requests()
        started = time.monotonic()
        with make_hb(interval_seconds=interval, rng=FixedRandom(0.999)):
            assert platform.wait_for_requests("heartbeat", 4, timeout=5)
        times = [r.time for r in platform.requests_for("heartbeat")]
        # The first beat: at once, within the jitter (a tenth of the interval here).
        assert times[0] - started < 0.1 * interval + 0.05, (run, times[0] - started)
        # The second: at least half an interval later, at most one and a half.
        assert 0.5 * interval - 0.02 <= times[1] - times[0] <= 1.5 * interval + 0.05
        # From then on, on the wall-clock slots the workspace id gives.
        for t in times[1:4]:
            assert abs(_offset(t, phase, interval)) < 0.06, (run, _offset(t, phase, interval))


def test_start_phase_still_works_but_is_deprecated(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with pytest.warns(DeprecationWarning, match="start_phase"):
        hb = make_hb(interval_seconds=1.0, start_phase=1.0, rng=FixedRandom(0.6))
    started = time.monotonic()
    with hb:
        assert platform.wait_for_requests("heartbeat", 1, timeout=5)
    assert 0.55 < platform.requests_for("heartbeat")[0].time - started < 0.8
