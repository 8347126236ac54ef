"""Pure parts: rows into results (_rows), the beat body and texts (_texts); tables, properties."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heartbeat_sync.delivery import rows as _rows
from heartbeat_sync.effects import texts as _texts
from heartbeat_sync.wire.body import parse_json
from heartbeat_sync.wire.client import generation, inbound_secret, self_message_body

WS = "11111111-1111-4111-8111-111111111111"
PEER = "22222222-2222-4222-8222-222222222222"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)
# Rows that look like the real thing, with any field replaced by anything.
row_keys = st.sampled_from(
    [
        "id",
        "delegation_id",
        "status",
        "source_id",
        "target_id",
        "summary",
        "request_body",
        "response_preview",
        "error",
        "created_at",
    ]
)
near_rows = st.dictionaries(
    row_keys,
    json_values | st.sampled_from([WS, PEER, "completed", "failed", "a-b-c"]),
    max_size=10,
)


def test_beat_body_table() -> None:
    body = _texts.build_beat_body(
        WS, error_rate=0.25, sample_error="e", active_tasks=3, current_task="t", uptime_seconds=9.9
    )
    assert body == {
        "workspace_id": WS,
        "error_rate": 0.25,
        "sample_error": "e",
        "active_tasks": 3,
        "current_task": "t",
        "uptime_seconds": 9,
    }
    wedged = _texts.build_beat_body(
        WS,
        error_rate=0.0,
        sample_error="e",
        active_tasks=0,
        current_task="",
        uptime_seconds=0,
        wedge_reason="stuck",
        runtime_metadata={"capabilities": {}},
    )
    assert wedged["runtime_state"] == "wedged" and wedged["sample_error"] == "stuck"
    assert wedged["runtime_metadata"] == {"capabilities": {}}
    json.dumps(wedged)


def test_beat_body_carries_is_busy_and_the_observed_generation_when_given() -> None:
    common: dict[str, Any] = {
        "error_rate": 0.0,
        "sample_error": "",
        "active_tasks": 0,
        "current_task": "",
        "uptime_seconds": 1,
    }
    body = _texts.build_beat_body(WS, **common, is_busy=True, observed_generation=7)
    assert body["is_busy"] is True and body["observed_generation"] == 7
    assert "is_busy" not in _texts.build_beat_body(WS, **common)
    assert "observed_generation" not in _texts.build_beat_body(WS, **common, is_busy=False)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "ok", "generation": 0}, 0),
        ({"generation": 3}, 3),
        ({"generation": (1 << 63) - 1}, (1 << 63) - 1),
        ({"generation": 1 << 63}, None),  # beyond what the platform stores
        ({"generation": -1}, None),
        ({"generation": True}, None),  # a bool is no generation
        ({"generation": 1.0}, None),
        ({"generation": "2"}, None),
        ({"generation": None}, None),
        ({"status": "ok"}, None),  # the May server sends none
        ([1], None),
    ],
)
def test_generation_is_read_only_when_it_is_an_integer(body: Any, expected: int | None) -> None:
    assert generation(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "ok", "platform_inbound_secret": "s3cret"}, "s3cret"),
        ({"status": "ok"}, None),
        ({"platform_inbound_secret": ""}, None),
        ({"platform_inbound_secret": 5}, None),
        (["platform_inbound_secret"], None),
        (None, None),
    ],
)
def test_inbound_secret(body: Any, expected: str | None) -> None:
    assert inbound_secret(body) == expected


def _delegation(**kw: Any) -> dict[str, Any]:
    row = {"delegation_id": "d1", "status": "completed", "source_id": WS, "target_id": PEER}
    row.update(kw)
    return row


@pytest.mark.parametrize(
    ("row", "delivered"),
    [
        (_delegation(), True),
        (_delegation(status="failed"), True),
        (_delegation(status="pending"), False),
        (_delegation(status="stuck"), False),
        (_delegation(delegation_id=""), False),
        (_delegation(source_id=PEER), False),
        (_delegation(source_id=None), False),
        (_delegation(summary=None, response_preview=7, error=["x"]), True),
    ],
)
def test_delegation_rows(row: dict[str, Any], delivered: bool) -> None:
    parsed = _rows.delegation_results([row], WS, set(), 1.0)
    assert bool(parsed.results) is delivered
    if delivered:
        rec = parsed.results[0].record
        assert all(isinstance(rec[k], str) for k in ("summary", "response_preview", "error"))


def test_delegation_seen_and_duplicates_in_one_response() -> None:
    rows = [
        _delegation(delegation_id="a"),
        _delegation(delegation_id="a"),
        _delegation(delegation_id="b"),
    ]
    parsed = _rows.delegation_results(rows, WS, {"b"}, 1.0)
    assert [r.id for r in parsed.results] == ["a"]
    assert parsed.ids == ["a"]


def test_a_delegation_this_workspace_received_is_never_its_result() -> None:
    # The August platform lists a delegation to this workspace beside its own, marked
    # "received", with the caller as source: skipped quietly, not warned about as foreign.
    sent = {"delegation_id": "d-1", "status": "completed", "source_id": WS, "direction": "sent"}
    got = {
        "delegation_id": "d-2",
        "status": "completed",
        "source_id": PEER,
        "direction": "received",
    }
    mine = {"delegation_id": "d-3", "status": "completed", "source_id": WS, "direction": "received"}
    parsed = _rows.delegation_results([sent, got, mine], WS, set(), 0.0)
    assert [r.id for r in parsed.results] == ["d-1"]
    assert parsed.foreign == [] and parsed.malformed == 0


def test_foreign_rows_are_listed_for_a_warning() -> None:
    parsed = _rows.delegation_results([_delegation(source_id=PEER)], WS, set(), 1.0)
    assert parsed.foreign == [("d1", PEER)]


def _peer_message(row_id: str, message_id: str, summary: str, source: str = PEER) -> Any:
    return {
        "id": row_id,
        "source_id": source,
        "summary": summary,
        "request_body": {
            "params": {
                "message": {"messageId": message_id, "parts": [{"kind": "text", "text": "hi"}]}
            }
        },
    }


def test_a_message_logged_twice_behind_a_busy_agent_is_one_result() -> None:
    # The August platform writes an (ingest) row and a (queued: target busy) row with the
    # same request for a message it queued: one result, both rows past the cursor.
    rows = [
        _peer_message("r-1", "m-1", "message/send → me (ingest)"),
        _peer_message("r-2", "m-1", "message/send → me (queued: target busy)"),
        _peer_message("r-3", "m-1", "another sender's", source="33333333-3333-4333-8333-333333"),
    ]
    parsed = _rows.activity_results(rows, WS, set(), 0.0)
    assert [r.id for r in parsed.results] == ["r-1", "r-3"]
    key = _rows.message_key(rows[0])
    assert key is not None and key == _rows.message_key(rows[1]) != _rows.message_key(rows[2])
    assert parsed.ids[:3] == ["r-1", key, "r-2"] and parsed.aliases["r-1"] == key
    assert all(_rows.valid_id(i) for i in parsed.ids)
    # The second row of a later page (or poll) finds the key among what was delivered.
    later = _rows.activity_results([rows[1]], WS, {"r-1", key}, 0.0)
    assert later.results == [] and later.ids == ["r-2"]


def test_a_row_without_a_message_id_has_no_message_key() -> None:
    assert _rows.message_key({"request_body": {"params": {"message": {}}}}) is None
    assert _rows.message_key({"request_body": "x"}) is None
    assert _rows.message_key(_peer_message("r", "m" * 2000, "long")) is None


def test_activity_rows() -> None:
    rows = [
        {"id": "a1", "source_id": PEER, "summary": "s"},
        {"id": "a2", "source_id": WS},
        {"id": "a3", "source_id": None},
        {"id": "a1", "source_id": PEER},
        "junk",
        {"id": "a,4", "source_id": PEER},
    ]
    parsed = _rows.activity_results(rows, WS, set(), 2.0)
    assert [r.id for r in parsed.results] == ["a1"]
    assert parsed.ids == ["a1", "a2", "a3"]
    assert parsed.malformed == 2
    rec = parsed.results[0].record
    assert rec == {
        "delegation_id": "a1",
        "target_id": PEER,
        "source_id": WS,
        "status": "completed",
        "summary": "s",
        "response_preview": "s",
        "error": "",
        "timestamp": 2.0,
    }


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"created_at": "2026-01-02T00:00:00Z"}, {"created_at": "2026-01-01T00:00:00Z"}], True),
        ([{"created_at": "2026-01-01T00:00:00Z"}, {"created_at": "2026-01-02T00:00:00Z"}], False),
        ([{"created_at": "2026-01-01T00:00:00Z"}], False),
        ([{}, None, {"created_at": 5}], False),
    ],
)
def test_newest_first(rows: list[Any], expected: bool) -> None:
    assert _rows.newest_first(rows) is expected


def test_trigger_text_caps_the_list() -> None:
    results = [
        _rows.Result(
            {"delegation_id": f"id{i}", "status": "completed", "summary": "x" * 100, "error": ""},
            _rows.ORIGIN_DELEGATION,
        )
        for i in range(_texts.TRIGGER_MAX_LINES + 5)
    ]
    text = _texts.trigger_text(results, "")
    assert text.count("\n- [completed]") == _texts.TRIGGER_MAX_LINES
    assert "and 5 more in the results file" in text
    assert "- [completed] Delegation id0: " + "x" * 80 + "\n" in text


def test_notify_and_self_message_shapes() -> None:
    r = _rows.Result(
        {
            "delegation_id": "d",
            "status": "failed",
            "summary": "s",
            "response_preview": "",
            "error": "e",
        },
        _rows.ORIGIN_DELEGATION,
    )
    assert _texts.notify_text(r) == "Delegation failed: s"
    body = self_message_body("hi", "mid")
    assert body["params"]["message"] == {
        "role": "user",
        "messageId": "mid",
        "parts": [{"kind": "text", "text": "hi"}],
    }
    # The platform's own marker: the canvas files it as a notice, without the text prefix.
    assert body["params"]["metadata"] == {"source_type": "self-delegation-result"}


@settings(max_examples=100, deadline=None)
@given(st.lists(json_values | near_rows, max_size=8))
def test_any_delegations_json_is_parsed_without_exceptions(rows: list[Any]) -> None:
    parsed = _rows.delegation_results(rows, WS, set(), 0.0)
    ids = [r.id for r in parsed.results]
    assert len(ids) == len(set(ids))
    for r in parsed.results:
        json.dumps(r.record)
        assert r.record["source_id"] == WS and r.record["status"] in _rows.FINAL_STATUSES
        _texts.notify_text(r)
    _texts.trigger_text(parsed.results, "p")


@settings(max_examples=100, deadline=None)
@given(st.lists(json_values | near_rows, max_size=8))
def test_any_activity_json_is_parsed_without_exceptions(rows: list[Any]) -> None:
    parsed = _rows.activity_results(rows, WS, set(), 0.0)
    assert len(parsed.ids) == len(set(parsed.ids))
    for r in parsed.results:
        json.dumps(r.record)
        assert r.record["target_id"] not in ("", WS)
        assert len(r.record["response_preview"]) <= _rows.PREVIEW_LIMIT
    _rows.newest_first(rows)
    _texts.trigger_text(parsed.results, "")


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_anywhere_a_body_is_read(value: Any) -> None:
    inbound_secret(value)
    _rows.message_text(value)
    _rows.message_text({"params": {"message": {"parts": value}}})
    _rows.newest_first(value if isinstance(value, list) else [value])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_to_json_or_none(data: bytes) -> None:
    parse_json(data)


def test_deeply_nested_json_is_refused_not_raised() -> None:
    assert parse_json(b"[" * 100_000 + b"]" * 100_000) is None
