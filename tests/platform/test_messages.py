"""``on_message`` against the real servers: a canvas user's and a peer's message reach the
handler with the right text and sender, the replies land where the platform shows them, a
restart hands nothing over twice, a killed handler's message is offered again once, and a
removed workspace ends the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat, InboundMessage

from ._real import RealPlatform, wait_until, write_token

INTERVAL = 0.5


class Handled:
    """Records what the handler was given; answers ``re: <text>``."""

    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []
        self.at: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, message: InboundMessage) -> str:
        with self._lock:
            self.messages.append(message)
            self.at[message.text] = time.monotonic()
        return f"re: {message.text}"

    def texts(self) -> list[str]:
        with self._lock:
            return [m.text for m in self.messages]


def _heartbeat(real: RealPlatform, ws_id: str, files: dict[str, Any], **kw: Any) -> Heartbeat:
    kw.setdefault("interval_seconds", INTERVAL)
    return Heartbeat(real.url, ws_id, exit_timeout=None, **files, **kw)


def _canvas_message(real: RealPlatform, target: str, text: str) -> None:
    """A canvas user's message: the proxy called with no workspace as the caller (the admin
    bearer, which August asks for)."""
    body = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "messageId": f"c-{os.urandom(6).hex()}",
                "parts": [{"kind": "text", "text": text}],
            }
        },
    }
    reply = real.request("POST", f"/workspaces/{target}/a2a", token=real.admin_token, json=body)
    assert reply.status_code in (200, 202), reply.text


def _registered(hb: Heartbeat) -> bool:
    return hb.status().registration == "registered"


def test_canvas_and_peer_messages_reach_the_handler_and_the_replies_land(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("msg-agent")
    b, tb = real_platform.create_workspace("msg-peer")
    real_platform.register(b, tb, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    handled = Handled()
    with _heartbeat(real_platform, a, hb_files, on_message=handled) as hb:
        # Never registered: the handler's Heartbeat registers it in poll mode.
        assert wait_until(lambda: _registered(hb))
        _canvas_message(real_platform, a, "hello from the canvas")
        assert real_platform.peer_message(a, b, tb, "report ready").status_code == 200
        assert wait_until(lambda: len(handled.messages) == 2)
        assert wait_until(lambda: hb.status().replies_sent == 2)
    by_text = {m.text: m for m in handled.messages}
    canvas, peer = by_text["hello from the canvas"], by_text["report ready"]
    assert (canvas.source, canvas.source_id) == ("canvas", None)
    assert (peer.source, peer.source_id) == ("peer", b)
    if real_platform.august:
        assert peer.peer_name == "msg-peer" and isinstance(peer.seq, int)
    # The canvas reply is the workspace's notification row; the peer's, an a2a_receive row of
    # the peer from this workspace.
    notes = real_platform.activity(a, ta, type="a2a_receive")
    assert [n["summary"] for n in notes if n.get("method") == "notify"] == [
        "Agent message: re: hello from the canvas"
    ]
    received = [r for r in real_platform.activity(b, tb, type="a2a_receive") if r["source_id"] == a]
    assert len(received) == 1
    parts = received[0]["request_body"]["params"]["message"]["parts"]
    assert parts == [{"kind": "text", "text": "re: report ready"}]
    # Nothing of the messages went to the results file.
    results = hb_files["results_file"]
    assert not results.exists() or results.read_text() == ""


def test_a_restart_hands_nothing_over_twice_and_a_message_arrives_fast(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("msg-restart")
    b, tb = real_platform.create_workspace("msg-restart-peer")
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    first = Handled()
    with _heartbeat(real_platform, a, hb_files, on_message=first) as hb:
        assert wait_until(lambda: _connected(hb))
        for n in range(3):
            assert real_platform.peer_message(a, b, tb, f"m{n}").status_code == 200
        assert wait_until(lambda: len(first.messages) == 3)
    second = Handled()
    # A long interval: only the event stream can bring the message within the bound.
    with _heartbeat(real_platform, a, hb_files, on_message=second, interval_seconds=30.0) as hb:
        assert wait_until(lambda: _connected(hb))
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        sent = time.monotonic()
        assert real_platform.peer_message(a, b, tb, "after the restart").status_code == 200
        assert wait_until(lambda: second.texts() == ["after the restart"])
        took = second.at["after the restart"] - sent
        assert took < 5.0, took  # a generous bound: the benchmark measures it properly
    assert sorted(first.texts()) == ["m0", "m1", "m2"]


def _connected(hb: Heartbeat) -> bool:
    stream = hb.status().stream
    return stream is not None and stream.connects >= 1


_AGENT = textwrap.dedent(
    """
    import json, os, sys, time
    from heartbeat_sync import Heartbeat

    url, ws, out = sys.argv[1:4]
    files = json.loads(sys.argv[4])

    def handle(message):
        with open(out, "a") as f:
            f.write(json.dumps({"id": message.id, "text": message.text}) + "\\n")
        time.sleep(3600)

    hb = Heartbeat(url, ws, interval_seconds=0.5, on_message=handle, exit_timeout=None, **files)
    hb.start_thread()
    sys.stdin.read()
    """
)


def test_a_message_whose_handler_was_killed_is_offered_again_once(
    real_platform: RealPlatform, hb_files: dict[str, Any], tmp_path: Path
) -> None:
    a, ta = real_platform.create_workspace("msg-killed")
    b, tb = real_platform.create_workspace("msg-killed-peer")
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    out = tmp_path / "handled.jsonl"
    files = json.dumps({k: str(v) for k, v in hb_files.items()})
    process = subprocess.Popen(
        [sys.executable, "-c", _AGENT, real_platform.url, a, str(out), files],
        stdin=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert real_platform.peer_message(a, b, tb, "in flight").status_code == 200
        assert wait_until(lambda: out.exists() and out.read_text().count("\n") == 1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.stdin is not None
        process.stdin.close()
    handled = Handled()
    with _heartbeat(real_platform, a, hb_files, on_message=handled) as hb:
        assert wait_until(lambda: len(handled.messages) == 1)
        beats = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= beats + 3)
    assert handled.texts() == ["in flight"] and handled.messages[0].redelivered
    assert handled.messages[0].id == json.loads(out.read_text())["id"]


@pytest.mark.generations("2026-08")
def test_a_message_that_waited_for_the_agent_is_handled_once(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    """August queues a message to a workspace no agent has registered yet, and logs it twice
    (``(ingest)`` and ``(queued: target busy)``): one message, handled once."""
    a, ta = real_platform.create_workspace("msg-waited")
    b, tb = real_platform.create_workspace("msg-waited-peer")
    assert real_platform.peer_message(a, b, tb, "are you there").status_code == 202
    write_token(hb_files["configs_dir"], ta)
    handled = Handled()
    with _heartbeat(real_platform, a, hb_files, on_message=handled) as hb:
        assert wait_until(lambda: len(handled.messages) == 1)
        beats = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= beats + 3)
        assert wait_until(lambda: _acked(real_platform, a) >= (handled.messages[0].seq or 0))
    assert handled.texts() == ["are you there"]


def _acked(real: RealPlatform, ws_id: str) -> int:
    value = real.sql(
        f"SELECT last_acked_seq FROM inbox_delivery_state WHERE workspace_id = '{ws_id}'"
    )
    return int(value) if value else -1


def test_a_removed_workspace_ends_the_run(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("msg-removed")
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    hb = _heartbeat(real_platform, a, hb_files, on_message=Handled())
    hb.start_thread()
    try:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        real_platform.delete(a)
        assert hb.wait(timeout=30)
        assert hb.status().state == "removed"
    finally:
        hb.stop()
