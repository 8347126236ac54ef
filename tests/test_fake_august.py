"""FakePlatform(generation="2026-08"): the August 2026 server, and May's answers where they differ.

Every fact here is one ``docs/platform.md`` records for the real servers; each test speaks HTTP
to the fake as a client of the real one would.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from heartbeat_sync.testing import FakePlatform, Workspace

from ._fake import T, auth, beat, get, notify

AUGUST = "2026-08"
ROOT = "ea3cfcf1-cb9c-53b4-90fd-c53123569c4a"
BUSY = "workspace agent busy — request queued, will dispatch when capacity available"


@pytest.fixture
def aug() -> Iterator[FakePlatform]:
    with FakePlatform(generation=AUGUST) as platform:
        yield platform


@pytest.fixture
def may() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


@pytest.fixture(params=["MAY", AUGUST])
def both(request: pytest.FixtureRequest) -> Iterator[FakePlatform]:
    with FakePlatform(generation=request.param) as platform:
        yield platform


class Events:
    """A workspace's event stream, read on a thread; :meth:`next` returns the next event."""

    def __init__(self, fp: FakePlatform, ws: Workspace) -> None:
        self._fp, self._ws_id = fp, ws.id
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._resp = requests.get(
            f"{fp.url}/workspaces/{ws.id}/events/stream",
            headers=auth(ws.token),
            stream=True,
            timeout=T,
        )
        assert self._resp.status_code == 200
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert fp.wait_for(lambda: fp.open_streams(ws.id) >= 1)

    def _read(self) -> None:
        try:
            for line in self._resp.iter_lines():
                if line.startswith(b"data: "):
                    self._queue.put(json.loads(line[len(b"data: ") :]))
        except Exception:  # closed by the test
            return

    def next(self) -> dict[str, Any]:
        """The next event as ``{"type", "data"}``."""
        event = self._queue.get(timeout=T)
        return {"type": event["type"], "data": event["data"]}

    def types_until(self, kind: str) -> list[str]:
        """The types of the events up to and including the next one of ``kind``."""
        seen: list[str] = []
        while not seen or seen[-1] != kind:
            seen.append(self.next()["type"])
        return seen

    def close(self) -> None:
        # The server cuts it: a read blocked on the socket ends at once.
        if self._fp.running:
            self._fp.drop_streams(self._ws_id)
        self._thread.join(T)
        self._resp.close()


@pytest.fixture
def streams() -> Iterator[list[Events]]:
    opened: list[Events] = []
    yield opened
    for stream in opened:
        stream.close()


def listen(streams: list[Events], fp: FakePlatform, ws: Workspace) -> Events:
    stream = Events(fp, ws)
    streams.append(stream)
    return stream


def send(
    fp: FakePlatform,
    target: str,
    text: str,
    *,
    token: str | None = None,
    caller: str | None = None,
    message_id: str = "m-1",
) -> requests.Response:
    """``POST /workspaces/<target>/a2a`` with a ``message/send`` carrying ``text``."""
    body = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "messageId": message_id,
                "parts": [{"kind": "text", "text": text}],
            }
        },
    }
    headers = auth(token)
    if caller is not None:
        headers["X-Workspace-ID"] = caller
    return requests.post(f"{fp.url}/workspaces/{target}/a2a", json=body, headers=headers, timeout=T)


def rows(fp: FakePlatform, ws: Workspace, **params: str) -> list[dict[str, Any]]:
    r = get(fp, f"/workspaces/{ws.id}/activity", ws.token, **params)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()
    return out


# ----------------------------------------------------------------------------- the switch


def test_generation_2026_08_is_accepted_and_2026_05_is_another_name_for_may() -> None:
    assert FakePlatform(generation=AUGUST).generation == AUGUST
    assert FakePlatform(generation="2026-05").generation == "MAY"
    assert FakePlatform().generation == "MAY"
    for wrong in ("AUG", "2026-06", "may", ""):
        with pytest.raises(ValueError, match="2026-08"):
            FakePlatform(generation=wrong)


def test_2026_05_answers_as_may() -> None:
    with FakePlatform(generation="2026-05") as fp:
        ws = fp.add_workspace()
        assert set(beat(fp, ws.id, ws.token).json()) == {"status", "platform_inbound_secret"}
        assert ws.parent_id is None


# ----------------------------------------------------------------------------- heartbeat


def test_august_heartbeat_reply_carries_the_desired_generation(aug: FakePlatform) -> None:
    ws = aug.add_workspace()
    r = beat(aug, ws.id, ws.token)
    assert r.status_code == 200
    body = r.json()
    assert body == {
        "status": "ok",
        "generation": 0,
        "platform_inbound_secret": ws.inbound_secret,
    }
    aug.set_desired_generation(ws.id, 3)
    assert beat(aug, ws.id, ws.token).json()["generation"] == 3
    assert ws.desired_generation == 3
    with pytest.raises(ValueError, match="only grows"):
        aug.set_desired_generation(ws.id, 2)
    for wrong in (-1, True, 1.0):
        with pytest.raises(ValueError):
            aug.set_desired_generation(ws.id, wrong)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        aug.set_desired_generation("missing", 4)


def test_may_heartbeat_reply_has_no_generation(may: FakePlatform) -> None:
    ws = may.add_workspace()
    may.set_desired_generation(ws.id, 2)
    assert set(beat(may, ws.id, ws.token).json()) == {"status", "platform_inbound_secret"}


