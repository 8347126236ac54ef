"""Tests of heartbeat_sync.testing.FakePlatform, over real loopback sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from heartbeat_sync.testing import FakePlatform, RecordedRequest, Response, Workspace

T = 5.0  # client timeout for every request


@pytest.fixture
def fp() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


@pytest.fixture
def apr() -> Iterator[FakePlatform]:
    with FakePlatform(generation="APR") as platform:
        yield platform


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def beat(
    fp: FakePlatform, ws_id: str, token: str | None = None, **fields: Any
) -> requests.Response:
    body = {"workspace_id": ws_id, "error_rate": 0.0, "active_tasks": 0, "uptime_seconds": 1}
    body.update(fields)
    return requests.post(f"{fp.url}/registry/heartbeat", json=body, headers=auth(token), timeout=T)


def get(fp: FakePlatform, path: str, token: str | None = None, **params: Any) -> requests.Response:
    return requests.get(f"{fp.url}{path}", headers=auth(token), params=params, timeout=T)


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


def test_token_rotation_and_revocation(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    old = ws.token
    extra = fp.issue_token(ws.id)
    assert ws.tokens == [old, extra] and ws.token == extra
    assert beat(fp, ws.id, old).status_code == 200
    new = fp.rotate_token(ws.id)
    assert ws.tokens == [new]
    r = beat(fp, ws.id, old)
    assert (r.status_code, r.json()["error"]) == (401, "invalid workspace auth token")
    r = get(fp, f"/workspaces/{ws.id}/delegations", extra)
    assert (r.status_code, r.json()["error"]) == (401, "invalid workspace auth token")
    assert beat(fp, ws.id, new).status_code == 200
    fp.revoke_tokens(ws.id)
    assert ws.token is None
    assert beat(fp, ws.id).status_code == 200  # grandfathered again
    r = get(fp, f"/workspaces/{ws.id}/delegations", new)
    assert r.status_code == 401


def test_heartbeat_status_transitions(fp: FakePlatform) -> None:
    ws = fp.add_workspace(status="offline")
    beat(fp, ws.id, ws.token)
    assert ws.status == "online"
    beat(fp, ws.id, ws.token, error_rate=0.6)
    assert ws.status == "degraded"
    beat(fp, ws.id, ws.token, error_rate=0.05)
    assert ws.status == "online"
    beat(fp, ws.id, ws.token, runtime_state="wedged")
    assert ws.status == "degraded"
    count = ws.heartbeat_count
    ws.status = "removed"
    # A removed workspace's tokens are invalid, but they still count as live tokens.
    assert beat(fp, ws.id, ws.token).json() == {"error": "invalid workspace auth token"}
    assert beat(fp, ws.id).json() == {"error": "missing workspace auth token"}
    fp.revoke_tokens(ws.id)
    assert beat(fp, ws.id).status_code == 200  # answered 200, but nothing is updated
    assert ws.heartbeat_count == count and ws.status == "removed"


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


# ----------------------------------------------------------------------------- workspace auth


@pytest.mark.parametrize("suffix", ["delegations", "activity"])
def test_workspace_auth(fp: FakePlatform, suffix: str) -> None:
    ws = fp.add_workspace()
    other = fp.add_workspace()
    path = f"/workspaces/{ws.id}/{suffix}"
    r = get(fp, path)
    assert (r.status_code, r.json()) == (401, {"error": "missing workspace auth token"})
    r = get(fp, path, other.token)
    assert (r.status_code, r.json()) == (401, {"error": "invalid workspace auth token"})
    r = requests.get(f"{fp.url}{path}", headers={"Authorization": f"Basic {ws.token}"}, timeout=T)
    assert r.json() == {"error": "missing workspace auth token"}
    assert get(fp, path, ws.token).status_code == 200
    # Unknown workspace: no token can belong to it.
    assert get(fp, "/workspaces/nope/delegations", ws.token).status_code == 401
    # Even a workspace without tokens needs a bearer here.
    bare = fp.add_workspace(with_token=False)
    assert get(fp, f"/workspaces/{bare.id}/{suffix}").status_code == 401


# ----------------------------------------------------------------------------- delegations


def test_delegations_may(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    d1 = fp.add_delegation(ws.id, target_id="t", summary="first")
    d2 = fp.add_delegation(ws.id, delegation_id="d-2", status="completed", response_preview="res")
    fp.add_raw_delegation_row(ws.id, "garbage")
    assert d2 == "d-2"
    fp.set_delegation(ws.id, d1, status="failed", error="boom")
    rows = get(fp, f"/workspaces/{ws.id}/delegations", ws.token).json()
    assert rows[0] == "garbage"
    assert rows[1]["delegation_id"] == "d-2"
    assert rows[1]["response_preview"] == "res"
    assert "error" not in rows[1]
    first = rows[2]
    assert set(first) == {
        "delegation_id",
        "source_id",
        "target_id",
        "summary",
        "status",
        "error",
        "created_at",
        "updated_at",
        "_ledger",
    }
    assert first["source_id"] == ws.id and first["status"] == "failed"
    assert first["error"] == "boom" and first["_ledger"] is True
    assert first["updated_at"] > first["created_at"]
    with pytest.raises(KeyError):
        fp.set_delegation(ws.id, "missing", status="x")


def test_delegations_apr_shape_and_cap(apr: FakePlatform) -> None:
    ws = apr.add_workspace()
    ids = [apr.add_delegation(ws.id, summary=str(i)) for i in range(60)]
    rows = apr_rows = get(apr, f"/workspaces/{ws.id}/delegations", ws.token).json()
    assert len(rows) == 50
    assert [r["delegation_id"] for r in rows] == ids[::-1][:50]
    row = apr_rows[0]
    assert set(row) == {
        "id",
        "type",
        "delegation_id",
        "source_id",
        "target_id",
        "summary",
        "status",
        "created_at",
    }
    assert row["type"] == "delegation" and row["status"] == "pending"
    assert get(apr, f"/workspaces/{apr.add_workspace().id}/delegations").status_code == 401


def test_delegations_empty_is_array(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    assert get(fp, f"/workspaces/{ws.id}/delegations", ws.token).json() == []


# ----------------------------------------------------------------------------- activity


def test_activity_rows_filters_and_order(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    peer = fp.add_workspace()
    a = fp.add_activity(ws.id, source_id=peer.id, text="hello")
    b = fp.add_activity(ws.id, source_id=None, text="from canvas")
    c = fp.add_activity(ws.id, source_id=peer.id, activity_type="delegate", method="delegate")
    fp.add_raw_activity_row(ws.id, {"weird": True})
    path = f"/workspaces/{ws.id}/activity"
    rows = get(fp, path, ws.token).json()
    assert rows[0] == {"weird": True}
    assert [r["id"] for r in rows[1:]] == [c, b, a]
    row = rows[3]
    assert row["activity_type"] == "a2a_receive" and row["workspace_id"] == ws.id
    assert row["target_id"] is None and row["error_detail"] is None
    assert row["duration_ms"] is None and row["status"] == "ok"
    assert row["request_body"]["params"]["message"]["parts"] == [{"kind": "text", "text": "hello"}]
    assert row["request_body"]["jsonrpc"] == "2.0"
    assert "request_body" not in rows[1]  # no text, no body
    assert rows[3]["created_at"] < rows[2]["created_at"] < rows[1]["created_at"]
    assert rows[1]["created_at"].endswith("Z") and "." in rows[1]["created_at"]

    typed = get(fp, path, ws.token, type="a2a_receive").json()
    assert [r.get("id") for r in typed] == [None, b, a]
    assert get(fp, path, ws.token, type="nope").json() == [{"weird": True}]
    agent = get(fp, path, ws.token, type="a2a_receive", source="agent").json()
    assert [r.get("id") for r in agent] == [None, a]
    canvas = get(fp, path, ws.token, source="canvas").json()
    assert [r.get("id") for r in canvas] == [None, b]
    r = get(fp, path, ws.token, source="peer")
    assert (r.status_code, r.json()) == (400, {"error": "source must be 'canvas' or 'agent'"})
    assert fp.activity_rows(ws.id)[0]["id"] == a  # type: ignore[index]


def test_activity_limit(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    ids = [fp.add_activity(ws.id, source_id="p") for _ in range(520)]
    path = f"/workspaces/{ws.id}/activity"
    assert len(get(fp, path, ws.token).json()) == 100
    assert len(get(fp, path, ws.token, limit="x").json()) == 100
    assert len(get(fp, path, ws.token, limit="-5").json()) == 100
    assert len(get(fp, path, ws.token, limit="0").json()) == 100
    assert len(get(fp, path, ws.token, limit="1000").json()) == 500
    rows = get(fp, path, ws.token, limit="3").json()
    assert [r["id"] for r in rows] == ids[::-1][:3]


def test_activity_since_id_may(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    other = fp.add_workspace()
    ids = [fp.add_activity(ws.id, source_id="p", text=str(i)) for i in range(5)]
    foreign = fp.add_activity(other.id, source_id="p")
    path = f"/workspaces/{ws.id}/activity"
    rows = get(fp, path, ws.token, since_id=ids[1]).json()
    assert [r["id"] for r in rows] == ids[2:]  # ASC, strictly after
    rows = get(fp, path, ws.token, since_id=ids[1], limit="2").json()
    assert [r["id"] for r in rows] == ids[2:4]
    assert get(fp, path, ws.token, since_id=ids[-1]).json() == []
    for cursor in ("00000000-0000-0000-0000-000000000000", foreign):
        r = get(fp, path, ws.token, since_id=cursor)
        assert (r.status_code, r.json()) == (410, {"error": "cursor not found — reset cursor"})


def test_activity_since_id_ignored_by_apr(apr: FakePlatform) -> None:
    ws = apr.add_workspace()
    ids = [apr.add_activity(ws.id, source_id="p") for _ in range(3)]
    path = f"/workspaces/{ws.id}/activity"
    rows = get(apr, path, ws.token, since_id=ids[0]).json()
    assert [r["id"] for r in rows] == ids[::-1]
    r = get(apr, path, ws.token, since_id="00000000-0000-0000-0000-000000000000")
    assert r.status_code == 200


# ----------------------------------------------------------------------------- GET workspace


def test_get_workspace(fp: FakePlatform) -> None:
    parent = fp.add_workspace(name="Boss")
    child = fp.add_workspace(name="Kid", parent_id=parent.id)
    r = get(fp, f"/workspaces/{child.id}")  # no auth needed
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == child.id and body["name"] == "Kid" and body["parent_id"] == parent.id
    assert body["role"] is None and body["tier"] == 1 and body["status"] == "online"
    assert body["url"] == "" and body["max_concurrent_tasks"] == 1
    assert body["agent_card"] is None and body["last_outbound_at"] is None
    assert body["talk_to_user_enabled"] is True and body["broadcast_enabled"] is False
    assert get(fp, f"/workspaces/{parent.id}", "bogus").json()["parent_id"] is None
    r = get(fp, "/workspaces/unknown")
    assert (r.status_code, r.json()) == (404, {"error": "workspace not found"})
    child.status = "removed"
    r = get(fp, f"/workspaces/{child.id}")
    assert r.status_code == 410 and r.json()["error"] == "workspace removed"


def test_get_workspace_apr(apr: FakePlatform) -> None:
    ws = apr.add_workspace(status="removed")
    body = get(apr, f"/workspaces/{ws.id}").json()
    assert body["status"] == "removed"
    assert "talk_to_user_enabled" not in body


# ----------------------------------------------------------------------------- a2a


def a2a(
    fp: FakePlatform, target: str, body: Any, caller: str | None = None, token: str | None = None
) -> requests.Response:
    headers = auth(token)
    if caller is not None:
        headers["X-Workspace-ID"] = caller
    return requests.post(f"{fp.url}/workspaces/{target}/a2a", json=body, headers=headers, timeout=T)


SELF_MSG = {
    "method": "message/send",
    "params": {"message": {"role": "user", "parts": [{"type": "text", "text": "wake"}]}},
}


def test_a2a_self_message_logs_self_sourced_row(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    r = a2a(fp, ws.id, SELF_MSG, caller=ws.id, token=ws.token)
    assert r.status_code == 200
    out = r.json()
    assert out["jsonrpc"] == "2.0" and out["result"]["parts"][0]["text"] == "ok"
    assert fp.a2a_messages(ws.id) == [SELF_MSG]
    rows = get(fp, f"/workspaces/{ws.id}/activity", ws.token, type="a2a_receive").json()
    assert len(rows) == 1
    row = rows[0]
    assert row["source_id"] == ws.id and row["method"] == "message/send"
    req = row["request_body"]
    assert req["jsonrpc"] == "2.0" and req["id"] == out["id"]
    assert req["params"]["message"]["messageId"]
    assert req["params"]["message"]["parts"] == [{"type": "text", "text": "wake"}]


def test_a2a_scripted_responses_then_default(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    fp.set_a2a_responses(
        ws.id,
        [
            Response(status=503, body={"busy": True}, headers={"Retry-After": "30"}),
            Response(status=202, body=b"raw"),
            Response(status=500),
        ],
    )
    r1 = a2a(fp, ws.id, SELF_MSG)
    assert r1.status_code == 503 and r1.json() == {"busy": True}
    assert r1.headers["Retry-After"] == "30"
    r2 = a2a(fp, ws.id, SELF_MSG)
    assert (r2.status_code, r2.content) == (202, b"raw")
    r3 = a2a(fp, ws.id, SELF_MSG)
    assert r3.status_code == 500 and "error" in r3.json()
    r4 = a2a(fp, ws.id, SELF_MSG)
    assert r4.status_code == 200 and r4.json()["result"]["kind"] == "message"
    assert len(fp.a2a_messages(ws.id)) == 2  # 202 and default 200
    rows = fp.activity_rows(ws.id)
    assert [r["status"] for r in rows] == ["error", "ok", "error", "ok"]  # type: ignore[index]
    assert all(r["source_id"] is None for r in rows)  # type: ignore[index]


def test_a2a_errors_and_caller_auth(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    peer = fp.add_workspace()
    tokenless = fp.add_workspace(with_token=False)
    r = requests.post(f"{fp.url}/workspaces/{ws.id}/a2a", data=b"{nope", timeout=T)
    assert (r.status_code, r.json()) == (400, {"error": "invalid JSON"})
    r = a2a(fp, ws.id, SELF_MSG, caller=peer.id)
    assert (r.status_code, r.json()) == (401, {"error": "missing caller auth token"})
    r = a2a(fp, ws.id, SELF_MSG, caller=peer.id, token=ws.token)
    assert (r.status_code, r.json()) == (401, {"error": "invalid caller auth token"})
    assert a2a(fp, ws.id, SELF_MSG, caller=peer.id, token=peer.token).status_code == 200
    assert a2a(fp, ws.id, SELF_MSG, caller=tokenless.id).status_code == 200
    assert a2a(fp, ws.id, SELF_MSG, caller=ws.id).status_code == 200  # self: no check
    assert a2a(fp, ws.id, SELF_MSG, caller="system:cron").status_code == 403
    assert a2a(fp, "nope", SELF_MSG).status_code == 404
    sources = [r["source_id"] for r in fp.activity_rows(ws.id)]  # type: ignore[index]
    assert sources == [peer.id, tokenless.id, ws.id]
    # MAY: without X-Workspace-ID the bearer's workspace is the caller.
    assert a2a(fp, ws.id, SELF_MSG, token=ws.token).status_code == 200
    assert fp.activity_rows(ws.id)[-1]["source_id"] == ws.id  # type: ignore[index]


# ----------------------------------------------------------------------------- notify


def notify(fp: FakePlatform, ws: Workspace, body: Any, token: str | None = None) -> Any:
    return requests.post(
        f"{fp.url}/workspaces/{ws.id}/notify",
        json=body,
        headers=auth(token if token is not None else ws.token),
        timeout=T,
    )


def test_notify(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    r = notify(fp, ws, {"message": "Delegation completed: x", "type": "delegation_result"})
    assert (r.status_code, r.json()) == (200, {"status": "sent"})
    assert fp.notifications(ws.id) == ["Delegation completed: x"]
    row = fp.activity_rows(ws.id)[-1]
    assert row["method"] == "notify" and row["source_id"] is None  # type: ignore[index]
    for bad in ({}, {"message": ""}, {"message": 3}, [1]):
        r = notify(fp, ws, bad)
        assert (r.status_code, r.json()) == (400, {"error": "message is required"})
    r = notify(fp, ws, {"message": "m", "attachments": [{"uri": "u"}]})
    assert r.json() == {"error": "attachment[0]: uri and name are required"}
    assert notify(fp, ws, {"message": "m"}, token="bad").status_code == 401
    r = requests.post(f"{fp.url}/workspaces/{ws.id}/notify", json={"message": "m"}, timeout=T)
    assert r.json() == {"error": "missing workspace auth token"}
    assert fp.notifications(ws.id) == ["Delegation completed: x"]


def test_notify_talk_to_user_disabled(fp: FakePlatform, apr: FakePlatform) -> None:
    ws = fp.add_workspace(talk_to_user_enabled=False)
    r = notify(fp, ws, {"message": "hi"})
    assert r.status_code == 403
    assert r.json()["error"] == "talk_to_user_disabled" and r.json()["hint"]
    assert fp.notifications(ws.id) == []
    old = apr.add_workspace(talk_to_user_enabled=False)
    assert notify(apr, old, {"message": "hi"}).status_code == 200


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


# ----------------------------------------------------------------------------- request log


def test_request_log_and_waiting(fp: FakePlatform) -> None:
    ws = fp.add_workspace()

    def later() -> None:
        time.sleep(0.1)
        beat(fp, ws.id, ws.token)
        beat(fp, ws.id, ws.token)

    threading.Thread(target=later, daemon=True).start()
    assert fp.wait_for_requests("heartbeat", 2, timeout=3.0, workspace_id=ws.id)
    assert fp.wait_for(lambda: len(fp.heartbeats(ws.id)) == 2, timeout=3.0)
    assert not fp.wait_for_requests("heartbeat", 3, timeout=0.1)
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


def test_add_workspace_duplicates_and_unknown(fp: FakePlatform) -> None:
    ws = fp.add_workspace("fixed")
    assert fp.workspace("fixed") is ws
    with pytest.raises(ValueError):
        fp.add_workspace("fixed")
    for call in (
        lambda: fp.workspace("missing"),
        lambda: fp.issue_token("missing"),
        lambda: fp.add_activity("missing", source_id=None),
        lambda: fp.add_delegation("missing"),
    ):
        with pytest.raises(KeyError):
            call()


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
