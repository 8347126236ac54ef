"""The StreamReader: many workspaces' event streams read on one thread.

The framing it decodes is tested pure first; then real streams from FakePlatform on loopback
(no mocks): fifty on one thread, drops, stalls, refusals, a 401, stop(); and a hostile server
of the test's own whose streams must cost only themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat_sync.testing import FakePlatform, Workspace
from heartbeat_sync.wire import StreamReader
from heartbeat_sync.wire.auth import Credentials, save_token
from heartbeat_sync.wire.client import PlatformClient
from heartbeat_sync.wire.http import make_session
from heartbeat_sync.wire.ratelimit import budget_for
from heartbeat_sync.wire.streams import (
    MAX_CHUNK_LINE,
    MAX_HEAD_BYTES,
    BodyFraming,
    ChunkedDecoder,
    HTTPProtocolError,
    ReaderStream,
    parse_head,
)

from .conftest import LogCapture, wait_until

pytestmark = pytest.mark.timeout(90)

WS = "11111111-2222-3333-4444-555555555555"

_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment of the machine would send every stream to EventStream.
    for name in _PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# --- framing (pure) ---------------------------------------------------------------------------

CHUNKED = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"


@given(st.lists(st.integers(1, len(CHUNKED) - 1), max_size=10))
def test_the_chunked_decoder_gives_the_same_data_however_the_bytes_are_split(
    cuts: list[int],
) -> None:
    bounds = [0, *sorted(set(cuts)), len(CHUNKED)]
    decoder = ChunkedDecoder()
    data = b""
    for a, b in zip(bounds, bounds[1:]):
        data += b"".join(decoder.feed(CHUNKED[a:b]))
    assert data == b"hello world"
    assert decoder.done


@pytest.mark.parametrize(
    "garbage",
    [
        b"zz\r\n",  # not hexadecimal
        b"-5\r\n",
        b"\r\n",  # no size at all
        b"1" * 17 + b"\r\n",  # more digits than any real size
        b"3\r\nabcdef\r\n",  # longer than its size says
    ],
)
def test_the_chunked_decoder_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(HTTPProtocolError):
        ChunkedDecoder().feed(garbage)


def test_a_chunk_size_line_that_never_ends_is_refused_in_bounded_memory() -> None:
    decoder = ChunkedDecoder()
    decoder.feed(b"5;" + b"x" * (MAX_CHUNK_LINE - 10))
    with pytest.raises(HTTPProtocolError):
        decoder.feed(b"x" * 100)
    assert len(decoder._line) <= MAX_CHUNK_LINE


def test_a_huge_chunk_is_passed_on_as_it_arrives() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"ffffffff\r\nabc") == [b"abc"]
    assert decoder.feed(b"def") == [b"def"]
    assert not decoder.done


def test_the_head_is_parsed_with_repeated_and_folded_headers() -> None:
    status, headers = parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A: 1\r\nx-a: 2\r\n"
        b"X-Long: one\r\n two"
    )
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["X-A"] == "1, 2"
    assert headers["X-Long"] == "one two"
    with pytest.raises(HTTPProtocolError):
        parse_head(b"SSH-2.0-OpenSSH\r\n")
    with pytest.raises(HTTPProtocolError):
        parse_head(b"HTTP/1.1 2xx OK")
    with pytest.raises(HTTPProtocolError):
        parse_head(b"HTTP/1.1 200 OK\r\nno colon here")


def test_a_body_is_framed_by_its_length_or_by_the_close() -> None:
    framing = BodyFraming(200, {"Content-Length": "5"})
    assert framing.feed(b"abc") == [b"abc"]
    assert framing.feed(b"defgh") == [b"de"]
    assert framing.done
    until_close = BodyFraming(200, {})
    assert until_close.feed(b"x" * 10) == [b"x" * 10]
    assert not until_close.done
    assert BodyFraming(204, {}).done
    with pytest.raises(HTTPProtocolError):
        BodyFraming(200, {"Content-Length": "5, 6"})


# --- streams against FakePlatform -------------------------------------------------------------


class Calls:
    """What a stream's callbacks were called with (they run on the reader's thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hints = 0
        self.connects: list[int] = []
        self.states: list[str] = []
        self.hinted = threading.Event()
        self.hint_at: float | None = None

    def on_hint(self) -> None:
        with self.lock:
            self.hints += 1
            if self.hint_at is None:
                self.hint_at = time.monotonic()
        self.hinted.set()

    def on_connect(self, connects: int) -> None:
        with self.lock:
            self.connects.append(connects)

    def on_state(self, kind: str) -> None:
        with self.lock:
            self.states.append(kind)


