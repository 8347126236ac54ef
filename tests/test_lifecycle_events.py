"""The workspace's pause, hibernation, removal and return, heard on the event stream.

The platform announces each on the workspace's own stream (``WORKSPACE_PAUSED``,
``WORKSPACE_HIBERNATED``, ``WORKSPACE_REMOVED``, ``WORKSPACE_ONLINE``). Without the stream a
pause is found by the next state check and a removal or a return by the next cycle, up to an
interval later; with it the Heartbeat checks the state at once. The check, not the event,
decides: events are hints.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from heartbeat_sync import Heartbeat, StreamStatus
from heartbeat_sync.testing import FakePlatform, Workspace
from heartbeat_sync.wire.sse import Event, state_change

from .conftest import HeartbeatFactory, poll_once, wait_until

T = 5.0
#: Long enough that nothing found within a second came from the schedule.
INTERVAL = 30.0


def _running(platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory) -> Heartbeat:
    """A Heartbeat at a 30 s interval with no periodic state check, past its first cycle and
    with its stream open: whatever it learns within a second came from an event."""
    hb = make_hb(interval_seconds=INTERVAL, state_check_interval=None)
    hb.start_thread()
    assert wait_until(lambda: hb.status().state == "healthy")
    assert wait_until(lambda: platform.open_streams(ws.id) == 1)
    assert platform.wait_for_requests("activity", 1)
    return hb


def _register(platform: FakePlatform, ws: Workspace) -> None:
    """An operator registers the workspace again (what brings a paused one back)."""
    r = requests.post(
        f"{platform.url}/registry/register",
        json={"id": ws.id, "delivery_mode": "poll", "agent_card": {}},
        headers={"Authorization": f"Bearer {ws.token}"},
        timeout=T,
    )
    assert r.status_code == 200, r.text


# --- which events ask for a state check (pure) ------------------------------------------------


def _event(kind: Any, data: Any = None) -> Event:
    return Event("message", json.dumps({"type": kind, "timestamp": 1, "data": data or {}}))


def test_only_the_workspaces_own_state_events_ask_for_a_check() -> None:
    for kind in ("WORKSPACE_PAUSED", "WORKSPACE_HIBERNATED", "WORKSPACE_REMOVED"):
        assert state_change(_event(kind, {"name": "w"})) == kind
    assert state_change(_event("WORKSPACE_ONLINE", {"recovered_from": "offline"})) == (
        "WORKSPACE_ONLINE"
    )
    for kind in ("WORKSPACE_HEARTBEAT", "TASK_UPDATED", "DELEGATION_COMPLETE", "WORKSPACE_X"):
        assert state_change(_event(kind)) is None
    # Named only inside the data, or not JSON, or not an object: no check.
    assert state_change(_event("TASK_UPDATED", {"current_task": "WORKSPACE_PAUSED"})) is None
    assert state_change(Event("message", "WORKSPACE_PAUSED")) is None
    assert state_change(Event("message", '["WORKSPACE_PAUSED"]')) is None
    assert state_change(Event("message", "[" * 100_000 + '"WORKSPACE_PAUSED"')) is None


# --- FakePlatform sends them as the real server does -------------------------------------------


class _Stream:
    """A workspace's event stream, open from construction (events are never replayed)."""

    def __init__(self, platform: FakePlatform, ws: Workspace) -> None:
        self.resp = requests.get(
            f"{platform.url}/workspaces/{ws.id}/events/stream",
            headers={"Authorization": f"Bearer {ws.token}"},
            stream=True,
            timeout=(T, T),
        )
        assert self.resp.status_code == 200
        self._lines = self.resp.iter_lines()

    def next_of(self, kind: str) -> dict[str, Any]:
        """The data of the next event of type ``kind`` (others are passed over)."""
        for line in self._lines:
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: ") :])
                if event["type"] == kind:
                    data: dict[str, Any] = event["data"]
                    return data
        raise AssertionError(f"the stream ended before a {kind}")


def _beat(platform: FakePlatform, ws: Workspace) -> None:
    body = {"workspace_id": ws.id, "error_rate": 0.0, "active_tasks": 0, "uptime_seconds": 1}
    headers = {"Authorization": f"Bearer {ws.token}"}
    r = requests.post(f"{platform.url}/registry/heartbeat", json=body, headers=headers, timeout=T)
    assert r.status_code == 200