def test_august_heartbeat_stores_is_busy_and_the_largest_observed_generation(
    aug: FakePlatform,
) -> None:
    ws = aug.add_workspace()
    assert (ws.is_busy, ws.observed_generation) == (False, 0)
    beat(aug, ws.id, ws.token, is_busy=True, active_tasks=0)
    assert ws.is_busy is True
    beat(aug, ws.id, ws.token, is_busy=False, active_tasks=2)
    assert ws.is_busy is False
    beat(aug, ws.id, ws.token, active_tasks=3)  # absent: active_tasks > 0, as the server
    assert ws.is_busy is True
    beat(aug, ws.id, ws.token, is_busy=None, active_tasks=0)
    assert ws.is_busy is False
    beat(aug, ws.id, ws.token, observed_generation=5)
    beat(aug, ws.id, ws.token, observed_generation=2)
    assert ws.observed_generation == 5
    beat(aug, ws.id, ws.token, observed_generation=None)
    assert ws.observed_generation == 5
    assert beat(aug, ws.id, ws.token, schema_version="1").status_code == 200


@pytest.mark.parametrize(
    "field",
    [
        {"is_busy": "yes"},
        {"is_busy": 1},
        {"is_busy": []},
        {"observed_generation": "3"},
        {"observed_generation": 1.5},
        {"observed_generation": 2.0},
        {"observed_generation": True},
    ],
)
def test_august_heartbeat_refuses_is_busy_or_observed_generation_of_the_wrong_type(
    aug: FakePlatform, field: dict[str, object]
) -> None:
    ws = aug.add_workspace()
    r = beat(aug, ws.id, ws.token, **field)
    assert (r.status_code, r.json()) == (400, {"error": "invalid request body"})
    assert ws.heartbeat_count == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"is_busy": "yes", "observed_generation": "3"},
        {"is_busy": 1},
        {"observed_generation": 1.5},
        {"is_busy": True, "observed_generation": 4},
    ],
)
def test_may_heartbeat_ignores_is_busy_and_observed_generation_whatever_their_type(
    may: FakePlatform, fields: dict[str, object]
) -> None:
    ws = may.add_workspace()
    r = beat(may, ws.id, ws.token, **fields)
    assert r.status_code == 200 and "generation" not in r.json()
    assert ws.heartbeat_count == 1
    assert (ws.is_busy, ws.observed_generation) == (False, 0)


def test_august_heartbeat_sends_generation_for_removed_and_unknown_workspaces(
    aug: FakePlatform,
) -> None:
    ws = aug.add_workspace()
    aug.set_desired_generation(ws.id, 1)
    aug.delete(ws.id)
    r = beat(aug, ws.id, observed_generation=7)
    assert r.status_code == 200 and r.json()["generation"] == 1
    assert ws.observed_generation == 0 and ws.heartbeat_count == 0  # nothing written
    r = beat(aug, "11111111-1111-1111-1111-111111111111")
    assert r.json()["generation"] == 0 and len(r.json()["platform_inbound_secret"]) == 43


# ----------------------------------------------------------------------------- activity: seq


def test_august_activity_rows_carry_one_server_wide_increasing_seq(aug: FakePlatform) -> None:
    a, c = aug.add_workspace(), aug.add_workspace()
    for i in range(3):
        aug.add_activity(a.id, source_id="p", text=f"a{i}")
        aug.add_activity(c.id, source_id="p", text=f"c{i}")
    seq_a = [r["seq"] for r in rows(aug, a)][::-1]
    seq_c = [r["seq"] for r in rows(aug, c)][::-1]
    assert all(type(s) is int for s in seq_a + seq_c)
    assert seq_a == sorted(seq_a) and seq_c == sorted(seq_c)
    # One counter: the workspaces' rows interleave, none shares a value.
    assert sorted(seq_a + seq_c) == [s for pair in zip(seq_a, seq_c) for s in pair]
    assert len(set(seq_a + seq_c)) == 6


def test_may_activity_rows_have_no_seq(may: FakePlatform) -> None:
    ws = may.add_workspace()
    may.add_activity(ws.id, source_id="p", text="x")
    assert "seq" not in rows(may, ws)[0]


def test_august_created_at_drops_trailing_zeros_as_the_real_server(aug: FakePlatform) -> None:
    ws = aug.add_workspace()
    for _ in range(20):
        aug.add_activity(ws.id, source_id="p")
    for row in rows(aug, ws):
        stamp = row["created_at"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,5}[1-9])?Z", stamp), stamp


def test_august_since_id_returns_the_rows_of_the_cursors_instant_after_it(
    aug: FakePlatform, may: FakePlatform
) -> None:
    """Three rows of one instant, ``since_id`` = the first: 2026-08 (``created_at``, ``seq``)
    returns the other two, May (``created_at`` alone) none of them."""
    for fp, expected in ((aug, [1, 2, 3]), (may, [3])):
        ws = fp.add_workspace()
        ids = [fp.add_activity(ws.id, source_id="p", summary="tie-0")]
        ids += [
            fp.add_activity(ws.id, source_id="p", summary=f"tie-{i}", same_instant_as=ids[0])
            for i in (1, 2)
        ]
        ids.append(fp.add_activity(ws.id, source_id="p", summary="later"))
        stamps = {r["created_at"] for r in rows(fp, ws)[1:]}
        assert len(stamps) == 1  # the three share their created_at
        after = rows(fp, ws, since_id=ids[0])
        assert [r["id"] for r in after] == [ids[i] for i in expected], fp.generation
        # Without a cursor: newest first, the instant's rows by seq.
        assert [r["id"] for r in rows(fp, ws)] == ids[::-1]
        with pytest.raises(KeyError):
            fp.add_activity(ws.id, source_id="p", same_instant_as="nope")


def test_august_since_id_never_returns_a_row_committed_late_after_a_newer_one(
    aug: FakePlatform,
) -> None:
    ws = aug.add_workspace()
    first = aug.add_activity(ws.id, source_id="p", text="first")
    late = aug.add_activity(ws.id, source_id="p", text="late", committed=False)
    newer = aug.add_activity(ws.id, source_id="p", text="newer")
    assert [r["id"] for r in rows(aug, ws, since_id=first)] == [newer]
    aug.commit_activity(ws.id, late)
    assert [r["id"] for r in rows(aug, ws, since_id=newer)] == []
    assert [r["id"] for r in rows(aug, ws, since_id=first)] == [late, newer]