@pytest.fixture
def reader() -> Iterator[StreamReader]:
    r = StreamReader()
    r.start()
    yield r
    assert r.stop(5.0)


def _factory(
    url: str, workspace_id: str, configs_dir: Path, timeout: float = 5.0
) -> Callable[[], PlatformClient]:
    credentials = Credentials(configs_dir)
    return lambda: PlatformClient(url, workspace_id, credentials, make_session, timeout=timeout)


def _stream(
    reader: StreamReader,
    url: str,
    workspace_id: str,
    configs_dir: Path,
    calls: Calls,
    *,
    idle_timeout: float = 30.0,
    draw: Callable[[], float] = lambda: 0.0,
    timeout: float = 5.0,
    on_hint: Callable[[], None] | None = None,
) -> ReaderStream:
    return reader.stream(
        _factory(url, workspace_id, configs_dir, timeout),
        workspace_id,
        on_hint or calls.on_hint,
        idle_timeout=idle_timeout,
        draw=draw,
        on_state=calls.on_state,
        on_connect=calls.on_connect,
    )


def _workspace(platform: FakePlatform, folder: Path) -> tuple[Workspace, Path]:
    ws = platform.add_workspace()
    files = platform.agent_files(ws.id, folder / ws.id)
    return ws, files["configs_dir"]


def _served_threads(thread: threading.Thread) -> bool:
    """A thread of FakePlatform's (its own, or a connection's), not the library's."""
    return thread.name.startswith("FakePlatform")


def test_fifty_streams_are_read_on_one_thread_and_each_event_is_heard_at_once(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path
) -> None:
    before = set(threading.enumerate()) - {reader.thread}
    streams: list[tuple[Workspace, Calls, ReaderStream]] = []
    for _ in range(50):
        ws, configs = _workspace(platform, tmp_path)
        calls = Calls()
        stream = _stream(reader, platform.url, ws.id, configs, calls)
        stream.start()
        streams.append((ws, calls, stream))
    assert wait_until(lambda: all(c.connects == [1] for _, c, _ in streams), timeout=20.0)
    assert wait_until(lambda: platform.open_streams() == 50, timeout=10.0)
    assert all(s.running and s.thread is None for _, _, s in streams)
    ours = [t for t in threading.enumerate() if t not in before and not _served_threads(t)]
    assert ours == [reader.thread], [t.name for t in ours]

    emitted = time.monotonic()
    for ws, _, _ in streams:
        platform.emit_event(ws.id, "DELEGATION_COMPLETE", {"delegation_id": "d"})
    assert all(c.hinted.wait(10.0) for _, c, _ in streams)
    slowest = max((c.hint_at or 0.0) - emitted for _, c, _ in streams)
    assert slowest < 5.0, f"the slowest stream heard its event {slowest:.2f} s later"
    statuses = [s.status() for _, _, s in streams]
    assert all(st.connected and st.connects == 1 and st.polls_asked == 1 for st in statuses)

    started = time.monotonic()
    assert all(s.stop(5.0) for _, _, s in streams)
    assert time.monotonic() - started < 5.0
    assert not any(s.running for _, _, s in streams)
    assert reader.thread is not None and reader.thread.is_alive()


def test_a_dropped_stream_reconnects_and_says_so_again(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path
) -> None:
    ws, configs = _workspace(platform, tmp_path)
    calls = Calls()
    stream = _stream(reader, platform.url, ws.id, configs, calls)
    stream.start()
    assert wait_until(lambda: calls.connects == [1])
    platform.emit_event(ws.id, "WORKSPACE_PAUSED", {})
    assert wait_until(lambda: calls.states == ["WORKSPACE_PAUSED"])
    assert platform.drop_streams(ws.id) == 1
    assert wait_until(lambda: calls.connects == [1, 2], timeout=10.0)
    assert wait_until(lambda: platform.open_streams(ws.id) == 1)
    platform.emit_event(ws.id, "DELEGATION_FAILED", {"delegation_id": "d"})
    assert calls.hinted.wait(5.0)
    assert stream.status().connects == 2
    assert stream.stop(5.0)


