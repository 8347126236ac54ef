"""FakePlatform's injected faults: statuses, headers, garbage and huge bodies, delays, drops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests

from heartbeat_sync.testing import FakePlatform, RecordedRequest

from ._fake import T, auth, beat, get, notify


@pytest.fixture
def fp() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


# ----------------------------------------------------------------------------- faults


def test_fault_status_headers_and_times(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    fp.fault("heartbeat", status=503, headers={"Retry-After": "7"}, times=2)
    for _ in range(2):
        r = beat(fp, ws.id, ws.token)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "7"
        assert r.json() == {"error": "injected fault"}
    assert beat(fp, ws.id, ws.token).status_code == 200
    assert ws.heartbeat_count == 1
    assert len(fp.heartbeats(ws.id)) == 1
    assert [r.status for r in fp.requests_for("heartbeat")] == [503, 503, 200]
    assert [r.faulted for r in fp.requests_for("heartbeat")] == [True, True, False]


def test_fault_until_cleared_scoped_and_ordered(fp: FakePlatform) -> None:
    a = fp.add_workspace()
    b = fp.add_workspace()
    fp.fault("heartbeat", status=500, workspace_id=a.id)
    fp.fault("heartbeat", status=502)
    fp.fault("notify", status=418)
    for _ in range(3):
        assert beat(fp, a.id, a.token).status_code == 500
    assert beat(fp, b.id, b.token).status_code == 502
    fp.clear_faults("heartbeat")
    assert beat(fp, a.id, a.token).status_code == 200
    assert notify(fp, a, {"message": "m"}).status_code == 418
    fp.clear_faults()
    assert notify(fp, a, {"message": "m"}).status_code == 200
    with pytest.raises(ValueError):
        fp.fault("registry")


def test_fault_garbage_body_and_headers_only(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    fp.fault("heartbeat", body=b"<html>oops", headers={"Content-Type": "text/html"}, times=1)
    r = beat(fp, ws.id, ws.token)
    assert (r.status_code, r.content) == (200, b"<html>oops")
    assert r.headers["Content-Type"] == "text/html"
    with pytest.raises(ValueError):
        r.json()
    fp.fault("heartbeat", body=[1, 2], status=201, times=1)
    r = beat(fp, ws.id, ws.token)
    assert (r.status_code, r.json()) == (201, [1, 2])
    fp.fault("heartbeat", headers={"X-Extra": "1"}, times=1)
    r = beat(fp, ws.id, ws.token)
    assert r.status_code == 200 and r.headers["X-Extra"] == "1"
    assert "platform_inbound_secret" in r.json()


def test_fault_delay_then_normal(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    fp.fault("delegations", delay=0.3, times=1)
    t0 = time.monotonic()
    r = get(fp, f"/workspaces/{ws.id}/delegations", ws.token)
    assert time.monotonic() - t0 >= 0.3
    assert (r.status_code, r.json()) == (200, [])
    with pytest.raises(requests.ReadTimeout):
        fp.fault("delegations", delay=1.0, times=1)
        requests.get(
            f"{fp.url}/workspaces/{ws.id}/delegations", headers=auth(ws.token), timeout=0.2
        )


def test_fault_drop_and_log_before_fault(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    fp.fault("heartbeat", drop=True, times=1)
    with pytest.raises(requests.ConnectionError):
        beat(fp, ws.id, ws.token)
    logged = fp.requests_for("heartbeat", ws.id)
    assert len(logged) == 1
    entry = logged[0]
    assert isinstance(entry, RecordedRequest)
    assert entry.status is None and entry.faulted
    assert entry.method == "POST" and entry.path == "/registry/heartbeat"
    assert entry.headers["authorization"] == f"Bearer {ws.token}"
    assert entry.json()["workspace_id"] == ws.id
    assert ws.heartbeat_count == 0 and fp.heartbeats() == []
    assert beat(fp, ws.id, ws.token).status_code == 200


def test_fault_body_size_streamed(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    size = 5 * 1024 * 1024
    fp.fault("activity", body_size=size, times=1)
    r = get(fp, f"/workspaces/{ws.id}/activity", ws.token)
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(size)
    assert len(r.content) == size
    assert r.content.startswith(b"[0,0,")
    # A streamed body can be abandoned by the client without harming the server.
    fp.fault("activity", body_size=size, status=500, times=1)
    with requests.get(
        f"{fp.url}/workspaces/{ws.id}/activity", headers=auth(ws.token), stream=True, timeout=T
    ) as r:
        assert r.status_code == 500
        assert len(r.raw.read(1000)) == 1000
    assert get(fp, f"/workspaces/{ws.id}/activity", ws.token).json() == []


def test_stop_is_bounded_during_long_delay() -> None:
    fp = FakePlatform().start()
    ws = fp.add_workspace()
    fp.fault("heartbeat", delay=30.0)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            beat(fp, ws.id, ws.token)
        except BaseException as exc:  # collected for the assert below
            errors.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        assert fp.wait_for_requests("heartbeat", 1, timeout=3.0)
        t0 = time.monotonic()
        fp.stop()
        assert time.monotonic() - t0 < 2.0
        thread.join(timeout=3.0)
        assert not thread.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)
        assert fp.requests_for("heartbeat")[0].status is None
    finally:
        fp.stop()