def test_august_cursor_errors_are_the_real_servers(aug: FakePlatform) -> None:
    ws, other = aug.add_workspace(), aug.add_workspace()
    foreign = aug.add_activity(other.id, source_id="p")
    for cursor in ("00000000-0000-0000-0000-000000000000", foreign):
        r = get(aug, f"/workspaces/{ws.id}/activity", ws.token, since_id=cursor)
        assert (r.status_code, r.json()["error"]) == (
            410,
            "since_id cursor not found (row may have been pruned or belongs to a different "
            "workspace); omit since_id to reset",
        )
    r = get(aug, f"/workspaces/{ws.id}/activity", ws.token, since_id="not-a-uuid")
    assert (r.status_code, r.json()) == (500, {"error": "cursor lookup failed"})


# ----------------------------------------------------------------------------- activity/ack


def ack(fp: FakePlatform, ws_id: str, body: Any, token: str | None) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"{fp.url}/workspaces/{ws_id}/activity/ack", data=data, headers=auth(token), timeout=T
    )


def test_august_ack_keeps_the_largest_acked_seq(aug: FakePlatform) -> None:
    ws = aug.add_workspace()
    aug.add_activity(ws.id, source_id="p", text="x")
    top = rows(aug, ws)[0]["seq"]
    for sent, kept in ((top, top), (0, top), (999999, 999999), (1, 999999)):
        r = ack(aug, ws.id, {"acked_seq": sent}, ws.token)
        assert (r.status_code, r.json()) == (200, {"last_acked_seq": kept})
    assert ws.last_acked_seq == 999999
    r = ack(aug, ws.id, {"acked_seq": 5}, aug.admin_token)
    assert (r.status_code, r.json()) == (200, {"last_acked_seq": 999999})
    assert len(rows(aug, ws)) == 1  # acking hides nothing
    assert aug.requests_for("ack", ws.id)[0].status == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"acked_seq": -1}, "acked_seq must be >= 0"),
        ({"acked_seq": "5"}, "acked_seq is required"),
        ({"acked_seq": 5.5}, "acked_seq is required"),
        ({"acked_seq": 5.0}, "acked_seq is required"),
        ({"acked_seq": True}, "acked_seq is required"),
        ({"acked_seq": None}, "acked_seq is required"),
        ({"acked_seq": 1 << 64}, "acked_seq is required"),
        ({}, "acked_seq is required"),
        ([5], "acked_seq is required"),
        (b"not json", "acked_seq is required"),
        (b"", "acked_seq is required"),
    ],
)
def test_august_ack_refuses_what_is_not_a_non_negative_integer(
    aug: FakePlatform, body: Any, message: str
) -> None:
    ws = aug.add_workspace()
    r = ack(aug, ws.id, body, ws.token)
    assert (r.status_code, r.json()) == (400, {"error": message})
    assert ws.last_acked_seq == 0


def test_august_ack_needs_the_workspaces_bearer(aug: FakePlatform) -> None:
    ws, other = aug.add_workspace(), aug.add_workspace()
    r = ack(aug, ws.id, {"acked_seq": 1}, None)
    assert (r.status_code, r.json()) == (401, {"error": "missing workspace auth token"})
    r = ack(aug, ws.id, {"acked_seq": 1}, other.token)
    assert (r.status_code, r.json()) == (401, {"error": "invalid workspace auth token"})
    aug.delete(other.id)
    assert ack(aug, other.id, {"acked_seq": 1}, ws.token).status_code == 401


@pytest.mark.parametrize("generation", ["MAY", "APR"])
def test_before_august_there_is_no_ack_route(generation: str) -> None:
    with FakePlatform(generation=generation) as fp:
        ws = fp.add_workspace()
        for token in (ws.token, None):
            r = ack(fp, ws.id, {"acked_seq": 1}, token)
            assert (r.status_code, r.text) == (404, "404 page not found")
            assert r.headers["Content-Type"] == "text/plain"
        assert fp.requests[-1].route == "ack"
        assert ws.last_acked_seq == 0


# ----------------------------------------------------------------------------- tenant guard

ORG = "11111111-2222-3333-4444-555555555555"
TENANT_400 = {
    "code": "TENANT_ORG_HEADER_REQUIRED",
    "detail": "SaaS tenant API requests must include X-Molecule-Org-Id matching the organization"
    " UUID.",
    "error": "missing tenant routing header",
    "required_header": "X-Molecule-Org-Id",
}


def _guarded_requests(fp: FakePlatform, ws: Workspace) -> list[tuple[str, str, Any]]:
    return [
        ("GET", f"/workspaces/{ws.id}", None),
        ("GET", f"/workspaces/{ws.id}/activity", None),
        ("GET", f"/workspaces/{ws.id}/delegations", None),
        ("GET", f"/workspaces/{ws.id}/state", None),
        ("POST", f"/workspaces/{ws.id}/notify", {"message": "hi"}),
        ("POST", f"/workspaces/{ws.id}/a2a", {"method": "message/send", "params": {}}),
        ("GET", f"/registry/{ws.id}/peers", None),
        ("GET", "/nonexistent-route", None),
    ]


def test_tenant_guard_is_off_by_default(both: FakePlatform) -> None:
    ws = both.add_workspace()
    assert both.org_id is None
    assert get(both, f"/workspaces/{ws.id}/activity", ws.token).status_code == 200


