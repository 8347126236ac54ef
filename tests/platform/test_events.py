"""Against the real server: a delegation's result reaches the results file within a second,
at the default 30 s interval, because the event stream asks for a poll at once."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat, StreamStatus

from ._real import AgentServer, RealPlatform, write_token


def _stream(hb: Heartbeat) -> StreamStatus:
    stream = hb.status().stream
    assert stream is not None
    return stream


def _wait(predicate: Any, timeout: float) -> bool:
    event = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        event.wait(0.002)
    return bool(predicate())


def _delivered(path: Path, delegation_id: str) -> bool:
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("delegation_id") == delegation_id:
                return True
        except ValueError:
            continue
    return False


def test_real_delegation_result_in_the_file_within_a_second_at_a_30s_interval(
    real_platform: RealPlatform, agent_server: AgentServer, hb_files: dict[str, Any]
) -> None:
    a_id, a_token = real_platform.create_workspace("events-caller")
    b_id, b_token = real_platform.create_workspace("events-callee")
    real_platform.register(b_id, b_token, url=agent_server.url)
    agent_server.reply_text = "the numbers add up"
    write_token(hb_files["configs_dir"], a_token)
    hb = Heartbeat(real_platform.url, a_id, interval_seconds=30.0, exit_timeout=None, **hb_files)
    results = Path(hb_files["results_file"])
    with hb:
        # The first cycle has run and the stream is open; the next scheduled poll is at least
        # 15 s away, so only an event can bring the result sooner.
        assert _wait(lambda: hb.status().beats_ok >= 1, 10)
        # The server subscribes the stream before it sends the answer's head: once it is
        # connected, every later event reaches it.
        assert _wait(lambda: _stream(hb).connects >= 1, 10)
        latencies = []
        for task in ("first task", "second task"):
            started = time.monotonic()
            did = real_platform.delegate(a_id, a_token, b_id, task)
            assert _wait(lambda did=did: _delivered(results, did), 5), results.read_text()
            latencies.append(time.monotonic() - started)
        assert hb.status().beats_ok == 1, "a scheduled cycle ran: the test proves nothing"
        stopped = time.monotonic()
        assert hb.stop(timeout=5.0)
        assert time.monotonic() - stopped < 5.0
    assert max(latencies) < 1.0, latencies
    record = json.loads(results.read_text().splitlines()[0])
    assert record["status"] == "completed"
    assert "the numbers add up" in record["response_preview"]


def _lifecycle_heartbeat(
    real_platform: RealPlatform, hb_files: dict[str, Any], name: str
) -> tuple[Heartbeat, str, str]:
    ws_id, token = real_platform.create_workspace(name)
    write_token(hb_files["configs_dir"], token)
    hb = Heartbeat(
        real_platform.url,
        ws_id,
        interval_seconds=30.0,
        exit_timeout=None,
        register=True,
        state_check_interval=None,
        **hb_files,
    )
    hb.start_thread()
    assert _wait(lambda: hb.status().state == "healthy", 10)
    # Connected is enough: the server subscribes before it answers (no event need come first).
    assert _wait(lambda: _stream(hb).connects >= 1, 10)
    return hb, ws_id, token


def test_real_pause_and_removal_are_known_at_once_at_a_30s_interval(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    """The server announces a pause and a removal on the workspace's stream: the Heartbeat
    checks the state at once, not at its next state check or cycle (30 s)."""
    hb, ws_id, _ = _lifecycle_heartbeat(real_platform, hb_files, "events-lifecycle")
    try:
        # Each within a few seconds (a loaded machine), where the schedule would take at least
        # 15 s: the next slot after the first beat is half an interval away or more.
        real_platform.pause(ws_id)
        assert _wait(lambda: hb.status().state == "paused", 5), hb.status()
        real_platform.delete(ws_id)
        assert hb.wait(timeout=5.0), hb.status()
        assert hb.status().state == "removed"
        assert hb.status().beats_ok == 1  # the first cycle's
        assert _stream(hb).state_checks_asked >= 2  # paused, removed
    finally:
        assert hb.stop(timeout=5.0)


@pytest.mark.generations("2026-05")
def test_real_return_after_a_registration_is_known_at_once_at_a_30s_interval(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    """May brings a paused workspace back with a registration and announces it: the
    Heartbeat beats again at once. (August writes nothing for a paused workspace's
    registration: only /resume brings it back.)"""
    hb, ws_id, token = _lifecycle_heartbeat(real_platform, hb_files, "events-return")
    try:
        real_platform.pause(ws_id)
        assert _wait(lambda: hb.status().state == "paused", 5), hb.status()
        real_platform.register(ws_id, token)  # an operator brings it back
        assert _wait(lambda: hb.status().state == "healthy", 5), hb.status()
        # The Heartbeat is healthy once its state check finds the workspace active; the row
        # may still say awaiting_agent until the registration or the beat that follow it.
        assert _wait(lambda: real_platform.row(ws_id)["status"] == "online", 10)
        assert _stream(hb).state_checks_asked >= 2  # paused, online
    finally:
        assert hb.stop(timeout=5.0)
