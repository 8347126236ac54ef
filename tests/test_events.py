"""The event stream: SSE parsing (pure), and the third thread against FakePlatform's stream.

At a 30 s interval nothing but an event can bring a result within a second, so the threaded
tests below prove the event path; with the stream dropped, refused, stalled or never answering,
the schedule still delivers everything, once, and ``stop()`` stays bounded.
"""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from heartbeat_sync import Heartbeat, StreamStatus
from heartbeat_sync.testing import FakePlatform, Workspace
from heartbeat_sync.wire.auth import Credentials
from heartbeat_sync.wire.client import PlatformClient
from heartbeat_sync.wire.events import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    RECONNECT_SPREAD,
    EventStream,
    backoff_delay,
    events_enabled,
    reconnect_delay,
)
from heartbeat_sync.wire.http import make_session
from heartbeat_sync.wire.sse import MAX_EVENT_BYTES, Event, SSEParser, is_event_stream, wants_poll

from .conftest import HeartbeatFactory, LogCapture, read_lines, wait_for_beats, wait_until

WS = "11111111-2222-3333-4444-555555555555"
REAL_FRAMES = (
    b": ping\n\n"
    b'data: {"type":"DELEGATION_SENT","timestamp":1,"data":{"delegation_id":"d1"}}\n\n'
    b'data: {"type":"DELEGATION_COMPLETE","timestamp":2,"data":{"delegation_id":"d1"}}\n\n'
)


# --- parsing (pure) ---------------------------------------------------------------------------


def test_parser_reads_the_real_servers_framing() -> None:
    parser = SSEParser()
    events = parser.feed(REAL_FRAMES)
    assert [json.loads(e.data)["type"] for e in events] == [
        "DELEGATION_SENT",
        "DELEGATION_COMPLETE",
    ]
    assert all(e.name == "message" for e in events)
    assert parser.comments == 1


@given(st.lists(st.integers(1, len(REAL_FRAMES) - 1), max_size=8))
def test_parser_gives_the_same_events_however_the_bytes_are_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(REAL_FRAMES)]
    parser = SSEParser()
    events: list[Event] = []
    for a, b in zip(bounds, bounds[1:]):
        events += parser.feed(REAL_FRAMES[a:b])
    assert events == SSEParser().feed(REAL_FRAMES)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_parser_accepts_every_line_ending(newline: bytes) -> None:
    raw = b"event: x" + newline + b"data: a" + newline + b"data:b" + newline + newline
    half = len(raw) // 2
    parser = SSEParser()
    events = parser.feed(raw[:half]) + parser.feed(raw[half:])
    assert events == [Event("x", "a\nb")]


def test_parser_skips_an_oversized_line_and_keeps_memory_bounded() -> None:
    parser = SSEParser(max_line=100)
    events = parser.feed(b"data: " + b"x" * 1000)
    events += parser.feed(b"y" * 1000 + b"\n\ndata: ok\n\n")
    assert events == [Event("message", "ok")]
    assert parser.oversized == 1
    assert len(parser._buf) == 0