@pytest.mark.parametrize("generation", ["MAY", AUGUST])
def test_tenant_guard_wants_the_org_header_on_every_route_but_register_and_heartbeat(
    generation: str,
) -> None:
    with FakePlatform(generation=generation, org_id=ORG) as fp:
        assert fp.org_id == ORG
        ws = fp.add_workspace(name="w")
        for method, path, body in _guarded_requests(fp, ws):
            for header in ({}, {"X-Molecule-Org-Id": ""}):
                r = requests.request(
                    method,
                    fp.url + path,
                    json=body,
                    timeout=T,
                    headers={**auth(ws.token), **header},
                )
                if generation == AUGUST:
                    assert (r.status_code, r.json()) == (400, TENANT_400), path
                else:
                    assert (r.status_code, r.content) == (404, b""), path
                    assert "Content-Type" not in r.headers
            wrong = {**auth(ws.token), "X-Molecule-Org-Id": "nope"}
            r = requests.request(method, fp.url + path, json=body, headers=wrong, timeout=T)
            assert (r.status_code, r.content) == (404, b""), path
            assert "Content-Type" not in r.headers
        for name in ("X-Molecule-Org-Id", "x-molecule-org-id"):
            headers = {**auth(ws.token), name: ORG}
            r = requests.get(f"{fp.url}/workspaces/{ws.id}/activity", headers=headers, timeout=T)
            assert r.status_code == 200
        replay = {**auth(ws.token), "Fly-Replay-Src": f"instance=1;region=ord;state={ORG}"}
        assert requests.get(f"{fp.url}/workspaces/{ws.id}", headers=replay, timeout=T).ok
        replay["Fly-Replay-Src"] = "instance=1;state=nope"
        r = requests.get(f"{fp.url}/workspaces/{ws.id}", headers=replay, timeout=T)
        assert (r.status_code, r.content) == (404, b"")
        # Exempt: registration and heartbeat, without the header.
        assert beat(fp, ws.id, ws.token).status_code == 200
        body = {"id": ws.id, "url": "http://localhost:9", "agent_card": {}}
        r = requests.post(
            f"{fp.url}/registry/register", json=body, headers=auth(ws.token), timeout=T
        )
        assert r.status_code == 200


def test_tenant_guard_refuses_a_bad_org_id() -> None:
    for wrong in ("", " x", 5):
        with pytest.raises(ValueError, match="org_id"):
            FakePlatform(org_id=wrong)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- delegations


def test_august_delegation_rows_say_sent_or_received(aug: FakePlatform, may: FakePlatform) -> None:
    for fp in (aug, may):
        caller, me = fp.add_workspace(), fp.add_workspace()
        sent = fp.add_delegation(me.id, target_id=caller.id, summary="mine")
        got = fp.add_delegation(
            me.id, direction="received", source_id=caller.id, summary="theirs", status="queued"
        )
        listed = get(fp, f"/workspaces/{me.id}/delegations", me.token).json()
        if fp.generation == AUGUST:
            assert [(r["delegation_id"], r["direction"]) for r in listed] == [
                (got, "received"),
                (sent, "sent"),
            ]
            assert (listed[0]["source_id"], listed[0]["target_id"]) == (caller.id, me.id)
            assert (listed[1]["source_id"], listed[1]["target_id"]) == (me.id, caller.id)
            assert listed[0]["_ledger"] is True and listed[0]["deadline"] > listed[0]["created_at"]
        else:
            assert [r["delegation_id"] for r in listed] == [sent]  # May asks caller_id only
            assert "direction" not in listed[0]
        with pytest.raises(ValueError, match="source_id"):
            fp.add_delegation(me.id, direction="received")
        with pytest.raises(ValueError, match="direction"):
            fp.add_delegation(me.id, direction="both")


def test_a_received_delegation_sends_no_event(aug: FakePlatform, streams: list[Events]) -> None:
    caller, me = aug.add_workspace(), aug.add_workspace()
    stream = listen(streams, aug, me)
    did = aug.add_delegation(me.id, direction="received", source_id=caller.id)
    aug.set_delegation(me.id, did, status="completed")
    aug.add_delegation(me.id, target_id=caller.id, status="completed")
    assert stream.next()["type"] == "DELEGATION_SENT"


# ----------------------------------------------------------------------------- poll-mode messages


def test_august_poll_message_is_one_ingest_row_and_two_events_with_message_id(
    aug: FakePlatform, streams: list[Events]
) -> None:
    target = aug.add_workspace(name="in-alpha", delivery_mode="poll")
    sender = aug.add_workspace()
    stream = listen(streams, aug, target)
    r = send(aug, target.id, "report ready", token=sender.token, caller=sender.id, message_id="p-1")
    assert (r.status_code, r.json()) == (
        200,
        {"delivery_mode": "poll", "method": "message/send", "status": "queued"},
    )
    [row] = rows(aug, target, type="a2a_receive")
    assert row["summary"] == "message/send → in-alpha (ingest)"
    assert (row["source_id"], row["target_id"], row["status"]) == (sender.id, target.id, "ok")
    assert row["duration_ms"] is None and "response_body" not in row
    assert row["request_body"]["params"]["message"]["messageId"] == "p-1"
    first, second = stream.next(), stream.next()
    assert (first["type"], second["type"]) == ("ACTIVITY_LOGGED", "ACTIVITY_LOGGED")
    assert first["data"]["summary"] == "message/send → in-alpha (ingest)"
    assert second["data"]["summary"] == "message/send → in-alpha (queued for poll)"
    for event in (first, second):
        assert event["data"]["message_id"] == "p-1"
        assert event["data"]["source_id"] == sender.id
        assert event["data"]["request_body"] == row["request_body"]


def test_may_poll_message_is_one_queued_for_poll_row_and_one_event_without_message_id(
    may: FakePlatform, streams: list[Events]
) -> None:
    target = may.add_workspace(name="in-alpha", delivery_mode="poll")
    sender = may.add_workspace()
    stream = listen(streams, may, target)
    r = send(may, target.id, "report ready", token=sender.token, caller=sender.id)
    assert r.json()["status"] == "queued"
    [row] = rows(may, target, type="a2a_receive")
    assert row["summary"] == "message/send → in-alpha (queued for poll)"
    event = stream.next()
    assert event["type"] == "ACTIVITY_LOGGED" and "message_id" not in event["data"]
    assert event["data"]["summary"] == row["summary"]
    beat(may, target.id, target.token)
    assert stream.next()["type"] == "WORKSPACE_HEARTBEAT"  # no second ACTIVITY_LOGGED