def test_a_stalled_stream_is_replaced_after_its_idle_timeout(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path
) -> None:
    ws, configs = _workspace(platform, tmp_path)
    platform.stall_streams(True)  # no ping, no event: a dead connection, as far as anyone sees
    calls = Calls()
    stream = _stream(reader, platform.url, ws.id, configs, calls, idle_timeout=0.5)
    stream.start()
    assert wait_until(lambda: calls.connects == [1])
    opened = time.monotonic()
    assert wait_until(lambda: len(calls.connects) >= 2, timeout=10.0)
    assert time.monotonic() - opened >= 0.4
    platform.stall_streams(False)
    # The connection stalled before is replaced in turn; the next one carries the event.
    assert wait_until(lambda: platform.open_streams(ws.id) >= 1)
    connects = len(calls.connects)
    assert wait_until(lambda: len(calls.connects) > connects, timeout=10.0)
    platform.emit_event(ws.id, "DELEGATION_COMPLETE", {"delegation_id": "d"})
    assert calls.hinted.wait(5.0)
    assert stream.stop(5.0)


def test_a_server_without_the_stream_is_said_once_and_asked_again_rarely(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path, logs: LogCapture
) -> None:
    ws, configs = _workspace(platform, tmp_path)
    platform.fault("events", status=404, body={"error": "not found"})
    calls = Calls()
    stream = _stream(reader, platform.url, ws.id, configs, calls, draw=lambda: 1.0)
    stream.start()
    assert wait_until(lambda: stream.status().last_refusal == 404)
    assert wait_until(lambda: any("has no event stream" in m for m in logs.messages(logging.INFO)))
    assert len(platform.requests_for("events")) == 1
    assert calls.connects == []
    assert not stream.status().connected
    said = [r for r in logs.records if "has no event stream" in r.getMessage()]
    assert said[0].levelno == logging.INFO
    assert said[0].getMessage().startswith(f"[{ws.id[:8]}]")  # names its workspace
    assert stream.stop(5.0)


@pytest.mark.parametrize("content_type", ["text/html", None])
def test_a_200_that_is_not_an_event_stream_is_a_server_without_the_stream(
    platform: FakePlatform,
    reader: StreamReader,
    tmp_path: Path,
    content_type: str | None,
) -> None:
    ws, configs = _workspace(platform, tmp_path)
    headers = {"Content-Type": content_type} if content_type else {}
    platform.fault("events", status=200, headers=headers, body="<html>hello</html>")
    calls = Calls()
    stream = _stream(reader, platform.url, ws.id, configs, calls, draw=lambda: 1.0)
    stream.start()
    assert wait_until(lambda: stream.status().last_refusal == 200)
    assert calls.connects == []
    assert stream.stop(5.0)


def test_a_401_rereads_the_token_and_tries_once_more(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path
) -> None:
    ws, configs = _workspace(platform, tmp_path)
    factory = _factory(platform.url, ws.id, configs)
    factory().credentials.token()  # the old token is held...
    platform.revoke_tokens(ws.id)  # ... and replaced on disk without an announcement
    platform.issue_token(ws.id)
    platform.write_token(ws.id, configs)
    calls = Calls()
    stream = reader.stream(
        factory, ws.id, calls.on_hint, idle_timeout=30.0, draw=lambda: 0.0,
        on_connect=calls.on_connect,
    )  # fmt: skip
    stream.start()
    assert wait_until(lambda: calls.connects == [1])
    assert [r.status for r in platform.requests_for("events")] == [401, 200]
    assert stream.status().last_refusal is None
    assert stream.stop(5.0)


def test_a_rate_limit_hold_waits_without_holding_the_thread(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path
) -> None:
    held_ws, held_configs = _workspace(platform, tmp_path)
    free_ws, free_configs = _workspace(platform, tmp_path)
    budget = budget_for(platform.url, Credentials(held_configs).headers())
    budget.observe(429, {"Retry-After": "2"})
    held_calls, free_calls = Calls(), Calls()
    held = _stream(reader, platform.url, held_ws.id, held_configs, held_calls)
    free = _stream(reader, platform.url, free_ws.id, free_configs, free_calls)
    started = time.monotonic()
    held.start()
    free.start()
    assert wait_until(lambda: free_calls.connects == [1])
    assert held_calls.connects == []
    assert platform.requests_for("events", held_ws.id) == []
    assert wait_until(lambda: held_calls.connects == [1], timeout=10.0)
    assert time.monotonic() - started >= 1.5
    assert held.stop(5.0) and free.stop(5.0)


