"""FakePlatform's HTTP side: start and stop, the request log, request bodies, bad clients."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from heartbeat_sync.testing import FakePlatform

from ._fake import T, auth, beat, get


@pytest.fixture
def fp() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


# ----------------------------------------------------------------------------- lifecycle


def test_lifecycle_idempotent_and_context_manager() -> None:
    fp = FakePlatform()
    with pytest.raises(RuntimeError):
        _ = fp.url
    assert fp.start() is fp
    assert fp.start() is fp
    url = fp.url
    assert url.startswith("http://127.0.0.1:")
    assert fp.running
    fp.stop()
    fp.stop()
    assert not fp.running
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/workspaces/x", timeout=T)
    with FakePlatform() as other:
        assert requests.get(f"{other.url}/nope", timeout=T).status_code == 404
    assert not other.running


def test_restart_keeps_port_and_state() -> None:
    fp = FakePlatform().start()
    try:
        ws = fp.add_workspace()
        url = fp.url
        assert beat(fp, ws.id, ws.token).status_code == 200
        fp.stop()
        fp.start()
        assert fp.url == url
        assert beat(fp, ws.id, ws.token).status_code == 200
        assert fp.workspace(ws.id).heartbeat_count == 2
    finally:
        fp.stop()


def test_stop_closes_keepalive_connections(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    with requests.Session() as s:
        url = f"{fp.url}/workspaces/{ws.id}"
        assert s.get(url, timeout=T).status_code == 200
        fp.stop()
        with pytest.raises(requests.ConnectionError):
            s.get(url, timeout=T)


def test_invalid_generation() -> None:
    with pytest.raises(ValueError):
        FakePlatform(generation="JUN")


def test_unknown_route_and_wrong_method(fp: FakePlatform) -> None:
    r = requests.get(f"{fp.url}/health", timeout=T)
    assert r.status_code == 404
    assert r.json() == {"error": "not found"}
    assert r.headers["Content-Type"] == "application/json"
    r = requests.get(f"{fp.url}/registry/heartbeat", timeout=T)
    assert r.status_code == 404
    assert fp.requests[-1].route == "unknown"


# ----------------------------------------------------------------------------- request log


def test_request_log_and_waiting(fp: FakePlatform) -> None:
    ws = fp.add_workspace()

    def later() -> None:
        time.sleep(0.1)
        beat(fp, ws.id, ws.token)
        beat(fp, ws.id, ws.token)

    beater = threading.Thread(target=later)
    beater.start()
    assert fp.wait_for_requests("heartbeat", 2, timeout=3.0, workspace_id=ws.id)
    assert fp.wait_for(lambda: len(fp.heartbeats(ws.id)) == 2, timeout=3.0)
    beater.join(T)
    assert not fp.wait_for_requests("heartbeat", 3, timeout=0.1)  # False once the time is up
    get(fp, f"/workspaces/{ws.id}/activity", ws.token, type="a2a_receive", limit="5")
    entry = fp.requests[-1]
    assert entry.route == "activity" and entry.workspace_id == ws.id
    assert entry.query == {"type": ["a2a_receive"], "limit": ["5"]}
    assert entry.status == 200 and entry.body == b""
    assert entry.time <= time.monotonic()
    fp.clear_requests()
    assert fp.requests == [] and fp.heartbeats() == []
    assert ws.heartbeat_count == 2


def test_request_log_is_bounded() -> None:
    with FakePlatform(max_request_log=3) as fp:
        for _ in range(5):
            requests.get(f"{fp.url}/nope", timeout=T)
        assert len(fp.requests) == 3


def test_oversized_and_chunked_bodies(fp: FakePlatform) -> None:
    """A body is cut at 1 MiB; a chunked one is refused (read by Content-Length only)."""
    ws = fp.add_workspace(with_token=False)
    big = b'{"workspace_id":"%s","x":"' % ws.id.encode() + b"a" * (20 << 20) + b'"}'
    r = requests.post(f"{fp.url}/registry/heartbeat", data=big, timeout=T)
    assert r.status_code == 400  # cut at 1 MiB, so no longer valid JSON
    assert len(fp.requests[-1].body) == 1 << 20

    def chunks() -> Iterator[bytes]:
        yield b'{"workspace_id":'
        yield b'"%s"}' % ws.id.encode()

    r = requests.post(f"{fp.url}/registry/heartbeat", data=chunks(), timeout=T)
    assert (r.status_code, r.json()) == (400, {"error": "chunked request bodies are not supported"})
    assert r.headers["Connection"] == "close"
    assert ws.heartbeat_count == 0
    assert beat(fp, ws.id).status_code == 200


def test_malformed_request_does_not_kill_server(fp: FakePlatform) -> None:
    host, port = fp.url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=T) as sock:
        sock.sendall(b"BREW /pot HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 501 ")
    assert data.endswith(b'{"error":"Unsupported method (\'BREW\')"}')
    with socket.create_connection((host, int(port)), timeout=T) as sock:
        sock.sendall(b"POST /registry/heartbeat HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
        assert b" 400 " in sock.recv(4096)
    assert requests.get(f"{fp.url}/nope", timeout=T).status_code == 404


def test_concurrent_clients(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    failures: list[int] = []

    def worker() -> None:
        with requests.Session() as s:
            for _ in range(10):
                r = s.post(
                    f"{fp.url}/registry/heartbeat",
                    json={"workspace_id": ws.id},
                    headers=auth(ws.token),
                    timeout=T,
                )
                if r.status_code != 200:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert failures == []
    assert ws.heartbeat_count == 100
    assert len(fp.heartbeats(ws.id)) == 100


def test_held_platform_keeps_requests_waiting_while_events_flow(fp: FakePlatform) -> None:
    """``held()`` stops requests, not the event stream: a client hears of a delegation at once
    and reads it only when the block ends."""
    ws = fp.add_workspace()
    headers = auth(ws.token)
    stream = requests.get(
        f"{fp.url}/workspaces/{ws.id}/events/stream", headers=headers, stream=True, timeout=T
    )
    answered = threading.Event()
    seen: list[int] = []

    def poll() -> None:
        reply = get(fp, f"/workspaces/{ws.id}/delegations", ws.token)
        seen.append(len(reply.json()))
        answered.set()

    reader = threading.Thread(target=poll)
    with stream:
        lines = (line for line in stream.iter_lines() if line)
        assert next(lines) == b": ping"
        with fp.held():
            did = fp.add_delegation(ws.id, status="completed")
            reader.start()
            frames = [next(lines) for _ in range(2)]
            assert b"DELEGATION_SENT" in frames[0]
            assert did.encode() in frames[1] and b"DELEGATION_COMPLETE" in frames[1]
            assert not answered.wait(0.2)  # what held() is for: the request waits
        assert answered.wait(T)
        reader.join(T)
    assert seen == [1]
