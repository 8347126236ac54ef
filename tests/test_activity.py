"""Activity results: peer a2a_receive rows, the since_id cursor and its fallbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, read_lines, wait_until


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["delegation_id"] for line in read_lines(path)]


def test_peer_rows_become_results_as_in_the_reference(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    peer = platform.add_workspace(name="peer")
    row = platform.add_activity(ws.id, source_id=peer.id, text="the answer is 42", summary="s")
    platform.add_activity(ws.id, source_id=None, text="from the canvas")
    platform.add_activity(ws.id, source_id=ws.id, text="from myself")
    platform.add_activity(ws.id, source_id=peer.id, activity_type="a2a_send", text="not received")
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: len(read_lines(results)) >= 1)
        assert wait_until(lambda: hb.status().beats_ok >= 3)
    (line,) = read_lines(results)
    record = json.loads(line)
    assert record["delegation_id"] == row
    assert record["target_id"] == peer.id and record["source_id"] == ws.id
    assert record["status"] == "completed" and record["error"] == ""
    assert record["summary"] == "s" and record["response_preview"] == "the answer is 42"


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([{"kind": "text", "text": "a"}, {"type": "text", "text": "b"}], "a b"),
        (["not a dict", {"kind": "text", "text": "kept"}], "kept"),
        ([{"kind": "file", "text": "x"}, {"kind": "text", "text": ""}], "fallback summary"),
        ("parts is a string", "fallback summary"),
        ([{"kind": "text", "text": "x" * 5000}], "x" * 4096),
    ],
    ids=["kind-and-type", "non-dict-part", "no-text-part", "parts-not-a-list", "cut-at-4096"],
)
def test_text_comes_from_the_request_parts(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    parts: object,
    expected: str,
) -> None:
    peer = platform.add_workspace()
    body = {"method": "message/send", "params": {"message": {"role": "user", "parts": parts}}}
    platform.add_activity(ws.id, source_id=peer.id, request_body=body, summary="fallback summary")
    results = tmp_path / "results.jsonl"
    with make_hb():
        assert wait_until(lambda: len(read_lines(results)) == 1)
    assert json.loads(read_lines(results)[0])["response_preview"] == expected


def test_asks_with_since_id_and_delivers_in_order_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    peer = platform.add_workspace()
    first = [platform.add_activity(ws.id, source_id=peer.id, text=f"r{i}") for i in range(3)]
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: len(read_lines(results)) == 3)
        later = [platform.add_activity(ws.id, source_id=peer.id, text=f"l{i}") for i in range(2)]
        assert wait_until(lambda: len(read_lines(results)) == 5)
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 2)
    assert _ids(results) == first + later
    queries = [r.query for r in platform.requests_for("activity")]
    assert queries[0]["type"] == ["a2a_receive"] and queries[0]["source"] == ["agent"]
    assert "since_id" not in queries[0]
    cursor = (tmp_path / "cursor").read_text().split(",")
    # The wake-ups add self-sourced rows; the cursor moves past them too, in order.
    assert [i for i in cursor if i in first + later] == first + later
    # Every later poll starts after a known row (some way back: the overlap that catches
    # rows committed late, see test_exactly_once.py).
    assert all(q["since_id"][0] in cursor for q in queries[1:])


def test_a_restart_reads_on_from_a_row_never_from_a_message_key(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    # The cursor keeps the keys of the messages delivered beside their rows (a message logged
    # twice is delivered once); a restart starts its first page some way back in the cursor,
    # and that must be a row: the platform refuses a key (410, or 500 for an id that is no
    # UUID) and the loop would lose its place.
    peer = platform.add_workspace()
    rows = [platform.add_activity(ws.id, source_id=peer.id, text=f"r{i}") for i in range(30)]
    entries = [item for n, row in enumerate(rows) for item in (row, f"msg-{n:032x}")]
    (tmp_path / "cursor").write_text(",".join(entries))
    later = platform.add_activity(ws.id, source_id=peer.id, text="after the restart")
    results = tmp_path / "results.jsonl"
    with make_hb(self_message_cooldown=3600.0):
        assert wait_until(lambda: len(read_lines(results)) == 1)
    first = platform.requests_for("activity")[0]
    assert first.query["since_id"][0] in rows and first.status == 200
    assert _ids(results) == [later]


def test_cursor_unknown_to_the_server_falls_back_to_the_window(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    peer = platform.add_workspace()
    old = platform.add_activity(ws.id, source_id=peer.id, text="old")
    new = platform.add_activity(ws.id, source_id=peer.id, text="new")
    # The first poll starts some way back in the cursor: at the unknown id.
    (tmp_path / "cursor").write_text(f"00000000-0000-4000-8000-000000000000,{old}")
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: len(read_lines(results)) == 1)
        assert wait_until(lambda: hb.status().beats_ok >= 3)
    assert _ids(results) == [new]
    statuses = [r.status for r in platform.requests_for("activity")]
    assert statuses[0] == 410 and statuses[1] == 200
    assert statuses.count(410) == 1  # the cursor moved on to a row the server knows


def test_an_older_server_that_ignores_since_id(make_hb: HeartbeatFactory, tmp_path: Path) -> None:
    with FakePlatform(generation="APR") as old:
        ws = old.add_workspace()
        peer = old.add_workspace()
        first = [old.add_activity(ws.id, source_id=peer.id, text=f"a{i}") for i in range(3)]
        results = tmp_path / "results.jsonl"
        with make_hb(on=old, workspace_id=ws.id) as hb:
            assert wait_until(lambda: len(read_lines(results)) == 3)
            more = [old.add_activity(ws.id, source_id=peer.id, text=f"b{i}") for i in range(2)]
            assert wait_until(lambda: len(read_lines(results)) == 5)
            n = hb.status().beats_ok
            assert wait_until(lambda: hb.status().beats_ok >= n + 3)
    assert _ids(results) == first + more


def test_a_malformed_row_is_skipped_alone(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    peer = platform.add_workspace()
    good1 = platform.add_activity(ws.id, source_id=peer.id, text="one")
    for bad in (None, "x", 3, [], {"id": None}, {"id": 7, "source_id": peer.id}):
        platform.add_raw_activity_row(ws.id, bad)
    platform.add_raw_activity_row(
        ws.id,
        {
            "id": "raw-row",
            "source_id": peer.id,
            "request_body": {"params": {"message": {"parts": [None, 5, {"kind": "text"}]}}},
            "summary": None,
        },
    )
    good2 = platform.add_activity(ws.id, source_id=peer.id, text="two")
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: len(read_lines(results)) == 3)
        assert wait_until(lambda: hb.status().beats_ok >= 3)
    assert set(_ids(results)) == {good1, "raw-row", good2}
