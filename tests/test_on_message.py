"""``on_message``: every message to the workspace reaches a handler once, and its answer goes back
the way it came (against ``FakePlatform``, both server generations where they differ)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat, InboundMessage
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, LogCapture, read_lines, wait_for_beats, wait_until


class Handled:
    """A handler that records what it was given, answers with ``answer``, and can be held."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer
        self.messages: list[InboundMessage] = []
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, message: InboundMessage) -> str | None:
        with self._lock:
            self.messages.append(message)
        self.started.set()
        self.release.wait(30)
        return self.answer

    def texts(self) -> list[str]:
        with self._lock:
            return [m.text for m in self.messages]

    def count(self) -> int:
        with self._lock:
            return len(self.messages)


@pytest.fixture(params=["2026-05", "2026-08"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakePlatform]:
    generation = None if request.param == "2026-05" else request.param
    with FakePlatform(**({"generation": generation} if generation else {})) as platform:
        yield platform


@pytest.fixture
def agent(fake: FakePlatform) -> Workspace:
    return fake.add_workspace(name="agent", delivery_mode="poll", role="helper")


def test_a_canvas_message_and_a_peers_reach_the_handler_never_the_results_file(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    peer = fake.add_workspace(name="beta", role="researcher")
    handled = Handled()
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handled)
    fake.queue_poll_message(agent.id, "hi from the canvas")
    fake.queue_poll_message(agent.id, "report ready", sender_id=peer.id)
    fake.add_delegation(agent.id, status="completed", response_preview="delegated result")
    hb.start_thread()
    assert wait_until(lambda: handled.count() == 2)
    assert wait_until(lambda: hb.status().results_delivered == 1)
    canvas, from_peer = handled.messages
    assert (canvas.source, canvas.source_id, canvas.text) == ("canvas", None, "hi from the canvas")
    assert (from_peer.source, from_peer.source_id, from_peer.text) == (
        "peer",
        peer.id,
        "report ready",
    )
    assert not canvas.redelivered and not from_peer.redelivered
    assert canvas.received_at is not None and canvas.message_id
    if fake.generation == "2026-08":
        assert (from_peer.peer_name, from_peer.peer_role) == ("beta", "researcher")
        assert isinstance(from_peer.seq, int)
    else:
        assert from_peer.peer_name is None and from_peer.seq is None
    results = [json.loads(line) for line in read_lines(Path(hb.results_path))]
    assert [r["response_preview"] for r in results] == ["delegated result"]  # messages never
    assert wait_until(lambda: hb.status().messages_handled == 2)


def test_a_returned_answer_goes_back_the_way_the_message_came(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    peer = fake.add_workspace(name="beta", delivery_mode="poll")
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=lambda m: f"re: {m.text}")
    fake.queue_poll_message(agent.id, "canvas question")
    fake.queue_poll_message(agent.id, "peer question", sender_id=peer.id, message_id="q-1")
    hb.start_thread()
    assert wait_until(lambda: hb.status().replies_sent == 2)
    # To the canvas user: the workspace's notification.
    assert fake.notifications(agent.id) == ["re: canvas question"]
    # To the peer: an A2A message from this workspace, logged in the peer's activity.
    rows = [r for r in fake.activity_rows(peer.id) if isinstance(r, dict)]
    assert len(rows) == 1 and rows[0]["source_id"] == agent.id
    message = rows[0]["request_body"]["params"]["message"]
    assert message["parts"] == [{"kind": "text", "text": "re: peer question"}]
    assert message["metadata"] == {"in_reply_to": "q-1"}
    sent = fake.requests_for("a2a", peer.id)[-1]
    assert sent.headers["x-workspace-id"] == agent.id
    assert sent.headers["authorization"] == f"Bearer {agent.token}"


def test_the_workspaces_own_rows_are_no_messages(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    handled = Handled()
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handled)
    fake.add_activity(agent.id, source_id=None, method="notify", summary="Agent message: mine")
    fake.add_activity(agent.id, source_id=agent.id, text="Delegation results are ready")
    fake.queue_poll_message(agent.id, "the real one")
    hb.start_thread()
    assert wait_until(lambda: handled.count() == 1)
    assert wait_for_beats(fake, 3, workspace_id=agent.id)
    assert handled.texts() == ["the real one"]


def test_a_message_logged_twice_behind_a_busy_agent_is_handled_once(
    agent: Workspace, make_hb: HeartbeatFactory, fake: FakePlatform
) -> None:
    if fake.generation != "2026-08":
        pytest.skip("only the August platform logs a queued message twice")
    handled = Handled()
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handled)
    ids = fake.queue_busy_message(agent.id, "wait behind busy", message_id="busy-1")
    assert len(ids) == 2
    hb.start_thread()
    assert wait_until(lambda: handled.count() == 1)
    assert wait_for_beats(fake, 3, workspace_id=agent.id)
    assert handled.texts() == ["wait behind busy"]


