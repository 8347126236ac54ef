"""The workspace's lifecycle: paused, hibernated and removed, as the platform answers them."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from heartbeat_sync.loop import lifecycle as lc
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, LogCapture, wait_for_beats, wait_until

T = 5.0

# --- pure classification, from answers recorded on the real server ----------------------------


def _st(status: str, paused: bool = False) -> dict[str, Any]:
    return {"workspace_id": "w", "status": status, "paused": paused, "deleted": False}


@pytest.mark.parametrize(
    ("code", "body", "kind", "status"),
    [
        (200, _st("online"), lc.ACTIVE, "online"),
        (200, _st("paused", paused=True), lc.PAUSED, "paused"),
        (200, _st("hibernated"), lc.PAUSED, "hibernated"),
        (200, _st("awaiting_agent"), lc.ACTIVE, "awaiting_agent"),
        (404, {"workspace_id": "w", "status": "removed", "deleted": True}, lc.REMOVED, "removed"),
        (404, {"workspace_id": "w", "deleted": True}, lc.REMOVED, "removed"),
        (401, {"error": "invalid workspace auth token"}, lc.UNKNOWN, None),
        (404, None, lc.UNKNOWN, None),
        (200, ["not", "an", "object"], lc.UNKNOWN, None),
        (200, {"status": 3}, lc.UNKNOWN, None),
        (500, {"error": "query failed"}, lc.UNKNOWN, None),
    ],
)  # fmt: skip
def test_classify_state(code: int, body: Any, kind: str, status: str | None) -> None:
    seen = lc.classify_state(code, body)
    assert (seen.kind, seen.status) == (kind, status)


@pytest.mark.parametrize(
    ("code", "body", "kind"),
    [
        (410, {"error": "workspace removed", "id": "w", "removed_at": None}, lc.REMOVED),
        (410, None, lc.REMOVED),
        (404, {"error": "workspace not found"}, lc.REMOVED),
        (404, None, lc.UNKNOWN),  # a tenant guard's empty 404 says nothing about the workspace
        (200, {"id": "w", "status": "paused"}, lc.PAUSED),
        (200, {"id": "w", "status": "removed"}, lc.REMOVED),  # an older server's 200
        (200, {"id": "w", "status": "online"}, lc.ACTIVE),
        (403, None, lc.UNKNOWN),
    ],
)  # fmt: skip
def test_classify_workspace(code: int, body: Any, kind: str) -> None:
    assert lc.classify_workspace(code, body).kind == kind


def test_lifecycle_checks_on_a_hint_while_paused_and_every_interval() -> None:
    now = [0.0]
    tracker = lc.Lifecycle(check_every=10.0, clock=lambda: now[0])
    assert not tracker.due()
    tracker.hint()
    assert tracker.due()
    assert tracker.update(lc.Observation(lc.UNKNOWN)) == (lc.ACTIVE, lc.ACTIVE)
    assert not tracker.due()  # an inconclusive check waits for the next hint or interval
    now[0] = 10.0
    assert tracker.due()
    assert tracker.update(lc.Observation(lc.PAUSED, "paused")) == (lc.ACTIVE, lc.PAUSED)
    assert tracker.due()  # while paused, every cycle asks
    assert tracker.update(lc.Observation(lc.REMOVED, "removed")) == (lc.PAUSED, lc.REMOVED)
    assert not tracker.due()
    assert tracker.update(lc.Observation(lc.ACTIVE, "online")) == (lc.REMOVED, lc.REMOVED)
    assert lc.Lifecycle(check_every=None).due() is False


# --- FakePlatform answers every route as the real server does ---------------------------------


def _answers(fp: FakePlatform, ws: Workspace, token: str | None) -> dict[str, tuple[int, Any]]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    beat = {"workspace_id": ws.id, "error_rate": 0.0, "uptime_seconds": 1}
    msg = {"method": "message/send", "params": {"message": {"role": "user", "parts": []}}}
    calls: dict[str, tuple[str, str, Any, dict[str, str]]] = {
        "heartbeat": ("POST", "/registry/heartbeat", beat, auth),
        "heartbeat-no-token": ("POST", "/registry/heartbeat", beat, {}),
        "delegations": ("GET", f"/workspaces/{ws.id}/delegations", None, auth),
        "activity": ("GET", f"/workspaces/{ws.id}/activity?type=a2a_receive", None, auth),
        "state": ("GET", f"/workspaces/{ws.id}/state", None, auth),
        "workspace": ("GET", f"/workspaces/{ws.id}", None, {}),
        "a2a": ("POST", f"/workspaces/{ws.id}/a2a", msg, {**auth, "X-Workspace-ID": ws.id}),
        "notify": ("POST", f"/workspaces/{ws.id}/notify", {"message": "hi"}, auth),
    }
    out = {}
    for name, (method, path, body, headers) in calls.items():
        r = requests.request(method, fp.url + path, json=body, headers=headers, timeout=T)
        try:
            parsed = r.json()
        except ValueError:
            parsed = r.text
        out[name] = (r.status_code, parsed)
    return out


def test_paused_workspace_answers_like_the_real_server(platform: FakePlatform) -> None:
    ws = platform.add_workspace(name="p")
    token = ws.token
    ws.url = "http://localhost:1"
    assert platform.pause(ws.id) == 1
    got = _answers(platform, ws, token)
    assert got["heartbeat"][0] == 200 and got["heartbeat-no-token"][0] == 401
    assert got["delegations"] == (200, []) and got["activity"] == (200, [])
    assert got["state"] == (
        200,
        {"workspace_id": ws.id, "status": "paused", "paused": True, "deleted": False},
    )
    assert got["workspace"][0] == 200 and got["workspace"][1]["status"] == "paused"
    assert got["workspace"][1]["url"] == ""
    assert got["a2a"] == (503, {"error": "workspace has no URL", "status": "paused"})
    assert got["notify"] == (200, {"status": "sent"})
    assert ws.status == "paused"  # beats do not unpause it
    with pytest.raises(KeyError):
        platform.pause(ws.id)  # the real server: 404 already paused


def test_hibernated_workspace_answers_like_the_real_server(platform: FakePlatform) -> None:
    ws = platform.add_workspace(name="h")
    platform.hibernate(ws.id)
    got = _answers(platform, ws, ws.token)
    assert got["state"][1] == {
        "workspace_id": ws.id,
        "status": "hibernated",
        "paused": False,
        "deleted": False,
    }
    assert got["a2a"] == (
        503,
        {
            "error": "workspace is waking from hibernation — retry in ~15 seconds",
            "retry_after": 15,
            "waking": True,
        },
    )
    assert got["heartbeat"][0] == 200 and ws.status == "hibernated"
    assert got["delegations"][0] == got["activity"][0] == got["notify"][0] == 200


def test_deleted_workspace_answers_like_the_real_server(platform: FakePlatform) -> None:
    ws = platform.add_workspace(name="d")
    token = ws.token
    count = ws.heartbeat_count
    platform.delete(ws.id)
    got = _answers(platform, ws, token)
    # Its tokens are revoked: the heartbeat passes unauthenticated, and nothing is written.
    assert got["heartbeat"][0] == got["heartbeat-no-token"][0] == 200
    assert ws.heartbeat_count == count and ws.status == "removed"
    invalid = (401, {"error": "invalid workspace auth token"})
    assert got["delegations"] == got["activity"] == got["state"] == got["notify"] == invalid
    assert got["workspace"][0] == 410 and got["workspace"][1]["error"] == "workspace removed"
    assert got["a2a"][0] == 200  # still forwarded to the old agent
    # A registration answers 200 with a fresh token, and the status stays removed.
    r = requests.post(
        f"{platform.url}/registry/register",
        json={"id": ws.id, "delivery_mode": "poll", "agent_card": {}},
        timeout=T,
    )
    assert r.status_code == 200 and r.json()["auth_token"] and ws.status == "removed"


def test_poll_mode_messages_are_queued_even_while_paused(platform: FakePlatform) -> None:
    ws = platform.add_workspace(name="q")
    ws.delivery_mode = "poll"
    platform.pause(ws.id)
    got = _answers(platform, ws, ws.token)
    assert got["a2a"] == (
        200,
        {"status": "queued", "delivery_mode": "poll", "method": "message/send"},
    )


# --- the Heartbeat -----------------------------------------------------------------------------


def test_removed_workspace_one_error_both_threads_end_nothing_more_sent(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    hb = make_hb(interval_seconds=0.2)
    hb.start_thread()
    assert wait_until(lambda: hb.status().beats_ok >= 1)
    beats = len(platform.requests_for("heartbeat"))
    platform.delete(ws.id)
    assert hb.wait(timeout=5)
    assert len(platform.requests_for("heartbeat")) <= beats + 1  # within the next cycle
    status = hb.status()
    assert status.state == "removed" and not status.running
    assert status.workspace_status == "removed"
    errors = logs.messages(logging.ERROR)
    assert len(errors) == 1 and ws.id in errors[0] and "410" in errors[0]
    # Nothing more is sent: every thread of the Heartbeat has ended.
    threads = [t.name for t in threading.enumerate() if ws.id[:8] in t.name]
    assert threads == []
    sent = len(platform.requests)
    # Starting it again starts nothing.
    hb.start_thread()
    assert not hb.status().running and len(platform.requests) == sent
    assert hb.status().state == "removed"


def test_wait_blocks_until_stopped(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb()
    assert hb.wait(timeout=0)  # never started: nothing to wait for
    hb.start_thread()
    assert not hb.wait(timeout=0.3)
    stopper = threading.Timer(0.2, hb.stop)
    stopper.start()
    assert hb.wait(timeout=5)
    stopper.join(5)
    assert hb.status().state == "stopped"


def test_on_state_change_runs_on_the_side_effect_thread_removed_last(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    calls: list[tuple[str, str, str]] = []
    beat_thread: list[str] = []

    def on_change(old: str, new: str) -> None:
        calls.append((old, new, threading.current_thread().name))

    hb = make_hb(on_state_change=on_change)
    beat_thread.append(hb.start_thread().name)
    assert wait_until(lambda: len(calls) >= 1)
    platform.fault("heartbeat", status=500, times=1)
    assert wait_until(lambda: ("degraded", "healthy") in [c[:2] for c in calls])
    platform.delete(ws.id)
    assert hb.wait(timeout=5)
    transitions = [c[:2] for c in calls]
    assert transitions == [
        ("starting", "healthy"),
        ("healthy", "degraded"),
        ("degraded", "healthy"),
        ("healthy", "removed"),
    ]
    assert {c[2] for c in calls} == {f"heartbeat-sync-callbacks-{ws.id[:8]}"}
    assert beat_thread[0] not in {c[2] for c in calls}


@pytest.mark.parametrize("state", ["removed", "paused"])
def test_stop_from_the_state_callback_returns_promptly_with_the_truth(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, state: str
) -> None:
    # Clean-up in on_state_change(..., "removed") is the natural place to stop the
    # Heartbeat: stop() must neither wait for the thread that runs the callback nor call a
    # stop that ended every thread a failure.
    stopped: list[tuple[bool, float]] = []
    done = threading.Event()

    def on_change(old: str, new: str) -> None:
        if new == state:
            t0 = time.monotonic()
            stopped.append((hb.stop(timeout=5.0), time.monotonic() - t0))
            done.set()

    hb = make_hb(on_state_change=on_change)
    hb.start_thread()
    assert wait_until(lambda: hb.status().beats_ok >= 1)
    # A pause is heard on the event stream (the next periodic state check is minutes away):
    # the stream must be open to hear it.
    assert wait_until(lambda: platform.open_streams(ws.id) == 1)
    if state == "removed":
        platform.delete(ws.id)
    else:
        platform.pause(ws.id)
    assert done.wait(5)
    ok, took = stopped[0]
    assert ok and took < 2.0
    assert hb.wait(timeout=2.0)
    assert not hb.status().running
    # The callback's own thread ends as the callback returns; nothing else is left.
    assert wait_until(lambda: not [t for t in threading.enumerate() if ws.id[:8] in t.name])


def test_a_removal_reaches_the_callback_and_wait_while_a_wakeup_hangs(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    # A wake-up may wait up to self_message_timeout on a slow agent; a removal known to the
    # beat thread must not wait behind it, neither for the callback nor for wait().
    seen: list[str] = []
    removed = threading.Event()

    def on_change(old: str, new: str) -> None:
        seen.append(new)
        if new == "removed":
            removed.set()

    platform.fault("a2a", delay=30.0)
    platform.add_delegation(ws.id, status="completed", response_preview="x")
    hb = make_hb(on_state_change=on_change, self_message_timeout=60.0)
    hb.start_thread()
    assert platform.wait_for_requests("a2a", 1)  # the wake-up is in flight, and hangs
    assert wait_until(lambda: "healthy" in seen)
    platform.delete(ws.id)
    t0 = time.monotonic()
    assert removed.wait(3.0)
    assert hb.wait(timeout=3.0)
    assert time.monotonic() - t0 < 3.0
    assert hb.status().state == "removed"
    assert hb.status().drops.get("stopped", 0) >= 1  # the wake-up in flight, dropped


def test_a_failing_callback_never_ends_a_thread(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    def boom(old: str, new: str) -> None:
        raise RuntimeError("callback bug")

    platform.add_delegation(ws.id, status="completed", response_preview="x")
    with make_hb(on_state_change=boom) as hb:
        assert wait_until(lambda: hb.status().notifications_sent >= 1)
        assert hb.status().running and hb.status().state == "healthy"
    assert any("state-change callback failed" in m for m in logs.messages(logging.ERROR))


def test_paused_no_beats_state_checked_each_interval_then_resumed(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    seen: list[tuple[str, str]] = []
    hb = make_hb(state_check_interval=0.3, on_state_change=lambda o, n: seen.append((o, n)))
    hb.start_thread()
    # Healthy, and announced so (the event stream reports a pause within milliseconds: one
    # found before the end of the first cycle is announced as starting -> paused).
    assert wait_until(lambda: seen == [("starting", "healthy")])
    platform.pause(ws.id)
    assert wait_until(lambda: hb.status().state == "paused", timeout=3)
    assert hb.status().workspace_status == "paused" and hb.status().running
    platform.clear_requests()
    assert platform.wait_for_requests("state", 3, timeout=3)
    assert platform.requests_for("heartbeat") == []
    assert platform.requests_for("delegations") == platform.requests_for("activity") == []
    # An operator's registration brings it back online: beats resume.
    r = requests.post(
        f"{platform.url}/registry/register",
        json={"id": ws.id, "delivery_mode": "poll", "agent_card": {}},
        headers={"Authorization": f"Bearer {ws.token}"},
        timeout=T,
    )
    assert r.status_code == 200
    assert wait_until(lambda: hb.status().state == "healthy", timeout=3)
    assert platform.wait_for_requests("heartbeat", 1)
    assert wait_until(lambda: seen[-2:] == [("healthy", "paused"), ("paused", "healthy")])
    assert hb.stop()


def test_after_a_resume_the_heartbeat_registers_again_when_the_platform_waits_for_it(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(register=True, agent_url="http://localhost:7000", state_check_interval=0.2)
    hb.start_thread()
    assert wait_until(lambda: hb.status().state == "healthy")
    platform.pause(ws.id)
    assert ws.url == ""
    assert wait_until(lambda: hb.status().state == "paused", timeout=3)
    assert len(platform.requests_for("register")) == 1  # a pause is never undone by the agent
    ws.status = "provisioning"  # what POST /workspaces/:id/resume does
    assert wait_until(lambda: len(platform.requests_for("register")) == 2, timeout=3)
    assert wait_until(lambda: ws.status == "online" and hb.status().state == "healthy")
    assert ws.url == "http://localhost:7000"
    assert hb.stop()


def test_hibernated_is_paused(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb(state_check_interval=0.2) as hb:
        assert wait_until(lambda: hb.status().state == "healthy")
        platform.hibernate(ws.id)
        assert wait_until(lambda: hb.status().state == "paused", timeout=3)
        assert hb.status().workspace_status == "hibernated"


def test_ordinary_cycles_send_no_state_request(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb(interval_seconds=0.05) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 10)
    routes = [r.route for r in platform.requests]
    # The event stream is opened once, not per cycle, the state is asked as the run begins
    # and once more when the stream opens (what it announced before was missed; one look
    # when the stream opened first), and the team is looked up once (the workspace's parent,
    # then its peers); a cycle is the beat (and, until the stream is up, the two polls).
    assert routes.count("events") == 1
    assert routes.count("state") in (1, 2) and routes.index("state") < routes.index("heartbeat")
    assert routes.count("workspace") == routes.count("peers") == 1
    assert set(routes) - {"events", "workspace", "peers", "state"} == {
        "heartbeat",
        "delegations",
        "activity",
    }


def test_a_rotated_token_is_checked_but_not_taken_for_a_removal(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        assert platform.wait_for_requests("peers", 1, timeout=3)  # the team, looked up once
        looked_up = len(platform.requests_for("workspace"))
        platform.rotate_token(ws.id)
        # The state check.
        assert platform.wait_for_requests("workspace", looked_up + 1, timeout=3)
        # A poll of the cycle that beat last may be the first to meet the new token: the
        # beats are refused from the next cycle on, and the Heartbeat runs on, not removed.
        assert wait_until(lambda: hb.status().state == "degraded", timeout=3)
        assert hb.status().running
        platform.write_token(ws.id, hb.configs_dir)
        assert wait_until(lambda: hb.status().state == "healthy", timeout=3)
        assert hb.status().workspace_status == "online"


def test_a_cycle_checks_the_state_once_however_many_answers_are_suspicious(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    """A server whose database is down answers 401 to valid tokens on every route: the beat
    and both polls of a cycle are suspicious, but one state check a cycle says all there is
    to say (not one per 401: 7 requests a cycle instead of 5)."""
    with make_hb(events=False) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        assert platform.wait_for_requests("peers", 1, timeout=3)  # the team, looked up once
        refused = {"error": "invalid workspace auth token"}
        for route in ("heartbeat", "delegations", "activity", "state"):
            platform.fault(route, status=401, body=refused)
        platform.clear_requests()
        assert wait_for_beats(platform, 6)
        platform.clear_faults()
        routes = [r.route for r in platform.requests]
    # A cycle's beat is sent twice (a 401 re-reads the token and tries once more): a run of
    # heartbeats is one cycle. Its check comes after the beat's 401, or before the next beat.
    cycles = sum(
        1 for before, route in zip(["start", *routes], routes) if route == "heartbeat" != before
    )
    assert cycles >= 3
    assert routes.count("state") <= cycles and routes.count("workspace") <= cycles, routes