def _short_data_lines(total: int, piece: int = 65536) -> Iterator[bytes]:
    """``total`` bytes of 64-byte ``data:`` lines, no blank line, ``piece`` bytes at a time."""
    line = b'data: {"type":"DELEGATION_COMPLETE"' + b" " * 28 + b"\n"
    block = line * (piece // len(line))
    for _ in range(total // len(block)):
        yield block


def test_an_event_that_never_ends_is_dropped_and_memory_stays_bounded() -> None:
    """16 MiB of short data lines and no blank line: the parser holds about one event's worth
    (MAX_EVENT_BYTES), counts one dropped event, and delivers the next event whole."""
    parser = SSEParser()
    tracemalloc.start()
    try:
        events: list[Event] = []
        for block in _short_data_lines(16 << 20):
            events += parser.feed(block)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == []
    assert held < 3 * MAX_EVENT_BYTES, f"{held} bytes held for a pending event"
    assert parser.dropped_events == 1
    assert parser.feed(b"data: more of it\n\ndata: ok\n\n") == [Event("message", "ok")]
    assert parser.dropped_events == 1
    assert parser.oversized == 0


def test_an_event_at_the_limit_is_kept_and_one_over_it_is_dropped() -> None:
    parser = SSEParser(max_line=100, max_event=20)
    # data lines count as received (field name included): 2 x 10 bytes is the limit.
    assert parser.feed(b"data:12345\ndata:67890\n\n") == [Event("message", "12345\n67890")]
    assert parser.feed(b"event: big\ndata:12345\ndata:678901\n") == []
    assert parser.dropped_events == 1
    # What follows in the same event is skipped, its name too; the next event is whole.
    assert parser.feed(b"data:x\nevent: other\n\ndata:y\n\n") == [Event("message", "y")]
    assert parser.dropped_events == 1
    assert parser.events == 2


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"type": "DELEGATION_COMPLETE", "data": {}}, True),
        ({"type": "DELEGATION_FAILED"}, True),
        ({"type": "DELEGATION_SENT", "data": {}}, False),
        ({"type": "DELEGATION_STATUS", "data": {}}, False),
        ({"type": "WORKSPACE_HEARTBEAT", "data": {"active_tasks": 0}}, False),
        ({"type": "TASK_UPDATED", "data": {}}, False),
        (
            {"type": "ACTIVITY_LOGGED", "data": {"activity_type": "a2a_receive", "source_id": "p"}},
            True,
        ),
        (
            {"type": "ACTIVITY_LOGGED", "data": {"activity_type": "a2a_receive", "source_id": WS}},
            False,
        ),
        (
            {
                "type": "ACTIVITY_LOGGED",
                "data": {"activity_type": "a2a_receive", "source_id": None},
            },
            False,
        ),
        (
            {"type": "ACTIVITY_LOGGED", "data": {"activity_type": "task_update", "source_id": "p"}},
            False,
        ),
        ({"type": "ACTIVITY_LOGGED", "data": "odd"}, True),
        ({"type": "ACTIVITY_LOGGED", "data": {}}, True),
        (["DELEGATION_COMPLETE"], False),
        ("DELEGATION_COMPLETE", False),
    ],
)
def test_which_events_ask_for_a_poll(payload: object, expected: bool) -> None:
    assert wants_poll(Event("message", json.dumps(payload)), WS) is expected


def test_garbage_data_asks_for_nothing() -> None:
    assert not wants_poll(Event("message", "{not json"), WS)
    assert not wants_poll(Event("message", "[" * 100000), WS)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    assert backoff_delay(0, 0.0) == 0.0
    assert backoff_delay(0, 0.999) < 0.5
    assert backoff_delay(3, 0.999) == pytest.approx(0.999 * 4.0)
    assert backoff_delay(100, 0.999) == pytest.approx(0.999 * BACKOFF_CAP)
    assert backoff_delay(100, 0.999, cap=5.0) == pytest.approx(0.999 * 5.0)


def test_a_fleet_whose_streams_dropped_together_comes_back_spread_out() -> None:
    """1000 healthy streams cut at one moment (a platform redeploy): their next attempts are
    spread evenly over RECONNECT_SPREAD seconds, none later, so no half second brings back
    much more than its share of the fleet."""
    rng = random.Random(19)
    fleet = 1000
    delays = [reconnect_delay("healthy", 0, rng.random()) for _ in range(fleet)]
    share = fleet * 0.5 / RECONNECT_SPREAD
    starts = [i * 0.1 for i in range(round(RECONNECT_SPREAD * 10))]
    busiest = max(sum(1 for d in delays if t <= d < t + 0.5) for t in starts)
    assert busiest <= 1.5 * share, f"{busiest} of {fleet} come back within one half second"
    assert all(0.0 <= d < RECONNECT_SPREAD for d in delays)
    assert max(delays) > 0.95 * RECONNECT_SPREAD
    # Draws out of range never leave the window.
    assert reconnect_delay("healthy", 0, -1.0) == 0.0
    assert reconnect_delay("healthy", 0, 2.0) <= RECONNECT_SPREAD
    # Failures in a row still back off from BACKOFF_BASE, whatever the spread.
    assert reconnect_delay("failed", 0, 0.999) < BACKOFF_BASE
    assert reconnect_delay("failed", 3, 0.999) == backoff_delay(3, 0.999)