def test_fake_platform_announces_pause_return_hibernation_and_removal(
    platform: FakePlatform,
) -> None:
    ws = platform.add_workspace(name="worker")
    child = platform.add_workspace(name="helper", parent_id=ws.id)
    stream, child_stream = _Stream(platform, ws), _Stream(platform, child)
    try:
        platform.pause(ws.id)  # the real server pauses the descendants too, each announced
        assert stream.next_of("WORKSPACE_PAUSED") == {"name": "worker"}
        assert child_stream.next_of("WORKSPACE_PAUSED") == {"name": "helper"}
        _register(platform, ws)
        online = stream.next_of("WORKSPACE_ONLINE")
        assert online == {"url": "", "agent_card": {}, "delivery_mode": "poll"}
        platform.hibernate(ws.id)
        assert stream.next_of("WORKSPACE_HIBERNATED") == {"name": "worker"}
        platform.delete(ws.id)  # the stream stays open and hears of it
        assert stream.next_of("WORKSPACE_REMOVED") == {"cascade_deleted": 0}
    finally:
        stream.resp.close()
        child_stream.resp.close()


def test_fake_platform_announces_a_beat_that_brings_a_workspace_back(
    platform: FakePlatform,
) -> None:
    ws = platform.add_workspace(status="awaiting_agent")
    stream = _Stream(platform, ws)
    try:
        _beat(platform, ws)
        assert stream.next_of("WORKSPACE_ONLINE") == {"recovered_from": "awaiting_agent"}
        ws.status = "offline"
        _beat(platform, ws)
        assert stream.next_of("WORKSPACE_ONLINE") == {}
    finally:
        stream.resp.close()


# --- the Heartbeat acts on them at once ---------------------------------------------------------


@pytest.mark.parametrize(("act", "status"), [("pause", "paused"), ("hibernate", "hibernated")])
def test_a_pause_is_known_at_once_not_at_the_next_state_check(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, act: str, status: str
) -> None:
    hb = _running(platform, ws, make_hb)
    beats = len(platform.requests_for("heartbeat"))
    getattr(platform, act)(ws.id)
    assert wait_until(lambda: hb.status().state == "paused", timeout=1.0)
    assert hb.status().workspace_status == status
    # Found by one state check in a poll step: no beat to a paused workspace.
    assert len(platform.requests_for("heartbeat")) == beats
    stream = hb.status().stream
    assert stream is not None and stream.state_checks_asked == 1
    assert hb.stop()


def test_a_return_while_paused_beats_at_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = _running(platform, ws, make_hb)
    platform.pause(ws.id)
    assert wait_until(lambda: hb.status().state == "paused", timeout=1.0)
    beats = len(platform.requests_for("heartbeat"))
    _register(platform, ws)
    assert wait_until(lambda: hb.status().state == "healthy", timeout=1.0)
    assert platform.wait_for_requests("heartbeat", beats + 1, timeout=1.0)
    assert hb.stop()


def test_a_removal_ends_the_heartbeat_at_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = _running(platform, ws, make_hb)
    platform.delete(ws.id)
    assert hb.wait(timeout=2.0)
    assert hb.status().state == "removed" and not hb.status().running


def test_a_workspace_already_online_costs_no_check_when_announced_online(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = _running(platform, ws, make_hb)
    counts = {route: len(platform.requests_for(route)) for route in ("state", "heartbeat")}
    _register(platform, ws)  # announced WORKSPACE_ONLINE: the Heartbeat knows already
    assert wait_until(lambda: _stream(hb).state_checks_asked == 1)
    # A poll asked for after it comes alone: a check the announcement asked for would come
    # first.
    assert poll_once(platform, hb)
    assert {route: len(platform.requests_for(route)) for route in counts} == counts
    assert hb.status().state == "healthy"
    assert hb.stop()


def test_without_the_stream_a_pause_waits_for_the_state_check(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(interval_seconds=INTERVAL, state_check_interval=None, events=False)
    hb.start_thread()
    assert wait_until(lambda: hb.status().state == "healthy")
    platform.pause(ws.id)
    # Two more cycles (asked for: the interval is long): each beats and polls, and a paused
    # workspace answers them as ever, so none of them checks the state.
    for _ in range(2):
        cycles = len(platform.requests_for("activity"))
        hb.beat_now()
        assert platform.wait_for_requests("activity", cycles + 1)
    assert hb.status().state == "healthy"
    assert len(platform.requests_for("state")) == 1  # the look as the run began
    assert hb.stop()


def _stream(hb: Heartbeat) -> StreamStatus:
    stream = hb.status().stream
    assert stream is not None
    return stream