def test_queue_poll_message_logs_as_the_proxy_does(
    both: FakePlatform, streams: list[Events]
) -> None:
    target = both.add_workspace(name="t", delivery_mode="poll")
    sender = both.add_workspace()
    stream = listen(streams, both, target)
    row_id = both.queue_poll_message(target.id, "hello", sender_id=sender.id, message_id="q-1")
    [row] = rows(both, target)
    assert row["id"] == row_id and row["source_id"] == sender.id
    assert row["request_body"]["params"]["message"] == {
        "role": "user",
        "messageId": "q-1",
        "parts": [{"kind": "text", "text": "hello"}],
    }
    summaries = [stream.next()["data"] for _ in range(2 if both.generation == AUGUST else 1)]
    if both.generation == AUGUST:
        assert row["summary"] == "message/send → t (ingest)"
        assert [d["summary"] for d in summaries] == [
            "message/send → t (ingest)",
            "message/send → t (queued for poll)",
        ]
        assert {d["message_id"] for d in summaries} == {"q-1"}
    else:
        assert row["summary"] == "message/send → t (queued for poll)"
        assert "message_id" not in summaries[0]
    with FakePlatform(generation="APR") as apr, pytest.raises(ValueError, match="APR"):
        apr.queue_poll_message(apr.add_workspace().id, "x")


def test_august_canvas_message_comes_from_the_admin_and_is_marked(
    aug: FakePlatform, streams: list[Events]
) -> None:
    target = aug.add_workspace(name="t", delivery_mode="poll")
    stream = listen(streams, aug, target)
    r = send(aug, target.id, "hi agent")
    assert (r.status_code, r.json()) == (401, {"error": "missing caller auth token"})
    r = send(aug, target.id, "hi agent", token="junk")
    assert (r.status_code, r.json()) == (401, {"error": "invalid caller auth token"})
    assert send(aug, target.id, "hi agent", token=aug.admin_token, message_id="c-1").ok
    [row] = rows(aug, target)
    assert row["source_id"] is None
    params = row["request_body"]["params"]
    assert params["metadata"] == {
        "source": "canvas_user",
        "user_identity_status": "UNAUTHENTICATED",
    }
    assert params["message"]["contextId"] == f"canvas-{target.id}"
    types = [stream.next() for _ in range(3)]
    assert [e["type"] for e in types] == ["ACTIVITY_LOGGED", "USER_MESSAGE", "ACTIVITY_LOGGED"]
    assert types[1]["data"] == {
        "content": "hi agent",
        "message_id": "c-1",
        "workspace_id": target.id,
    }
    # The admin may claim a caller: the row is then that caller's.
    peer = aug.add_workspace()
    assert send(aug, target.id, "as peer", token=aug.admin_token, caller=peer.id).ok
    assert rows(aug, target)[0]["source_id"] == peer.id


# ----------------------------------------------------------------------------- busy rows


def test_august_queue_busy_message_writes_the_ingest_and_the_queued_busy_rows(
    aug: FakePlatform, streams: list[Events]
) -> None:
    target = aug.add_workspace(name="busy-one", url="http://localhost:9")
    sender = aug.add_workspace()
    stream = listen(streams, aug, target)
    ingest_id, busy_id = aug.queue_busy_message(
        target.id, "wait behind busy agent", sender_id=sender.id, message_id="b-1"
    )
    busy, ingest = rows(aug, target, type="a2a_receive")
    assert (ingest["id"], busy["id"]) == (ingest_id, busy_id)
    assert ingest["summary"] == "message/send → busy-one (ingest)"
    assert busy["summary"] == "message/send → busy-one (queued: target busy)"
    assert json.dumps(busy["request_body"]) == json.dumps(ingest["request_body"])
    assert busy["seq"] > ingest["seq"] and busy["created_at"] != ingest["created_at"]
    assert ingest["duration_ms"] is None and isinstance(busy["duration_ms"], int)
    assert busy["source_id"] == ingest["source_id"] == sender.id
    assert busy["method"] == ingest["method"] == "message/send"
    first, second = stream.next(), stream.next()
    assert first["data"]["summary"] == ingest["summary"] and first["data"]["message_id"] == "b-1"
    assert second["data"]["summary"] == busy["summary"] and "message_id" not in second["data"]


def test_may_queue_busy_message_writes_one_error_row(may: FakePlatform) -> None:
    target = may.add_workspace(name="busy-one", url="http://localhost:9")
    [row_id] = may.queue_busy_message(target.id, "wait", sender_id="p")
    [row] = rows(may, target)
    assert row["id"] == row_id and row["status"] == "error"
    assert row["summary"] == 'A2A request to busy-one failed: Post "http://localhost:9": EOF'


def test_august_message_to_a_workspace_that_never_registered_is_queued_as_busy(
    aug: FakePlatform,
) -> None:
    never = aug.add_workspace(name="in-never", status="awaiting_agent")
    sender = aug.add_workspace()
    depths = []
    for i in range(2):
        r = send(aug, never.id, "are you there", token=sender.token, message_id=f"n-{i}")
        assert r.status_code == 202
        body = r.json()
        assert (body["message"], body["queued"]) == (BUSY, True)
        assert isinstance(body["queue_id"], str) and body["queue_id"]
        depths.append(body["queue_depth"])
    assert depths == [1, 2]
    summaries = [r["summary"] for r in rows(aug, never)]
    assert (
        summaries
        == [
            "message/send → in-never (queued: target busy)",
            "message/send → in-never (ingest)",
        ]
        * 2
    )
    # Delivered by beats with spare capacity, one per beat; delivery writes no row.
    beat(aug, never.id, never.token, active_tasks=1)
    beat(aug, never.id, never.token, active_tasks=0)
    never.status, never.url = "awaiting_agent", ""
    assert send(aug, never.id, "again", token=sender.token).json()["queue_depth"] == 2
    assert len(rows(aug, never)) == 6