def test_stop_is_bounded_and_closes_every_socket(platform: FakePlatform, tmp_path: Path) -> None:
    reader = StreamReader()
    reader.start()
    all_calls: list[Calls] = []
    workspaces: list[Workspace] = []
    for _ in range(5):
        ws, configs = _workspace(platform, tmp_path)
        calls = Calls()
        _stream(reader, platform.url, ws.id, configs, calls).start()
        all_calls.append(calls)
        workspaces.append(ws)
    assert wait_until(lambda: all(c.connects == [1] for c in all_calls))
    started = time.monotonic()
    assert reader.stop(5.0)
    assert time.monotonic() - started < 2.0
    assert reader.thread is not None and not reader.thread.is_alive()

    # The server sees every connection closed: its next write to each fails.
    def closed() -> bool:
        for ws in workspaces:
            platform.emit_event(ws.id, "WORKSPACE_HEARTBEAT", {})
        return platform.open_streams() == 0

    assert wait_until(closed, timeout=10.0, step=0.1)
    assert all(c.hints == 0 for c in all_calls)


def test_a_stream_stopped_before_the_reader_starts_never_connects(
    platform: FakePlatform, tmp_path: Path
) -> None:
    reader = StreamReader()
    ws, configs = _workspace(platform, tmp_path)
    calls = Calls()
    stream = _stream(reader, platform.url, ws.id, configs, calls)
    stream.start()
    assert stream.running
    assert stream.stop(1.0)
    assert not stream.running
    reader.start()
    assert reader.stop(5.0)
    assert platform.requests_for("events") == []


def test_a_callback_that_raises_is_logged_and_the_stream_goes_on(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path, logs: LogCapture
) -> None:
    ws, configs = _workspace(platform, tmp_path)
    calls = Calls()
    raised = threading.Event()

    def on_hint() -> None:
        calls.on_hint()
        raised.set()
        raise RuntimeError("the hub's bug")

    stream = _stream(reader, platform.url, ws.id, configs, calls, on_hint=on_hint)
    stream.start()
    assert wait_until(lambda: calls.connects == [1])
    platform.emit_event(ws.id, "DELEGATION_COMPLETE", {"delegation_id": "1"})
    assert raised.wait(5.0)
    platform.emit_event(ws.id, "DELEGATION_COMPLETE", {"delegation_id": "2"})
    assert wait_until(lambda: calls.hints == 2)
    assert any("on_hint raised" in m for m in logs.messages(logging.WARNING))
    assert stream.status().connects == 1  # the same connection all along
    assert reader.thread is not None and reader.thread.is_alive()
    assert stream.stop(5.0)