def test_a_restart_hands_nothing_over_twice(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    first = Handled()
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=first)
    for n in range(3):
        fake.queue_poll_message(agent.id, f"m{n}")
    hb.start_thread()
    assert wait_until(lambda: first.count() == 3)
    assert wait_until(lambda: hb.status().messages_handled == 3)
    hb.stop()
    second = Handled()
    again = make_hb(on=fake, workspace_id=agent.id, on_message=second)
    fake.queue_poll_message(agent.id, "after the restart")
    again.start_thread()
    assert wait_until(lambda: second.count() == 1)
    assert wait_for_beats(fake, 3, workspace_id=agent.id)
    assert second.texts() == ["after the restart"]


def test_while_every_handler_runs_the_messages_wait_on_the_platform_and_beats_go_on(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    handled = Handled()
    handled.release.clear()
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handled, max_concurrent=1)
    for n in range(3):
        fake.queue_poll_message(agent.id, f"m{n}")
    hb.start_thread()
    try:
        assert handled.started.wait(5)
        assert wait_for_beats(fake, 4, workspace_id=agent.id)  # the beats go on meanwhile
        status = hb.status()
        assert handled.texts() == ["m0"]
        assert status.handlers_running == 1 and status.oldest_handler_seconds is not None
        assert fake.heartbeats(agent.id)[-1]["active_tasks"] == 1  # the handler is a task
        if fake.generation == "2026-08":
            assert fake.workspace(agent.id).is_busy
    finally:
        handled.release.set()
    assert wait_until(lambda: handled.texts() == ["m0", "m1", "m2"])
    assert wait_until(lambda: fake.heartbeats(agent.id)[-1]["active_tasks"] == 0)