@pytest.mark.parametrize(
    ("argument", "env", "expected"),
    [
        (True, None, True),
        (True, "", True),
        (True, "1", True),
        (True, "0", False),
        (True, " Off ", False),
        (True, "false", False),
        (True, "no", False),
        (False, "1", False),
    ],
)
def test_events_can_be_turned_off(argument: bool, env: str | None, expected: bool) -> None:
    assert events_enabled(argument, env) is expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/event-stream", True),
        ("text/event-stream; charset=utf-8", True),
        ("Text/Event-Stream ;charset=UTF-8", True),
        (" text/event-stream ", True),
        ("text/html; charset=utf-8", False),
        ("application/json", False),
        ("text/event-streams", False),
        ("text/plain; x=text/event-stream", False),
        ("", False),
        (None, False),
    ],
)
def test_which_content_types_are_an_event_stream(content_type: str | None, expected: bool) -> None:
    assert is_event_stream(content_type) is expected


# --- the thread against FakePlatform ----------------------------------------------------------


def _stream_open(platform: FakePlatform, ws: Workspace, hb: Heartbeat) -> bool:
    return platform.open_streams(ws.id) == 1 and hb.status().beats_ok >= 1


def _delivered(tmp_path: Path) -> list[str]:
    return [json.loads(line)["delegation_id"] for line in read_lines(tmp_path / "results.jsonl")]


def _stream(hb: Heartbeat) -> StreamStatus:
    stream = hb.status().stream
    assert stream is not None
    return stream


def _bounded_stop(hb: Heartbeat, bound: float = 2.0) -> None:
    started = time.monotonic()
    assert hb.stop(timeout=bound)
    assert time.monotonic() - started < bound
    stream = hb.status().stream
    assert stream is not None and not stream.connected


