"""Results from the real server: delegations (completed and failed) and a peer's message,
each in the results file exactly once."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from heartbeat_sync import Heartbeat

from ._real import AgentServer, RealPlatform, wait_until, write_token

INTERVAL = 0.5


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def settle(intervals: int = 4) -> None:
    """Let a few more cycles run, to show nothing else arrives."""
    threading.Event().wait(intervals * INTERVAL)


def test_a_delegation_answered_by_the_target_arrives_once_with_the_response(
    real_platform: RealPlatform, agent_server: AgentServer, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("caller")
    b, tb = real_platform.create_workspace("target")
    agent_a = AgentServer()
    try:
        real_platform.register(a, ta, url=agent_a.url)
        real_platform.register(b, tb, url=agent_server.url)
        agent_server.reply_text = "the sum is 42"
        write_token(hb_files["configs_dir"], ta)
        results = hb_files["results_file"]
        with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files) as hb:
            did = real_platform.delegate(a, ta, b, "add the numbers")
            assert agent_server.wait_for(1)
            sent = agent_server.received[0]
            assert sent["params"]["message"]["metadata"]["delegation_id"] == did
            assert wait_until(lambda: len(records(results)) >= 1)
            settle()
            got = records(results)
            assert [r["delegation_id"] for r in got] == [did]
            assert got[0]["status"] == "completed"
            assert got[0]["response_preview"] == "the sum is 42"
            assert got[0]["target_id"] == b and got[0]["source_id"] == a
            assert hb.status().results_delivered == 1
    finally:
        agent_a.close()


def test_a_delegation_to_an_unreachable_target_arrives_once_as_failed(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("caller")
    c, error = real_platform.failing_target()
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    results = hb_files["results_file"]
    with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files) as hb:
        did = real_platform.delegate(a, ta, c, "summarise")
        assert wait_until(lambda: len(records(results)) >= 1)
        settle()
        got = records(results)
        assert [r["delegation_id"] for r in got] == [did]
        assert got[0]["status"] == "failed"
        assert error in got[0]["error"]
        assert hb.status().results_delivered == 1


def test_a_peers_message_arrives_once(
    real_platform: RealPlatform, agent_server: AgentServer, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("receiver")
    b, tb = real_platform.create_workspace("peer")
    real_platform.register(a, ta, url=agent_server.url)
    write_token(hb_files["configs_dir"], ta)
    results = hb_files["results_file"]
    with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files):
        reply = real_platform.peer_message(a, b, tb, "report ready")
        assert reply.status_code == 200, reply.text
        assert wait_until(lambda: len(records(results)) >= 1)
        settle()
        got = records(results)
        assert len(got) == 1
        assert got[0]["response_preview"] == "report ready"
        assert got[0]["target_id"] == b and got[0]["source_id"] == a