def test_may_message_to_a_workspace_that_never_registered_is_503_without_a_row(
    may: FakePlatform,
) -> None:
    never = may.add_workspace(status="awaiting_agent")
    sender = may.add_workspace()
    r = send(may, never.id, "are you there", token=sender.token, caller=sender.id)
    assert (r.status_code, r.json()) == (
        503,
        {"error": "workspace has no URL", "status": "awaiting_agent"},
    )
    assert rows(may, never) == []


def test_august_message_to_a_workspace_without_url_is_503_unless_it_waits_for_its_agent(
    aug: FakePlatform,
) -> None:
    online = aug.add_workspace()
    r = send(aug, online.id, "wake", token=online.token, caller=online.id)
    assert (r.status_code, r.json()) == (503, {"error": "workspace has no URL", "status": "online"})
    online.url = "http://localhost:9"
    r = send(aug, online.id, "wake", token=online.token, caller=online.id)
    assert r.status_code == 200 and r.json()["result"]["parts"][0]["text"] == "ok"


def test_august_push_message_completes_its_ingest_row(
    aug: FakePlatform, streams: list[Events]
) -> None:
    target = aug.add_workspace(name="pushy", url="http://localhost:9")
    sender = aug.add_workspace()
    stream = listen(streams, aug, target)
    r = send(aug, target.id, "hi", token=sender.token, message_id="x-1")
    assert r.status_code == 200
    [row] = rows(aug, target)
    assert row["summary"] == "message/send → pushy (ingest)"
    assert row["response_body"] == r.json() and isinstance(row["duration_ms"], int)
    first, second = stream.next(), stream.next()
    assert first["data"]["summary"] == "message/send → pushy (ingest)"
    assert second["data"]["summary"] == "message/send → pushy"
    assert second["data"]["response_body"] == r.json()
    assert first["data"]["message_id"] == second["data"]["message_id"] == "x-1"


# ----------------------------------------------------------------------------- self-messages


def test_august_self_message_needs_the_workspaces_own_bearer(aug: FakePlatform) -> None:
    me = aug.add_workspace(delivery_mode="poll")
    other = aug.add_workspace()
    cases = [
        (None, me.id, "missing caller auth token"),
        (other.token, me.id, "caller ID does not match workspace auth token"),
        ("junk", me.id, "invalid caller auth token"),
        (me.token, other.id, "caller ID does not match workspace auth token"),
        (me.token, me.id.upper(), "caller ID does not match workspace auth token"),
    ]
    for token, caller, message in cases:
        r = send(aug, me.id, "wake", token=token, caller=caller)
        assert (r.status_code, r.json()) == (401, {"error": message}), message
    assert rows(aug, me) == []
    assert send(aug, me.id, "wake", token=me.token, caller=me.id).ok
    assert send(aug, me.id, "wake", token=me.token).ok  # the bearer's workspace is the caller
    assert [r["source_id"] for r in rows(aug, me)] == [me.id, me.id]
    r = send(aug, me.id, "wake", token=me.token, caller="system:cron")
    assert (r.status_code, r.json()) == (403, {"error": "invalid caller ID"})
    old_token = other.token
    aug.delete(other.id)
    r = send(aug, me.id, "from the grave", token=old_token)
    assert (r.status_code, r.json()) == (401, {"error": "invalid caller auth token"})


def test_may_self_message_is_not_checked(may: FakePlatform) -> None:
    me = may.add_workspace(delivery_mode="poll")
    other = may.add_workspace()
    for token in (None, other.token, "junk"):
        assert send(may, me.id, "wake", token=token, caller=me.id).status_code == 200
    assert [r["source_id"] for r in rows(may, me)] == [me.id] * 3


# ----------------------------------------------------------------------------- delete


def delete(
    fp: FakePlatform, ws_id: str, token: str | None, name: str | None = None, **params: str
) -> requests.Response:
    headers = auth(token)
    if name is not None:
        headers["X-Confirm-Name"] = name
    return requests.delete(
        f"{fp.url}/workspaces/{ws_id}", headers=headers, params=params, timeout=T
    )


def test_august_delete_needs_the_exact_name_and_a_repeat_is_gone(
    aug: FakePlatform, streams: list[Events]
) -> None:
    ws = aug.add_workspace(name="pr-alpha")
    stream = listen(streams, aug, ws)
    refusal = {
        "error": "destructive_action_requires_confirmation",
        "hint": "Re-send the same request with header X-Confirm-Name: pr-alpha",
        "workspace_name": "pr-alpha",
        "active_tasks": 0,
        "child_count": 0,
    }
    for name in (None, "PR-ALPHA", "wrong"):
        r = delete(aug, ws.id, aug.admin_token, name)
        assert (r.status_code, r.json()) == (400, refusal)
    r = delete(aug, ws.id, aug.admin_token, None, confirm="true")
    assert r.status_code == 400  # ?confirm=true is no name
    assert ws.status == "online"
    r = delete(aug, ws.id, aug.admin_token, "pr-alpha")
    assert (r.status_code, r.json()) == (200, {"cascade_deleted": 0, "status": "removed"})
    assert ws.status == "removed" and ws.tokens == []
    for name in ("pr-alpha", None):
        r = delete(aug, ws.id, aug.admin_token, name)
        assert (r.status_code, r.json()) == (410, {"error": "workspace removed", "id": ws.id})
    assert stream.next() == {"type": "WORKSPACE_REMOVED", "data": {"cascade_deleted": 0}}
    aug.delete(ws.id)  # a repeat announces nothing on 2026-08
    r = delete(aug, "00000000-0000-0000-0000-000000000000", aug.admin_token, "x")
    assert (r.status_code, r.json()) == (404, {"error": "workspace not found"})


