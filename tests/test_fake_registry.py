"""FakePlatform's registry routes: heartbeat validation and auth, register."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from heartbeat_sync.testing import FakePlatform

from ._fake import T, auth, beat


@pytest.fixture
def fp() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


@pytest.fixture
def apr() -> Iterator[FakePlatform]:
    with FakePlatform(generation="APR") as platform:
        yield platform


# ----------------------------------------------------------------------------- heartbeat


def test_heartbeat_may_happy_path(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    meta = {"capabilities": {"heartbeat": False, "status_mgmt": False}}
    r = beat(fp, ws.id, ws.token, runtime_metadata=meta, current_task="x")
    assert r.status_code == 200
    assert r.headers["Content-Length"] == str(len(r.content))
    body = r.json()
    assert body["status"] == "ok"
    secret = body["platform_inbound_secret"]
    assert isinstance(secret, str) and len(secret) == 43
    assert ws.inbound_secret == secret
    assert ws.heartbeat_count == 1
    assert ws.runtime_metadata == meta
    assert ws.current_task == "x"
    assert ws.last_heartbeat is not None and ws.last_heartbeat["workspace_id"] == ws.id
    # The secret is stable; a beat without runtime_metadata clears it.
    r = beat(fp, ws.id, ws.token)
    assert r.json()["platform_inbound_secret"] == secret
    assert ws.runtime_metadata is None
    assert ws.heartbeat_count == 2
    assert [b["workspace_id"] for b in fp.heartbeats(ws.id)] == [ws.id, ws.id]
    new_secret = fp.rotate_inbound_secret(ws.id)
    assert beat(fp, ws.id, ws.token).json()["platform_inbound_secret"] == new_secret


def test_heartbeat_apr(apr: FakePlatform) -> None:
    ws = apr.add_workspace()
    r = beat(apr, ws.id, ws.token)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    r = beat(apr, "00000000-0000-0000-0000-000000000000")
    assert r.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1,2]",
        b"{}",
        b'{"workspace_id": ""}',
        b'{"workspace_id": 5}',
        b'{"workspace_id": "W", "uptime_seconds": 1.5}',
        b'{"workspace_id": "W", "uptime_seconds": 3.0}',
        b'{"workspace_id": "W", "active_tasks": "1"}',
        b'{"workspace_id": "W", "active_tasks": true}',
        b'{"workspace_id": "W", "error_rate": "high"}',
        b'{"workspace_id": "W", "sample_error": 1}',
        b'{"workspace_id": "W", "runtime_state": false}',
        b'{"workspace_id": "W", "runtime_metadata": [1]}',
        b'{"workspace_id": "W", "error_rate": NaN}',
    ],
)
def test_heartbeat_invalid_body(fp: FakePlatform, payload: bytes) -> None:
    ws = fp.add_workspace("W", with_token=False)
    r = requests.post(f"{fp.url}/registry/heartbeat", data=payload, timeout=T)
    assert r.status_code == 400
    assert r.json() == {"error": "invalid request body"}
    assert ws.heartbeat_count == 0


def test_heartbeat_accepts_nulls_and_ints(fp: FakePlatform) -> None:
    ws = fp.add_workspace(with_token=False)
    body = (
        f'{{"workspace_id":"{ws.id}","error_rate":1,"uptime_seconds":7,"sample_error":null,'
        '"runtime_metadata":null,"unknown_field":[1]}'
    )
    r = requests.post(f"{fp.url}/registry/heartbeat", data=body, timeout=T)
    assert r.status_code == 200
    assert ws.uptime_seconds == 7


def test_heartbeat_auth_rules(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    other = fp.add_workspace()
    token = ws.token
    assert token is not None and len(token) == 43
    r = beat(fp, ws.id)
    assert (r.status_code, r.json()) == (401, {"error": "missing workspace auth token"})
    for header in (f"bearer {token}", f"Token {token}", "Bearer ", "Bearer"):
        r = requests.post(
            f"{fp.url}/registry/heartbeat",
            json={"workspace_id": ws.id},
            headers={"Authorization": header},
            timeout=T,
        )
        assert r.json() == {"error": "missing workspace auth token"}, header
    r = beat(fp, ws.id, "x" * 43)
    assert (r.status_code, r.json()) == (401, {"error": "invalid workspace auth token"})
    r = beat(fp, ws.id, other.token)
    assert (r.status_code, r.json()) == (401, {"error": "invalid workspace auth token"})
    # Surrounding whitespace after "Bearer " is trimmed.
    r = requests.post(
        f"{fp.url}/registry/heartbeat",
        json={"workspace_id": ws.id},
        headers={"Authorization": f"Bearer  {token} "},
        timeout=T,
    )
    assert r.status_code == 200
    assert ws.heartbeat_count == 1
    assert len(fp.heartbeats(ws.id)) == 1


def test_heartbeat_grandfathered_and_unknown(fp: FakePlatform) -> None:
    ws = fp.add_workspace(with_token=False)
    assert beat(fp, ws.id).status_code == 200
    assert beat(fp, ws.id, "whatever").status_code == 200
    r = beat(fp, "11111111-1111-1111-1111-111111111111")
    assert r.status_code == 200
    assert len(r.json()["platform_inbound_secret"]) == 43
    with pytest.raises(KeyError):
        fp.workspace("11111111-1111-1111-1111-111111111111")


# ----------------------------------------------------------------------------- register


def test_register(fp: FakePlatform) -> None:
    card = {"name": "agent"}
    body = {"id": "new-ws", "url": "http://agent:8000", "agent_card": card}
    r = requests.post(f"{fp.url}/registry/register", json=body, timeout=T)
    assert r.status_code == 200
    out = r.json()
    assert out["status"] == "registered"
    assert out["delivery_mode"] == "push"
    ws = fp.workspace("new-ws")
    assert out["auth_token"] == ws.token
    assert out["platform_inbound_secret"] == ws.inbound_secret
    assert ws.url == "http://agent:8000" and ws.agent_card == card
    # Re-register: now auth is enforced and no new token is issued.
    r = requests.post(f"{fp.url}/registry/register", json=body, timeout=T)
    assert (r.status_code, r.json()) == (401, {"error": "missing workspace auth token"})
    r = requests.post(f"{fp.url}/registry/register", json=body, headers=auth(ws.token), timeout=T)
    assert r.status_code == 200
    assert "auth_token" not in r.json()
    r = requests.post(f"{fp.url}/registry/register", json={"id": "x"}, timeout=T)
    assert (r.status_code, r.json()) == (400, {"error": "invalid request body"})
    r = requests.post(
        f"{fp.url}/registry/register",
        json={"id": "x", "agent_card": {}, "url": "u", "delivery_mode": "pull"},
        timeout=T,
    )
    assert r.json() == {"error": "delivery_mode must be 'push' or 'poll'"}
    assert fp.requests_for("register", "new-ws")[0].workspace_id == "new-ws"


def test_register_apr(apr: FakePlatform) -> None:
    body = {"id": "w", "url": "http://agent", "agent_card": {}}
    r = requests.post(f"{apr.url}/registry/register", json=body, timeout=T)
    out = r.json()
    assert set(out) == {"status", "auth_token"}