def test_a_handler_that_raises_is_logged_and_counted_and_the_next_message_is_handled(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    seen: list[str] = []

    def handler(message: InboundMessage) -> str | None:
        seen.append(message.text)
        if message.text == "bad":
            raise RuntimeError("handler bug")
        return None

    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handler)
    fake.queue_poll_message(agent.id, "bad")
    fake.queue_poll_message(agent.id, "good")
    hb.start_thread()
    assert wait_until(lambda: hb.status().messages_handled == 1)
    assert seen == ["bad", "good"]
    assert hb.status().handler_errors == 1
    raised = [r for r in logs.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(raised) == 1 and "handler bug" in str(raised[0].exc_info[1])  # type: ignore[index]


def test_history_older_than_the_backlog_is_not_handed_over_at_a_first_start(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    handled = Handled()
    fake.queue_poll_message(agent.id, "old news")
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handled, message_backlog=0.0)
    hb.start_thread()
    assert wait_for_beats(fake, 2, workspace_id=agent.id)
    fake.queue_poll_message(agent.id, "fresh")
    assert wait_until(lambda: handled.count() == 1)
    assert wait_for_beats(fake, 2, workspace_id=agent.id)
    assert handled.texts() == ["fresh"]


def test_rows_with_odd_bodies_are_handed_over_and_rows_without_an_id_skipped(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    handled = Handled()
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handled)
    fake.add_activity(agent.id, source_id=None, request_body="not json-rpc")
    fake.add_activity(agent.id, source_id=None, request_body={"params": {"message": {}}})
    fake.add_raw_activity_row(agent.id, {"activity_type": "a2a_receive", "source_id": None})
    fake.add_raw_activity_row(agent.id, ["not", "a", "row"])
    fake.queue_poll_message(agent.id, "x" * (2 << 20))
    hb.start_thread()
    assert wait_until(lambda: handled.count() == 3)
    assert wait_for_beats(fake, 2, workspace_id=agent.id)
    texts = handled.texts()
    assert texts[:2] == ["", ""] and len(texts) == 3
    assert handled.messages[2].truncated and len(texts[2]) == 1 << 20
    assert hb.status().messages_skipped == 2


def test_each_reply_that_cannot_be_sent_is_logged_once_and_counted(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    peer = fake.add_workspace(name="beta", delivery_mode="poll")
    fake.fault("a2a", status=400, workspace_id=peer.id)
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=lambda m: "answer")
    fake.queue_poll_message(agent.id, "q1", sender_id=peer.id)
    fake.queue_poll_message(agent.id, "q2", sender_id=peer.id)
    hb.start_thread()
    assert wait_until(lambda: hb.status().drops.get("reply_failed", 0) == 2)
    assert hb.status().replies_sent == 0
    warned = [m for m in logs.messages(logging.WARNING) if "reply" in m]
    assert len(warned) == 2  # one line each, none for a retry


def test_a_busy_peers_refusal_is_retried(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    peer = fake.add_workspace(name="beta", delivery_mode="poll")
    fake.fault("a2a", status=503, times=2, workspace_id=peer.id, headers={"Retry-After": "0"})
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=lambda m: "answer")
    fake.queue_poll_message(agent.id, "q", sender_id=peer.id)
    hb.start_thread()
    assert wait_until(lambda: hb.status().replies_sent == 1, timeout=10)
    assert hb.status().drops.get("reply_failed", 0) == 0


def test_acknowledges_the_handed_over_rows_on_the_august_platform(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    if fake.generation != "2026-08":
        pytest.skip("the May platform has no ack route (and no seq)")
    handled = Handled()
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=handled)
    row = fake.queue_poll_message(agent.id, "ack me")
    hb.start_thread()
    assert wait_until(lambda: handled.count() == 1)
    seq = next(r["seq"] for r in fake.activity_rows(agent.id) if r["id"] == row)  # type: ignore[index]
    assert wait_until(lambda: fake.workspace(agent.id).last_acked_seq >= seq)


def test_a_workspace_in_push_mode_is_left_so_with_a_warning(
    fake: FakePlatform, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    pushed = fake.add_workspace(name="pushed", url="http://agent.example:9000/")
    peer = fake.add_workspace(name="beta")
    handled = Handled()
    hb = make_hb(on=fake, workspace_id=pushed.id, on_message=handled)
    fake.add_activity(pushed.id, source_id=peer.id, text="went to the URL")
    hb.start_thread()
    assert wait_for_beats(fake, 3, workspace_id=pushed.id)
    assert handled.count() == 0
    warned = [m for m in logs.messages(logging.WARNING) if "push mode" in m]
    assert len(warned) == 1 and "agent.example" in warned[0]
    assert not fake.requests_for("register", pushed.id)  # never switched
    assert fake.workspace(pushed.id).delivery_mode == "push"


def test_a_workspace_no_agent_registered_yet_is_registered_in_poll_mode(
    fake: FakePlatform, make_hb: HeartbeatFactory
) -> None:
    waiting = fake.add_workspace(name="new", status="awaiting_agent")
    handled = Handled()
    hb = make_hb(on=fake, workspace_id=waiting.id, on_message=handled)
    hb.start_thread()
    assert wait_until(lambda: hb.status().registration == "registered")
    assert fake.workspace(waiting.id).delivery_mode == "poll"
    fake.queue_poll_message(waiting.id, "now reachable")
    assert wait_until(lambda: handled.texts() == ["now reachable"])


def test_a_registered_workspace_is_not_registered_again_and_its_stream_opens(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=lambda m: None)
    hb.start_thread()
    assert wait_for_beats(fake, 3, workspace_id=agent.id)
    assert not fake.requests_for("register", agent.id)
    assert hb.status().registration is None
    # Nothing to wait for: the event stream opens as it does without a registration.
    assert wait_until(lambda: fake.open_streams(agent.id) == 1)


def test_reply_after_the_heartbeat_stopped_returns_false(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory
) -> None:
    kept: list[InboundMessage] = []
    hb = make_hb(on=fake, workspace_id=agent.id, on_message=kept.append)
    fake.queue_poll_message(agent.id, "later")
    hb.start_thread()
    assert wait_until(lambda: len(kept) == 1)
    assert hb.stop()
    assert kept[0].reply("too late") is False
    assert hb.status().drops.get("reply_failed", 0) == 1


def test_on_message_with_an_agent_url_warns_at_construction(
    fake: FakePlatform, agent: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    make_hb(on=fake, workspace_id=agent.id, on_message=lambda m: None, agent_url="http://a:1/")
    assert any("push mode" in m for m in logs.messages(logging.WARNING))


# --- across processes --------------------------------------------------------------------------

_AGENT = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from heartbeat_sync import Heartbeat

    url, ws, folder, out, mode = sys.argv[1:6]
    files = json.loads(open(os.path.join(folder, "files.json")).read())

    def handle(message):
        with open(out, "a") as f:
            f.write(json.dumps({"id": message.id, "text": message.text,
                                "redelivered": message.redelivered, "pid": os.getpid()}) + "\\n")
            f.flush()
        if mode == "hang":
            time.sleep(3600)
        return None

    hb = Heartbeat(url, ws, interval_seconds=0.2, on_message=handle, exit_timeout=None, **files)
    hb.start_thread()
    sys.stdout.write("started\\n")
    sys.stdout.flush()
    sys.stdin.read()  # until the test closes it
    hb.stop()
    """
)


def _spawn(fake: FakePlatform, ws: Workspace, folder: Path, out: Path, mode: str) -> Any:
    process = subprocess.Popen(
        [sys.executable, "-c", _AGENT, fake.url, ws.id, str(folder), str(out), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None and process.stdout.readline() == b"started\n"
    return process


def _end(process: Any) -> None:
    process.stdin.close()
    process.wait(10)
    process.stdout.close()


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(out)]


def _files(fake: FakePlatform, ws: Workspace, folder: Path) -> Path:
    files = fake.agent_files(ws.id, folder)
    (folder / "files.json").write_text(json.dumps({k: str(v) for k, v in files.items()}))
    return folder


def test_two_processes_on_one_workspaces_files_hand_each_message_over_once(
    fake: FakePlatform, agent: Workspace, tmp_path: Path
) -> None:
    folder = _files(fake, agent, tmp_path / "agent")
    out = tmp_path / "handled.jsonl"
    processes = [_spawn(fake, agent, folder, out, "answer") for _ in range(2)]
    try:
        for n in range(20):
            fake.queue_poll_message(agent.id, f"m{n}")
        assert wait_until(lambda: len(_lines(out)) >= 20, timeout=30)
        assert wait_for_beats(fake, 5, workspace_id=agent.id)
    finally:
        for process in processes:
            _end(process)
    handled = _lines(out)
    assert sorted(h["text"] for h in handled) == sorted(f"m{n}" for n in range(20))
    assert not any(h["redelivered"] for h in handled)


def test_a_message_whose_process_was_killed_is_offered_again_once_marked_redelivered(
    fake: FakePlatform, agent: Workspace, tmp_path: Path, make_hb: HeartbeatFactory
) -> None:
    folder = _files(fake, agent, tmp_path / "agent")
    out = tmp_path / "handled.jsonl"
    process = _spawn(fake, agent, folder, out, "hang")
    try:
        fake.queue_poll_message(agent.id, "in flight")
        assert wait_until(lambda: len(_lines(out)) == 1, timeout=15)
    finally:
        process.send_signal(signal.SIGKILL)
        _end(process)
    handled = Handled()
    files = json.loads((folder / "files.json").read_text())
    hb = Heartbeat(
        fake.url,
        agent.id,
        interval_seconds=0.2,
        on_message=handled,
        exit_timeout=None,
        **files,
    )
    try:
        hb.start_thread()
        assert wait_until(lambda: handled.count() == 1, timeout=10)
        assert wait_for_beats(fake, 3, workspace_id=agent.id)
    finally:
        hb.stop()
    assert handled.texts() == ["in flight"] and handled.messages[0].redelivered
    assert handled.messages[0].id == _lines(out)[0]["id"]