def test_a_stream_through_a_proxy_falls_back_to_a_thread_of_its_own(
    platform: FakePlatform,
    reader: StreamReader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: it fails
    ws, configs = _workspace(platform, tmp_path)
    calls = Calls()
    stream = _stream(reader, platform.url, ws.id, configs, calls)
    stream.start()
    assert stream.thread is not None and stream.thread.is_alive()
    assert stream.running
    assert stream.stop(5.0)
    assert not stream.running


# --- a hostile server -------------------------------------------------------------------------

OK_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


#: What the hostile server sends for each workspace id (then it stalls, unless it closed).
HOSTILE: dict[str, Callable[[socket.socket, threading.Event], None]] = {}


def _hostile(name: str) -> Callable[..., Any]:
    def register(
        fn: Callable[[socket.socket, threading.Event], None],
    ) -> Callable[[socket.socket, threading.Event], None]:
        HOSTILE[name] = fn
        return fn

    return register


@_hostile("partial-chunk")
def _partial_chunk(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(OK_HEAD + _chunk(b": ping\n\n") + b'40\r\ndata: {"type":')
    stop.wait(60)


@_hostile("garbage-chunk")
def _garbage_chunk(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(OK_HEAD + _chunk(b": ping\n\n") + b"not a size at all\r\n\r\n")
    stop.wait(60)


@_hostile("huge-head")
def _huge_head(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Filler: " + b"x" * 1000 + b"\r\n"
    for _ in range(1000):  # a megabyte of head, if the client read it all
        if stop.is_set():
            return
        conn.sendall(line)


@_hostile("endless-event")
def _endless_event(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(OK_HEAD)
    block = _chunk(b'data: {"type":"DELEGATION_COMPLETE"' + b" " * 1000 + b"\n")
    for _ in range(4000):  # four megabytes of one event that never ends
        if stop.is_set():
            return
        conn.sendall(block)
    stop.wait(60)


@_hostile("cut-mid-event")
def _cut_mid_event(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(OK_HEAD + _chunk(b'data: {"type":"DELEGATION_COMP'))


@_hostile("not-a-stream")
def _not_a_stream(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\nhello")
    stop.wait(60)


@_hostile("trickled-head")
def _trickled_head(conn: socket.socket, stop: threading.Event) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: yes":
        if stop.wait(0.2):
            return
        conn.sendall(bytes([byte]))
    stop.wait(60)


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.served: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _HostileHandler)


class _HostileHandler(socketserver.BaseRequestHandler):
    server: HostileServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        path = head.split(b" ", 2)[1].decode()
        kind = path.split("/")[2]  # /workspaces/<kind>/events/stream
        with self.server.lock:
            self.server.served[kind] = self.server.served.get(kind, 0) + 1
        with contextlib.suppress(OSError):  # the client gave up on it: that is the point
            HOSTILE[kind](conn, self.server.stop_event)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.stop_event.set()
    server.shutdown()
    server.server_close()
    thread.join(5.0)


def test_hostile_streams_cost_only_themselves(
    platform: FakePlatform,
    reader: StreamReader,
    hostile: HostileServer,
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    hostile_url = f"http://127.0.0.1:{hostile.server_address[1]}"
    bad: dict[str, ReaderStream] = {}
    for kind in HOSTILE:
        configs = tmp_path / kind / "configs"
        save_token(configs, "token-1")
        bad[kind] = _stream(
            reader, hostile_url, kind, configs, Calls(), idle_timeout=1.0, timeout=2.0,
            draw=lambda: 0.5,
        )  # fmt: skip
        bad[kind].start()
    good: list[tuple[Workspace, Calls, ReaderStream]] = []
    for _ in range(5):
        ws, configs = _workspace(platform, tmp_path)
        calls = Calls()
        stream = _stream(reader, platform.url, ws.id, configs, calls)
        stream.start()
        good.append((ws, calls, stream))
    assert wait_until(lambda: all(c.connects == [1] for _, c, _ in good), timeout=10.0)
    assert wait_until(lambda: set(hostile.served) == set(HOSTILE), timeout=10.0)

    # While the hostile streams stall, flood, trickle and fail, each good stream hears
    # every event at once, round after round.
    deadline = time.monotonic() + 4.0
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        for ws, calls, _ in good:
            calls.hinted.clear()
            calls.hint_at = None
            emitted = time.monotonic()
            platform.emit_event(ws.id, "DELEGATION_COMPLETE", {"delegation_id": str(rounds)})
            assert calls.hinted.wait(5.0)
            assert calls.hint_at is not None and calls.hint_at - emitted < 2.0, rounds
    assert all(c.hints == rounds for _, c, _ in good)

    # Every hostile stream failed (and backs off) rather than hang: each was asked again
    # (but the one that is no stream at all, asked again minutes later as a server without
    # the route, and the endless one, whose flood lasts a while).
    once = {"not-a-stream", "endless-event"}
    assert wait_until(
        lambda: all(hostile.served.get(k, 0) >= 2 for k in HOSTILE if k not in once),
        timeout=20.0,
    )
    assert bad["not-a-stream"].status().last_refusal == 200
    endless = bad["endless-event"]
    parser = endless._parser
    if parser is not None:  # held: bounded as the parser bounds it
        assert len(parser._buf) <= parser.max_line and parser._size <= parser.max_event
    # The streams that opened and then stalled or broke were opened again, and again.
    assert bad["partial-chunk"].status().connects >= 2
    assert bad["garbage-chunk"].status().connects >= 2
    assert bad["huge-head"].status().connects == 0
    assert all(len(s._head) <= MAX_HEAD_BYTES + 65536 for s in bad.values())
    assert all(st.status().connects == 1 for _, _, st in good)
    assert reader.thread is not None and reader.thread.is_alive()
    messages = " ".join(logs.messages(logging.WARNING))
    assert "over 65536 bytes" in messages  # the huge head
    assert "hexadecimal" in messages  # the garbage chunk size

    started = time.monotonic()
    assert all(s.stop(5.0) for s in bad.values())
    assert all(s.stop(5.0) for _, _, s in good)
    assert time.monotonic() - started < 5.0


def test_the_events_keep_their_meaning(
    platform: FakePlatform, reader: StreamReader, tmp_path: Path
) -> None:
    """Only events that may mean a result ask for a poll; state events ask for a check; a
    rotation has the next request read the token again."""
    ws, configs = _workspace(platform, tmp_path)
    calls = Calls()
    factory = _factory(platform.url, ws.id, configs)
    stream = reader.stream(
        factory, ws.id, calls.on_hint, idle_timeout=30.0, draw=lambda: 0.0,
        on_state=calls.on_state, on_connect=calls.on_connect,
    )  # fmt: skip
    stream.start()
    assert wait_until(lambda: calls.connects == [1])
    platform.emit_event(ws.id, "WORKSPACE_HEARTBEAT", {"active_tasks": 0})
    platform.emit_event(ws.id, "DELEGATION_SENT", {"delegation_id": "d"})
    platform.emit_raw_event(ws.id, b"data: " + json.dumps({"type": "x"}).encode() + b"\n\n")
    platform.emit_event(ws.id, "WORKSPACE_REMOVED", {})
    row = {"activity_type": "a2a_receive", "source_id": "p"}
    platform.emit_event(ws.id, "ACTIVITY_LOGGED", row)
    assert wait_until(lambda: stream.status().events == 5)
    assert calls.hints == 1
    assert calls.states == ["WORKSPACE_REMOVED"]
    assert stream.status().state_checks_asked == 1
    assert stream.stop(5.0)


# --- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost`` (and 127.0.0.1), and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class TLSStreamServer(socketserver.ThreadingTCPServer):
    """Serves an event stream over TLS: a ping, one event, then silence until stopped."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cert: Path, key: Path) -> None:
        self.stop_event = threading.Event()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.server_names: list[str | None] = []
        self.context.sni_callback = self._sni
        super().__init__(("127.0.0.1", 0), _TLSHandler)

    def _sni(self, sock: Any, name: str | None, context: Any) -> None:
        self.server_names.append(name)


class _TLSHandler(socketserver.BaseRequestHandler):
    server: TLSStreamServer

    def handle(self) -> None:
        wrap = self.server.context.wrap_socket
        with contextlib.suppress(OSError), wrap(self.request, server_side=True) as conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            event = b'data: {"type":"DELEGATION_COMPLETE","data":{}}\n\n'
            conn.sendall(OK_HEAD + _chunk(b": ping\n\n") + _chunk(event))
            self.server.stop_event.wait(60)


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[TLSStreamServer]:
    server = TLSStreamServer(*certificate)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.stop_event.set()
    server.shutdown()
    server.server_close()
    thread.join(5.0)


@pytest.mark.parametrize("trusted", [True, False])
def test_a_stream_over_tls_is_verified_against_the_sessions_bundle(
    reader: StreamReader,
    tls_server: TLSStreamServer,
    certificate: tuple[Path, Path],
    tmp_path: Path,
    logs: LogCapture,
    trusted: bool,
) -> None:
    def session() -> Any:
        made = make_session()
        if trusted:
            made.verify = str(certificate[0])
        return made  # else requests' own bundle, which does not know this certificate

    save_token(tmp_path, "token-1")
    credentials = Credentials(tmp_path)
    url = f"https://localhost:{tls_server.server_address[1]}"
    calls = Calls()
    stream = reader.stream(
        lambda: PlatformClient(url, WS, credentials, session, timeout=5.0),
        WS, calls.on_hint, idle_timeout=30.0, draw=lambda: 1.0, on_connect=calls.on_connect,
    )  # fmt: skip
    stream.start()
    if trusted:
        assert calls.hinted.wait(10.0)
        assert calls.connects == [1]
        assert tls_server.server_names[0] == "localhost"  # SNI
    else:
        assert wait_until(
            lambda: any("TLS handshake failed" in m for m in logs.messages(logging.WARNING))
        )
        assert calls.connects == []
    assert stream.stop(5.0)
