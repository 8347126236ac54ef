"""FakePlatform's workspace routes: auth, delegations, activity, GET workspace, a2a, notify."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from heartbeat_sync.testing import FakePlatform, Response

from ._fake import T, auth, get, notify


@pytest.fixture
def fp() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


@pytest.fixture
def apr() -> Iterator[FakePlatform]:
    with FakePlatform(generation="APR") as platform:
        yield platform


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


def test_peers_lists_siblings_children_and_parent_as_the_real_server(fp: FakePlatform) -> None:
    """As seen on the real server: the discovery check (a workspace without tokens is open),
    404 for an unknown id, never a removed workspace, siblings first and the parent last."""
    lead = fp.add_workspace(name="lead")
    me, sib, gone = (fp.add_workspace(name=n, parent_id=lead.id) for n in ("me", "sib", "gone"))
    child = fp.add_workspace(name="child", parent_id=me.id)
    fp.delete(gone.id)
    path = f"/registry/{me.id}/peers"
    r = get(fp, path)
    assert (r.status_code, r.json()) == (401, {"error": "missing workspace auth token"})
    r = get(fp, path, lead.token)
    assert (r.status_code, r.json()) == (401, {"error": "invalid workspace auth token"})
    r = get(fp, path, me.token)
    assert r.status_code == 200
    assert [(p["id"], p["parent_id"]) for p in r.json()] == [
        (sib.id, lead.id),
        (child.id, me.id),
        (lead.id, None),
    ]
    assert set(r.json()[0]) == {
        "id",
        "name",
        "role",
        "tier",
        "status",
        "agent_card",
        "url",
        "parent_id",
        "active_tasks",
    }
    assert [p["name"] for p in get(fp, path, me.token, q="SI").json()] == ["sib"]
    # The top level: the other top-level workspaces are the siblings.
    other = fp.add_workspace(name="other", with_token=False)
    assert [p["id"] for p in get(fp, f"/registry/{lead.id}/peers", lead.token).json()] == [
        other.id,
        me.id,
        sib.id,
    ]
    assert get(fp, f"/registry/{other.id}/peers").status_code == 200  # no token: open
    assert get(fp, "/registry/nope/peers").status_code == 404


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