def test_delete_is_an_admin_route(both: FakePlatform) -> None:
    ws = both.add_workspace(name="w")
    r = delete(both, ws.id, None, "w")
    assert (r.status_code, r.json()) == (401, {"error": "admin auth required"})
    r = delete(both, ws.id, ws.token, "w")
    assert (r.status_code, r.json()) == (401, {"error": "invalid admin auth token"})
    assert ws.status == "online" and len(both.admin_token) == 43
    assert both.requests[-1].route == "delete"


def test_workspace_routes_accept_the_admin_bearer(both: FakePlatform) -> None:
    """As the real server's WorkspaceAuth: the admin may read any workspace's routes, and its
    ``/state`` of a removed workspace says so."""
    ws = both.add_workspace()
    for suffix in ("activity", "delegations", "state"):
        assert get(both, f"/workspaces/{ws.id}/{suffix}", both.admin_token).status_code == 200
    both.delete(ws.id)
    r = get(both, f"/workspaces/{ws.id}/state", both.admin_token)
    assert (r.status_code, r.json()) == (
        404,
        {"workspace_id": ws.id, "status": "removed", "deleted": True},
    )
    r = get(both, f"/workspaces/{ws.id}/state", "not-the-admin")
    assert (r.status_code, r.json()) == (401, {"error": "invalid workspace auth token"})


def test_may_delete_needs_no_name_and_answers_200_again(
    may: FakePlatform, streams: list[Events]
) -> None:
    ws = may.add_workspace(name="w")
    stream = listen(streams, may, ws)
    for _ in range(2):
        r = delete(may, ws.id, may.admin_token)
        assert (r.status_code, r.json()) == (200, {"cascade_deleted": 0, "status": "removed"})
        assert stream.next()["type"] == "WORKSPACE_REMOVED"  # every call announces it
    r = delete(may, "00000000-0000-0000-0000-000000000000", may.admin_token)
    assert r.status_code == 200
    r = get(may, f"/workspaces/{ws.id}")
    assert r.status_code == 410


def test_delete_with_children_wants_confirm_and_removes_them_all(both: FakePlatform) -> None:
    parent = both.add_workspace(name="pa")
    child = both.add_workspace(name="ch", parent_id=parent.id)
    grandchild = both.add_workspace(name="gc", parent_id=child.id)
    r = delete(both, parent.id, both.admin_token, "pa")
    assert (r.status_code, r.json()) == (
        409,
        {
            "children": [{"id": child.id, "name": "ch"}],
            "children_count": 1,
            "message": "This workspace has sub-workspaces. Delete with ?confirm=true to cascade "
            "delete.",
            "status": "confirmation_required",
        },
    )
    if both.generation == AUGUST:
        assert (
            delete(both, parent.id, both.admin_token, None, confirm="true").json()["child_count"]
            == 1
        )
    r = delete(both, parent.id, both.admin_token, "pa", confirm="true")
    assert (r.status_code, r.json()) == (200, {"cascade_deleted": 2, "status": "removed"})
    assert {w.status for w in (parent, child, grandchild)} == {"removed"}
    assert child.tokens == [] and grandchild.tokens == []


# ----------------------------------------------------------------------------- token rotation


def test_rotate_token_announces_external_credentials_rotated(
    both: FakePlatform, streams: list[Events]
) -> None:
    ws = both.add_workspace()
    stream = listen(streams, both, ws)
    old = ws.token
    new = both.rotate_token(ws.id)
    assert stream.next() == {
        "type": "EXTERNAL_CREDENTIALS_ROTATED",
        "data": {"workspace_id": ws.id},
    }
    assert ws.tokens == [new] and beat(both, ws.id, old).status_code == 401


# ----------------------------------------------------------------------------- the platform root


def test_august_platform_root_exists_and_parents_top_level_workspaces(aug: FakePlatform) -> None:
    root = aug.workspaces()[0]
    assert (root.id, root.name, root.kind, root.status, root.url) == (
        ROOT,
        "Org Concierge",
        "platform",
        "offline",
        "",
    )
    body = get(aug, f"/workspaces/{ROOT}").json()
    assert (body["kind"], body["status"], body["parent_id"], body["url"]) == (
        "platform",
        "offline",
        None,
        "",
    )
    assert (body["runtime"], body["tier"]) == ("hermes", 0)
    ws = aug.add_workspace(name="top")
    sib = aug.add_workspace(name="sib")
    child = aug.add_workspace(name="child", parent_id=ws.id)
    assert ws.parent_id == ROOT and child.parent_id == ws.id
    body = get(aug, f"/workspaces/{ws.id}").json()
    assert (body["kind"], body["parent_id"]) == ("workspace", ROOT)
    assert get(aug, f"/workspaces/{ROOT}").json()["name"] == "Org Concierge"
    peers = get(aug, f"/registry/{ws.id}/peers", ws.token).json()
    assert [p["id"] for p in peers] == [sib.id, child.id, ROOT]
    assert peers[-1] == {
        "active_tasks": 0,
        "agent_card": None,
        "id": ROOT,
        "name": "Org Concierge",
        "parent_id": None,
        "role": None,
        "status": "offline",
        "tier": 0,
        "url": "",
    }
    assert all("kind" not in p for p in peers)
    r = send(aug, ROOT, "hello root", token=ws.token)
    assert (r.status_code, r.json()) == (
        503,
        {"error": "workspace has no URL", "status": "offline"},
    )
    # The admin may list peers on 2026-08 (May: 401).
    assert get(aug, f"/registry/{ws.id}/peers", aug.admin_token).status_code == 200