def test_an_event_delivers_the_result_at_once_without_an_extra_beat(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    assert platform.wait_for_requests("activity", 1)
    started = time.monotonic()
    did = platform.add_delegation(ws.id, status="completed", response_preview="42")
    assert wait_until(lambda: _delivered(tmp_path) == [did], timeout=1.0)
    assert time.monotonic() - started < 1.0
    # A poll, not a cycle: still the one beat of the start.
    assert len(platform.requests_for("heartbeat")) == 1
    assert len(platform.requests_for("delegations")) == 2
    # An activity row from a peer is brought in the same way.
    peer = platform.add_workspace()
    platform.add_activity(ws.id, source_id=peer.id, text="report ready")
    assert wait_until(lambda: len(_delivered(tmp_path)) == 2, timeout=1.0)
    assert len(platform.requests_for("heartbeat")) == 1
    _bounded_stop(hb)


def test_a_burst_of_events_is_one_poll_and_each_result_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    """30 completions are told on the stream while the poll the first one started waits for
    the platform: the burst costs that poll and at most one more, whatever the machine's
    speed (the platform is held until every hint has arrived)."""
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    assert platform.wait_for_requests("activity", 1)
    polls = len(platform.requests_for("delegations"))
    with platform.held():
        ids = [platform.add_delegation(ws.id, status="completed") for _ in range(30)]
        assert wait_until(lambda: _stream(hb).polls_asked >= 30)
    assert wait_until(lambda: sorted(_delivered(tmp_path)) == sorted(ids), timeout=3.0)
    assert len(platform.requests_for("delegations")) - polls in (1, 2)
    assert len(platform.requests_for("heartbeat")) == 1
    _bounded_stop(hb)


def test_beats_and_other_events_ask_for_no_poll(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    assert platform.wait_for_requests("activity", 1)
    for kind in ("WORKSPACE_HEARTBEAT", "TASK_UPDATED", "DELEGATION_SENT", "WORKSPACE_ONLINE"):
        platform.emit_event(ws.id, kind, {})
    platform.emit_raw_event(ws.id, b"data: {garbage\n\n: comment\n\ndata: [1,2]\n\n")
    # Then a real event: read after the six others, it asks for the one poll of the lot.
    platform.emit_event(ws.id, "DELEGATION_FAILED", {"delegation_id": "x"})
    assert wait_until(lambda: _stream(hb).polls_asked >= 1)
    assert _stream(hb).events >= 7 and _stream(hb).polls_asked == 1
    # The thread survived the garbage: the real event brings its poll.
    assert platform.wait_for_requests("delegations", 2)
    _bounded_stop(hb)


def test_an_event_over_the_limit_on_the_stream_is_dropped_with_a_warning(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    assert platform.wait_for_requests("activity", 1)
    # A DELEGATION_COMPLETE whose data never ends: 2 MiB of lines, then the blank line.
    platform.emit_raw_event(ws.id, b"".join(_short_data_lines(2 << 20)) + b"\n")
    platform.emit_event(ws.id, "DELEGATION_FAILED", {"delegation_id": "x"})
    # The event after the dropped one is read on the same connection, and asks for its poll.
    assert wait_until(lambda: _stream(hb).polls_asked >= 1, timeout=3.0)
    assert _stream(hb).connects == 1
    assert any("event over" in m for m in logs.messages(logging.WARNING))
    _bounded_stop(hb)


def test_a_dropped_stream_reconnects_and_loses_nothing(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    hb = make_hb(interval_seconds=1.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    # Every reconnect is cut too: what completes meanwhile comes with the schedule.
    platform.fault("events", drop=True)
    assert platform.drop_streams(ws.id) == 1
    assert wait_until(lambda: platform.open_streams(ws.id) == 0)
    did = platform.add_delegation(ws.id, status="completed")
    assert wait_until(lambda: _delivered(tmp_path) == [did], timeout=3.0)
    # The stream comes back by itself once the platform lets it (after the backoff the
    # refused attempts built up, at most a few seconds here), and events work again.
    platform.clear_faults("events")
    assert wait_until(lambda: platform.open_streams(ws.id) == 1, timeout=15.0)
    # The platform counts the stream as open as it answers; the thread counts the connection
    # once it has read the answer's headers, a moment later.
    assert wait_until(lambda: _stream(hb).connects >= 2, timeout=2.0)
    asked = _stream(hb).polls_asked
    later = platform.add_delegation(ws.id, status="completed")
    assert wait_until(lambda: _delivered(tmp_path) == [did, later])
    assert _stream(hb).polls_asked > asked  # told on the stream that came back
    _bounded_stop(hb)


def test_a_refused_stream_404_costs_latency_never_a_result(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    platform.fault("events", status=404, body={"error": "not found"})
    hb = make_hb(interval_seconds=0.3)
    hb.start_thread()
    assert platform.wait_for_requests("events", 1)
    ids = [platform.add_delegation(ws.id, status="completed") for _ in range(3)]
    assert wait_until(lambda: sorted(_delivered(tmp_path)) == sorted(ids), timeout=3.0)
    # A server without the route is not asked again soon (nor warned about at every cycle):
    # not within the cycles of four times BACKOFF_BASE, which brings a failed stream back twice.
    assert wait_for_beats(platform, math.ceil(4 * BACKOFF_BASE / 0.3) + 1)
    assert len(platform.requests_for("events")) == 1
    assert _stream(hb).last_refusal == 404
    assert sum("no event stream" in m for m in logs.messages(logging.INFO)) == 1
    assert not logs.messages(logging.WARNING)
    _bounded_stop(hb)
    assert sorted(_delivered(tmp_path)) == sorted(ids)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html; charset=utf-8", "<html><body>Sign in to continue</body></html>"),
        ("application/json", {"status": "ok"}),
    ],
)
def test_a_200_that_is_not_an_event_stream_is_a_server_without_the_stream(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
    content_type: str,
    body: object,
) -> None:
    """A proxy's page or another route's answer is not a stream that ended at once: the route is
    not asked again within several reconnect periods, and it is said once, at INFO."""
    platform.fault("events", status=200, headers={"Content-Type": content_type}, body=body)
    hb = make_hb(interval_seconds=0.3)
    hb.start_thread()
    assert platform.wait_for_requests("events", 1)
    # A stream that ends at once is tried again within BACKOFF_BASE, then within twice that...
    # the cycles of four times BACKOFF_BASE pass without a second attempt.
    assert wait_for_beats(platform, math.ceil(4 * BACKOFF_BASE / 0.3) + 1)
    assert len(platform.requests_for("events")) == 1
    stream = _stream(hb)
    assert stream.last_refusal == 200 and stream.connects == 0
    assert sum("no event stream" in m for m in logs.messages(logging.INFO)) == 1
    assert not logs.messages(logging.WARNING)
    did = platform.add_delegation(ws.id, status="completed")
    assert wait_until(lambda: _delivered(tmp_path) == [did], timeout=3.0)
    _bounded_stop(hb)


def test_an_event_stream_with_parameters_in_its_content_type_is_read(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    platform.fault("events", headers={"Content-Type": "Text/Event-Stream; charset=UTF-8"})
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    assert platform.wait_for_requests("activity", 1)
    did = platform.add_delegation(ws.id, status="completed")
    assert wait_until(lambda: _delivered(tmp_path) == [did], timeout=1.0)
    _bounded_stop(hb)


@pytest.mark.parametrize("how", ["no answer", "silent after the headers"])
def test_a_stream_that_never_sends_costs_latency_never_a_result(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path, how: str
) -> None:
    if how == "no answer":
        platform.fault("events", delay=60.0)
    else:
        platform.stall_streams(True)
    hb = make_hb(interval_seconds=0.3)
    hb.start_thread()
    assert platform.wait_for_requests("events", 1)
    ids = [platform.add_delegation(ws.id, status="completed") for _ in range(3)]
    assert wait_until(lambda: sorted(_delivered(tmp_path)) == sorted(ids), timeout=3.0)
    assert _stream(hb).polls_asked == 0
    # stop() cuts the hanging stream as it cuts any request in flight.
    _bounded_stop(hb)
    assert len(_delivered(tmp_path)) == 3


def _accept_request(listener: socket.socket) -> socket.socket:
    """The stream thread's connection, its request read up to the blank line."""
    conn, _ = listener.accept()
    conn.settimeout(5.0)
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        assert data, "the connection closed before its request"
        head += data
    assert head.startswith(b"GET /workspaces/%s/events/stream " % WS.encode())
    return conn


@pytest.mark.parametrize("framing", ["until the connection closes", "with a Content-Length"])
def test_a_stream_without_chunked_framing_is_read_as_it_arrives_not_byte_by_byte(
    tmp_path: Path, framing: str
) -> None:
    """A server (or a proxy in front of it) that sends the stream without chunked framing:
    every event is read as soon as it has arrived, while the connection stays open, in a few
    reads per event, never one read per byte."""
    pad = "x" * 2000
    frames = [b": ping\n\n"] + [
        b'data: {"type":"DELEGATION_COMPLETE","timestamp":%d,"data":{"delegation_id":"d%d",'
        b'"response_preview":"%s"}}\n\n' % (i, i, pad.encode())
        for i in range(20)
    ]
    count, length = len(frames), sum(len(f) for f in frames)
    hints: list[int] = []
    credentials = Credentials(tmp_path, env_token="token-1")

    def client() -> PlatformClient:
        return PlatformClient(
            f"http://127.0.0.1:{listener.getsockname()[1]}", WS, credentials, make_session
        )

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5.0)
        stream = EventStream(
            client, WS, lambda: hints.append(1), idle_timeout=10.0, draw=lambda: 0.0
        )
        stream.start()
        try:
            with _accept_request(listener) as conn:
                head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                head += "Cache-Control: no-cache\r\n"
                if framing == "with a Content-Length":
                    # More than is sent: the body is still being read when stop() comes (a
                    # body that ended would have the thread reconnecting instead).
                    head += f"Content-Length: {2 * length}\r\n"
                conn.sendall(head.encode() + b"Connection: close\r\n\r\n")
                for n, frame in enumerate(frames):
                    conn.sendall(frame)
                    # Nothing more is sent until this event has been read: a read that waited
                    # for more bytes than had arrived would never return.
                    assert wait_until(lambda n=n: len(hints) == n, timeout=2.0), (n, len(hints))
                assert stream.events == count - 1
                assert stream.reads <= 3 * count, f"{stream.reads} reads for {length} bytes"
                # stop() cuts such a stream mid-read as it cuts a chunked one.
                started = time.monotonic()
                assert stream.stop(timeout=2.0)
                assert time.monotonic() - started < 2.0
        finally:
            stream.stop(timeout=2.0)


class _GatedSessions:
    """A session factory whose first event-stream request waits, just before it connects,
    until ``stop()`` has aborted that session: the moment a busy machine may preempt the
    stream thread, between its look at the stop flag and its new connection."""

    def __init__(self) -> None:
        self.held = threading.Event()

    def __call__(self) -> requests.Session:
        session = make_session()
        request = session.request

        def gated(method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
            if url.endswith("/events/stream") and not self.held.is_set():
                self.held.set()
                session.get_adapter(url).max_retries.aborted.wait(5.0)
            return request(method, url, *args, **kwargs)

        session.request = gated  # type: ignore[method-assign]
        return session


def test_stop_is_bounded_when_it_comes_as_the_stream_opens_its_connection(tmp_path: Path) -> None:
    # A stop() that comes while the stream thread opens a connection aborts the session
    # before that connection exists; the connection is cut the moment it is made.
    gate = _GatedSessions()
    credentials = Credentials(tmp_path, env_token="token-1")
    listener = socket.create_server(("127.0.0.1", 0))  # its connections are never answered
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    stream = EventStream(
        lambda: PlatformClient(url, WS, credentials, gate, timeout=30.0),
        WS,
        lambda: None,
        idle_timeout=30.0,
        draw=lambda: 0.0,
    )
    stream.start()
    try:
        assert gate.held.wait(5.0)
        started = time.monotonic()
        assert stream.stop(timeout=2.0)
        assert time.monotonic() - started < 2.0
    finally:
        listener.close()  # resets the unanswered connection: the thread ends at once
        stream.stop(timeout=5.0)


def test_a_401_on_the_stream_rereads_the_token_like_the_beat(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    # The token is replaced without an announcement (a re-provision revokes every token and
    # writes a new one where the Heartbeat reads it); the connection the stream holds is then
    # cut.
    platform.revoke_tokens(ws.id)
    platform.issue_token(ws.id)
    platform.write_token(ws.id, hb.configs_dir)
    platform.drop_streams(ws.id)
    # A stream that was up a while comes back within RECONNECT_SPREAD.
    assert wait_until(lambda: platform.open_streams(ws.id) == 1, timeout=RECONNECT_SPREAD + 3.0)
    statuses = [r.status for r in platform.requests_for("events")]
    assert statuses[-2:] == [401, 200], statuses
    did = platform.add_delegation(ws.id, status="completed")
    assert wait_until(lambda: _delivered(tmp_path) == [did], timeout=1.0)
    _bounded_stop(hb)


def test_a_rotation_announced_on_the_stream_has_the_next_request_read_the_new_token(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    # The platform says EXTERNAL_CREDENTIALS_ROTATED {workspace_id} when the token is
    # rotated: the next request carries the new one at once instead of being refused first.
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    # The first cycle is over (its polls, then the team's lookup), and so are the polls the
    # stream asked for when it opened (a forced cycle does them, whenever the stream came):
    # nothing is sent until asked.
    assert platform.wait_for_requests("peers", 1)
    hb.beat_now()
    assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 2)
    second = platform.requests_for("heartbeat", ws.id)[1].time
    assert platform.wait_for(
        lambda: any(r.time > second for r in platform.requests_for("activity", ws.id))
    )
    token = platform.rotate_token(ws.id)
    (tmp_path / "configs" / ".auth_token").write_text(token)
    read = _stream(hb).events
    sent = len(platform.requests)
    platform.emit_event(ws.id, "EXTERNAL_CREDENTIALS_ROTATED", {"workspace_id": ws.id})
    assert wait_until(lambda: _stream(hb).events > read)
    hb.beat_now()
    assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 3)
    after = platform.requests[sent:]
    beats = [r for r in after if r.route == "heartbeat"]
    assert beats and beats[0].headers["authorization"] == f"Bearer {token}"
    assert all(r.status != 401 for r in after), [(r.route, r.status) for r in after]
    _bounded_stop(hb)


def test_events_false_or_the_environment_turns_the_stream_off(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with make_hb(events=False) as hb:
        assert platform.wait_for_requests("heartbeat", 2)
        assert hb.status().stream is None
    monkeypatch.setenv("HEARTBEAT_SYNC_EVENTS", "0")
    with make_hb() as hb:
        assert platform.wait_for_requests("heartbeat", 4)
        assert hb.status().stream is None
    assert platform.requests_for("events") == []


def test_a_poll_request_never_swallows_a_requested_beat(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    hb = make_hb(interval_seconds=30.0)
    hb.start_thread()
    assert wait_until(lambda: _stream_open(platform, ws, hb))
    assert platform.wait_for_requests("activity", 1)
    did = platform.add_delegation(ws.id, status="completed")
    hb.current_task = "summarising"  # a changed task is beaten at once
    assert wait_until(lambda: _delivered(tmp_path) == [did], timeout=1.0)
    assert platform.wait_for(
        lambda: any(b.get("current_task") == "summarising" for b in platform.heartbeats()),
        timeout=1.0,
    )
    _bounded_stop(hb)


# --- FakePlatform's stream --------------------------------------------------------------------


def _open(platform: FakePlatform, ws: Workspace, token: str | None = None) -> requests.Response:
    return requests.get(
        f"{platform.url}/workspaces/{ws.id}/events/stream",
        headers={"Authorization": f"Bearer {token or ws.token}"},
        stream=True,
        timeout=(5, 5),
    )


def test_fake_stream_has_the_real_servers_framing(platform: FakePlatform, ws: Workspace) -> None:
    resp = _open(platform, ws)
    try:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.raw.chunked
        assert platform.wait_for(lambda: platform.open_streams(ws.id) == 1)
        did = platform.add_delegation(ws.id, target_id="peer", status="pending", summary="t")
        platform.set_delegation(ws.id, did, status="completed", response_preview="42")
        chunks = resp.iter_content(chunk_size=65536)
        got = b""
        while got.count(b"\n\n") < 3:
            got += next(chunks)
    finally:
        resp.close()
    ping, sent, done = got.split(b"\n\n")[:3]
    assert ping == b": ping"
    assert sent.startswith(b"data: {") and done.startswith(b"data: {")
    event = json.loads(done[len(b"data: ") :])
    assert set(event) == {"type", "timestamp", "data"}
    assert event["type"] == "DELEGATION_COMPLETE"
    assert event["data"] == {"delegation_id": did, "target_id": "peer", "response_preview": "42"}
    assert json.loads(sent[len(b"data: ") :])["type"] == "DELEGATION_SENT"


def test_fake_stream_takes_a_header_faults_content_type(
    platform: FakePlatform, ws: Workspace
) -> None:
    platform.fault("events", headers={"Content-Type": "text/plain", "X-Extra": "1"}, times=1)
    resp = _open(platform, ws)
    try:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == "text/plain"
        assert resp.headers["X-Extra"] == "1"
        assert resp.raw.chunked  # the framing stays the stream's
        assert next(resp.iter_content(chunk_size=65536)).startswith(b": ping")
    finally:
        resp.close()


def test_fake_stream_refuses_like_the_real_server(platform: FakePlatform, ws: Workspace) -> None:
    assert _open(platform, ws, token="wrong").status_code == 401
    platform.fault("events", status=404, times=1)
    assert _open(platform, ws).status_code == 404
    assert platform.open_streams() == 0


def test_fake_stream_can_be_dropped_and_stalled(platform: FakePlatform, ws: Workspace) -> None:
    resp = _open(platform, ws)
    assert platform.wait_for(lambda: platform.open_streams(ws.id) == 1)
    assert platform.drop_streams(ws.id) == 1
    with pytest.raises(requests.RequestException):
        for _ in resp.iter_content(chunk_size=65536):
            pass  # the ping, then the cut
    resp.close()
    platform.stall_streams(True)
    resp = _open(platform, ws)
    try:
        assert platform.wait_for(lambda: platform.open_streams(ws.id) == 1)
        platform.add_delegation(ws.id, status="failed")
        with pytest.raises(requests.ConnectionError):  # a read timeout: nothing ever comes
            requests.get(
                f"{platform.url}/workspaces/{ws.id}/events/stream",
                headers={"Authorization": f"Bearer {ws.token}"},
                timeout=(5, 0.3),
            )
    finally:
        resp.close()
        platform.stall_streams(False)


def test_a_failing_session_factory_never_ends_the_stream_thread(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    made = []

    def flaky() -> requests.Session:
        made.append(1)
        if len(made) <= 3:  # the beat's, the worker's and the stream's first sessions
            raise RuntimeError("no session today")
        return make_session()

    hb = make_hb(interval_seconds=0.3, session_factory=flaky)
    hb.start_thread()
    assert hb.status().stream is not None
    assert wait_until(lambda: _stream(hb).connects >= 1, timeout=10.0)
    assert _stream(hb).connected
    _bounded_stop(hb)


def test_a_canvas_row_asks_for_a_poll_only_where_a_handler_takes_canvas_messages() -> None:
    canvas = Event(
        "message",
        json.dumps(
            {"type": "ACTIVITY_LOGGED", "data": {"activity_type": "a2a_receive", "source_id": None}}
        ),
    )
    own = Event(
        "message",
        json.dumps(
            {"type": "ACTIVITY_LOGGED", "data": {"activity_type": "a2a_receive", "source_id": WS}}
        ),
    )
    assert not wants_poll(canvas, WS)
    assert wants_poll(canvas, WS, canvas=True)
    assert not wants_poll(own, WS, canvas=True)  # its own self-message is never a message
