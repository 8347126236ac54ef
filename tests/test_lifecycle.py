"""Heartbeat lifecycle: threads, stop, context manager, and a loop nothing can kill."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import requests

from heartbeat_sync.testing import FakePlatform, Workspace
from heartbeat_sync.wire.http import make_session

from .conftest import HeartbeatFactory, LogCapture, wait_until


def _threads_named(prefix: str) -> list[threading.Thread]:
    """A Heartbeat's own threads (the process-wide request watchdog is not one of them)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith(prefix) and t.name != "heartbeat-sync-watchdog"
    ]


def test_start_thread_starts_named_daemon_threads_that_stop_ends(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    beat = hb.start_thread()
    assert beat.daemon and beat.is_alive()
    assert beat.name.startswith("heartbeat-sync-")
    side = _threads_named("heartbeat-sync-side-effects-")
    assert len(side) == 1 and side[0].daemon and side[0].is_alive()
    assert hb.stop(2.0)
    assert not beat.is_alive() and not side[0].is_alive()


def test_second_start_starts_nothing_new(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    first = hb.start_thread()
    before = set(_threads_named("heartbeat-sync"))
    assert len(before) == 3  # beat, side effects, event stream
    assert hb.start_thread() is first
    assert set(_threads_named("heartbeat-sync")) == before
    assert hb.stop(2.0)


def test_stop_before_start_and_twice(make_hb: HeartbeatFactory) -> None:
    hb = make_hb()
    assert hb.stop(0.1)
    hb.start_thread()
    assert hb.stop(2.0)
    assert hb.stop(0.1)
    assert hb.status().state == "stopped"


def test_context_manager_starts_and_stops(
    platform: FakePlatform, make_hb: HeartbeatFactory, ws: Workspace
) -> None:
    hb = make_hb()
    with hb as running:
        assert running is hb
        assert platform.wait_for_requests("heartbeat", 1, timeout=5)
        assert hb.status().running
    assert not hb.status().running


def test_stop_is_bounded_when_the_platform_hangs(
    platform: FakePlatform, make_hb: HeartbeatFactory
) -> None:
    platform.fault("heartbeat", delay=30)
    platform.fault("a2a", delay=30)
    hb = make_hb(request_timeout=30.0)
    hb.start_thread()
    assert platform.wait_for_requests("heartbeat", 1, timeout=5)
    started = time.monotonic()
    ended = hb.stop(timeout=2.0)
    elapsed = time.monotonic() - started
    assert ended, "the request in flight is interrupted and both threads end"
    assert elapsed < 1.0


def test_stop_is_bounded_while_a_wakeup_hangs(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("a2a", delay=60)
    platform.add_delegation(ws.id, status="completed")
    hb = make_hb()
    hb.start_thread()
    assert platform.wait_for_requests("a2a", 1, timeout=5)
    started = time.monotonic()
    assert hb.stop(timeout=2.0)
    assert time.monotonic() - started < 1.0
    assert hb.status().wakeups_sent == 0


def test_a_failing_cycle_does_not_kill_the_loop(
    platform: FakePlatform, make_hb: HeartbeatFactory, ws: Workspace
) -> None:
    calls = []

    def flaky_session() -> requests.Session:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("no session today")
        return make_session()

    hb = make_hb(session_factory=flaky_session, events=False)  # the beat thread's sessions only
    beat = hb.start_thread()
    assert wait_until(lambda: hb.status().beats_ok >= 2, timeout=5)
    assert beat.is_alive()
    assert hb.status().beats_failed >= 1


def test_an_exception_inside_the_cycle_is_logged_and_the_next_cycle_runs(
    platform: FakePlatform, make_hb: HeartbeatFactory, ws: Workspace, logs
) -> None:
    calls = []

    def metadata() -> dict[str, object]:
        calls.append(1)
        if len(calls) == 1:
            return {"not_json": object()}  # the request cannot even be encoded
        return {"capabilities": {"heartbeat": True}}

    hb = make_hb(runtime_metadata=metadata)
    beat = hb.start_thread()
    assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 2, timeout=5)
    assert beat.is_alive()
    assert platform.heartbeats(ws.id)[-1]["runtime_metadata"] == {
        "capabilities": {"heartbeat": True}
    }
    assert any("heartbeat failed" in m for m in logs.messages())


def test_status_snapshot_is_immutable(make_hb: HeartbeatFactory, platform: FakePlatform) -> None:
    import dataclasses

    import pytest

    hb = make_hb()
    snap = hb.status()
    assert snap.state == "stopped"
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.state = "healthy"  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.drops["x"] = 1  # type: ignore[index]
    hb.start_thread()
    assert wait_until(lambda: hb.status().state == "healthy", timeout=5)
    assert hb.status().last_success is not None


@pytest.mark.parametrize("route", ["delegations", "activity"])
def test_stop_is_bounded_while_a_poll_hangs(
    platform: FakePlatform, make_hb: HeartbeatFactory, route: str, logs: LogCapture
) -> None:
    platform.fault(route, delay=60)
    hb = make_hb()
    hb.start_thread()
    assert platform.wait_for_requests(route, 1, timeout=5)
    started = time.monotonic()
    assert hb.stop(timeout=2.0)
    assert time.monotonic() - started < 1.0
    # The interrupted GET is not retried (a retry would reconnect and hang again).
    assert len(platform.requests_for(route)) == 1
    assert not [m for m in logs.messages(logging.WARNING) if "poll failed" in m]


def test_a_hint_that_comes_while_a_state_check_is_in_flight_is_not_lost() -> None:
    """The stream announces a hibernation while a state check's request (sent before it) is
    on its way: the check's "online" must not clear the hint, or with the stream up (no
    periodic checks) the pause would go unseen."""
    from heartbeat_sync.loop.lifecycle import ACTIVE, Lifecycle, Observation

    life = Lifecycle(None)
    life.hint()  # the stream opened: look
    mark = life.hints_seen()  # the check's request goes out
    life.hint()  # WORKSPACE_HIBERNATED arrives meanwhile
    life.update(Observation(kind=ACTIVE, status="online"), since=mark)
    assert life.hinted and life.due(periodic=False)
    # A check sent after the last hint settles it.
    life.update(Observation(kind=ACTIVE, status="online"), since=life.hints_seen())
    assert not life.hinted and not life.due(periodic=False)