def test_may_has_no_platform_root(may: FakePlatform) -> None:
    assert may.workspaces() == []
    ws = may.add_workspace()
    body = get(may, f"/workspaces/{ws.id}").json()
    assert body["parent_id"] is None and "kind" not in body
    assert get(may, f"/workspaces/{ROOT}").status_code == 404
    r = get(may, f"/registry/{ws.id}/peers", may.admin_token)
    assert (r.status_code, r.json()) == (401, {"error": "invalid workspace auth token"})


def test_august_get_workspace_shows_its_new_keys(aug: FakePlatform) -> None:
    ws = aug.add_workspace(name="w")
    body = get(aug, f"/workspaces/{ws.id}").json()
    assert body["last_heartbeat_at"] is None
    beat(aug, ws.id, ws.token, sample_error="boom", runtime_state="wedged")
    body = get(aug, f"/workspaces/{ws.id}").json()
    assert body["last_heartbeat_at"] == ws.last_heartbeat_at and body["last_heartbeat_at"]
    assert (body["last_sample_error"], body["wedged"]) == ("boom", True)
    assert {"compute", "mcp_surface", "loaded_mcp_tools", "talk_to_user_enabled"} <= set(body)
    aug.delete(ws.id)
    r = get(aug, f"/workspaces/{ws.id}")
    assert r.status_code == 410 and r.json()["error"] == "workspace removed"
    assert r.json()["hint"].startswith("Create a replacement workspace in Canvas")
    assert get(aug, f"/workspaces/{ws.id}", include_removed="true").json()["status"] == "removed"


# ----------------------------------------------------------------------------- notify


def test_notify_writes_its_row_and_sends_agent_message_only(
    both: FakePlatform, streams: list[Events]
) -> None:
    ws = both.add_workspace(name="sn-alpha")
    stream = listen(streams, both, ws)
    r = notify(both, ws, {"message": "Here is my answer."})
    assert (r.status_code, r.json()) == (200, {"status": "sent"})
    [row] = rows(both, ws, type="a2a_receive", source="canvas")
    assert (row["method"], row["source_id"], row["target_id"]) == ("notify", None, None)
    assert row["summary"] == "Agent message: Here is my answer."
    assert row["response_body"] == {"result": "Here is my answer."}
    assert "request_body" not in row
    assert ("seq" in row) == (both.generation == AUGUST)
    assert rows(both, ws, source="agent") == []
    assert stream.next() == {
        "type": "AGENT_MESSAGE",
        "data": {"message": "Here is my answer.", "name": "sn-alpha", "workspace_id": ws.id},
    }
    beat(both, ws.id, ws.token)
    assert stream.next()["type"] == "WORKSPACE_HEARTBEAT"  # no ACTIVITY_LOGGED came between


# ----------------------------------------------------------------------------- registration


def register(fp: FakePlatform, ws: Workspace, **body: Any) -> requests.Response:
    payload = {"id": ws.id, "agent_card": {}, **body}
    return requests.post(
        f"{fp.url}/registry/register", json=payload, headers=auth(ws.token), timeout=T
    )


def test_august_register_accepts_a_loopback_address_and_keeps_a_local_url(
    aug: FakePlatform,
) -> None:
    ws = aug.add_workspace()
    assert register(aug, ws, url="http://127.0.0.1:7001", delivery_mode="push").ok
    assert ws.url == "http://127.0.0.1:7001"
    assert register(aug, ws, url="http://localhost:7002", delivery_mode="push").ok
    assert ws.url == "http://127.0.0.1:7001"  # a local URL off port 8000 is never replaced
    r = register(aug, ws, delivery_mode="poll")
    assert r.json()["delivery_mode"] == "poll" and ws.url == "http://127.0.0.1:7001"
    r = register(aug, ws, url="http://169.254.169.254/", delivery_mode="push")
    assert r.json() == {
        "error": "url targets a blocked address: link-local address (cloud metadata endpoint)"
    }
    other = aug.add_workspace()
    card = {"url": "http://169.254.169.254/latest"}
    r = register(aug, other, url="http://localhost:7003", delivery_mode="push", agent_card=card)
    assert (r.status_code, r.json()) == (400, {"error": "workspace agent_card URL not allowed"})


def test_may_register_refuses_a_loopback_address(may: FakePlatform) -> None:
    ws = may.add_workspace()
    r = register(may, ws, url="http://127.0.0.1:7001", delivery_mode="push")
    assert r.json() == {"error": "url targets a blocked address: loopback address"}


def test_august_register_while_paused_writes_nothing_but_is_announced(
    aug: FakePlatform, streams: list[Events]
) -> None:
    ws = aug.add_workspace(url="http://localhost:7001")
    aug.pause(ws.id)
    stream = listen(streams, aug, ws)
    r = register(aug, ws, url="http://localhost:8000", delivery_mode="poll")
    assert r.status_code == 200 and r.json()["delivery_mode"] == "poll"
    assert (ws.status, ws.url, ws.delivery_mode) == ("paused", "", "push")
    assert stream.next()["type"] == "WORKSPACE_ONLINE"


def test_august_register_names_an_unknown_workspace_by_its_id(aug: FakePlatform) -> None:
    new_id = "22222222-2222-2222-2222-222222222222"
    r = requests.post(
        f"{aug.url}/registry/register",
        json={"id": new_id, "delivery_mode": "poll", "agent_card": {}},
        timeout=T,
    )
    assert r.status_code == 200 and "auth_token" in r.json()
    ws = aug.workspace(new_id)
    assert (ws.name, ws.parent_id, ws.status) == (new_id, None, "online")


# ----------------------------------------------------------------------------- the router


def test_august_unknown_route_is_the_routers_plain_404(aug: FakePlatform) -> None:
    r = requests.get(f"{aug.url}/nope", timeout=T)
    assert (r.status_code, r.text, r.headers["Content-Type"]) == (
        404,
        "404 page not found",
        "text/plain",
    )
    assert aug.requests[-1].route == "unknown"
