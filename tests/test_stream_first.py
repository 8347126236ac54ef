"""Stream-first polling: while the event stream is up, the polls run when an event asks and on
a safety schedule, not every cycle; when it is down they run every cycle, and at once after it
comes back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, read_lines, wait_for_beats, wait_until


def _streaming(platform: FakePlatform, ws: Workspace) -> bool:
    return platform.open_streams(ws.id) == 1


def test_with_the_stream_up_an_idle_cycle_is_the_beat_alone(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb(interval_seconds=0.1, safety_poll_interval=60.0) as hb:
        assert wait_until(lambda: _streaming(platform, ws))
        assert wait_until(lambda: hb.status().stream is not None and hb.status().stream.connected)
        assert wait_for_beats(platform, 2)  # the polls the connection asked for are over
        platform.clear_requests()
        assert wait_for_beats(platform, 20)
        routes = Counter(r.route for r in platform.requests)
    assert routes["heartbeat"] >= 20
    assert routes["delegations"] == routes["activity"] == routes["state"] == 0, routes


def test_an_event_still_brings_the_result_at_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb(interval_seconds=30.0) as hb:
        assert wait_until(lambda: hb.status().stream is not None and hb.status().stream.connected)
        did = platform.add_delegation(ws.id, status="completed", response_preview="fast")
        assert wait_until(lambda: hb.status().results_delivered == 1, timeout=5)
        assert did in "".join(read_lines(Path(hb.results_path)))


def test_a_result_whose_event_is_lost_comes_with_the_safety_polls(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb(interval_seconds=0.1, safety_poll_interval=1.0) as hb:
        assert wait_until(lambda: hb.status().stream is not None and hb.status().stream.connected)
        platform.stall_streams()  # every event lost from now on; the connection stays up
        assert wait_for_beats(platform, 2)
        polls = len(platform.requests_for("delegations"))
        platform.add_delegation(ws.id, status="completed", response_preview="no event")
        assert wait_until(lambda: hb.status().results_delivered == 1, timeout=5)
        # Brought by a safety poll: within about a second, not by the next cycle.
        assert len(platform.requests_for("delegations")) <= polls + 2
        platform.stall_streams(False)


def test_with_the_stream_down_every_cycle_polls(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("events", status=404)
    with make_hb(interval_seconds=0.1, safety_poll_interval=60.0):
        assert wait_for_beats(platform, 3)
        platform.clear_requests()
        assert wait_for_beats(platform, 5)
        routes = Counter(r.route for r in platform.requests)
    assert routes["delegations"] >= routes["heartbeat"] - 1 >= 4


def test_after_the_stream_comes_back_the_polls_run_at_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb(interval_seconds=30.0, safety_poll_interval=600.0) as hb:
        assert wait_until(lambda: hb.status().stream is not None and hb.status().stream.connected)
        platform.fault("events", status=503)  # the next attempt is refused
        platform.drop_streams()
        # A result while the stream is down: its event is lost with the stream.
        did = platform.add_delegation(ws.id, status="completed", response_preview="missed")
        platform.clear_faults("events")
        # The stream comes back within seconds, and the polls run at once: long before the
        # next slot (30 s) or the safety poll (600 s).
        assert wait_until(lambda: hb.status().results_delivered == 1, timeout=15)
        assert did in "".join(read_lines(Path(hb.results_path)))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "300", True, 86401])
def test_the_safety_interval_is_checked_at_construction(
    make_hb: HeartbeatFactory, bad: object
) -> None:
    with pytest.raises(ValueError, match=r"safety_poll_interval must be a number in \(0, 86400\]"):
        make_hb(safety_poll_interval=bad)
