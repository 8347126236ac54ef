"""Delegation results: which rows become results, once ever, across restarts."""

from __future__ import annotations

import json
from pathlib import Path

from heartbeat_sync import read_delegation_results
from heartbeat_sync._settings import MIN_SEEN_IDS
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, read_lines, wait_for_beats, wait_until


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in read_lines(path)]


def test_completed_and_failed_rows_become_results(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    peer = platform.add_workspace(name="peer")
    done = platform.add_delegation(
        ws.id, target_id=peer.id, status="completed", summary="sum", response_preview="42"
    )
    failed = platform.add_delegation(ws.id, target_id=peer.id, status="failed", error="boom")
    platform.add_delegation(ws.id, target_id=peer.id, status="in_progress")
    platform.add_delegation(ws.id, target_id=peer.id, status="queued")
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: len(read_lines(results)) >= 2)
        assert wait_until(lambda: hb.status().beats_ok >= 3)
    records = {r["delegation_id"]: r for r in _records(results)}
    assert set(records) == {done, failed}
    rec = records[done]
    assert set(rec) == {
        "delegation_id",
        "target_id",
        "source_id",
        "status",
        "summary",
        "response_preview",
        "error",
        "timestamp",
    }
    assert rec["target_id"] == peer.id and rec["source_id"] == ws.id
    assert rec["status"] == "completed" and rec["summary"] == "sum"
    assert rec["response_preview"] == "42" and rec["error"] == ""
    assert isinstance(rec["timestamp"], float)
    assert records[failed]["status"] == "failed" and records[failed]["error"] == "boom"
    assert hb.status().results_delivered == 2


def test_a_delegation_turning_completed_is_delivered_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    did = platform.add_delegation(ws.id, status="dispatched")
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2)
        assert read_lines(results) == []
        platform.set_delegation(ws.id, did, status="completed", response_preview="done")
        assert wait_until(lambda: len(read_lines(results)) == 1)
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 3)
    assert [r["delegation_id"] for r in _records(results)] == [did]


def test_rows_from_another_source_are_skipped_with_one_warning(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path, logs
) -> None:
    other = platform.add_workspace(name="other")
    foreign = platform.add_delegation(ws.id, source_id=other.id, status="completed")
    mine = platform.add_delegation(ws.id, status="completed")
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 4)
    assert [r["delegation_id"] for r in _records(tmp_path / "results.jsonl")] == [mine]
    warnings = [m for m in logs.messages(30) if foreign in m]
    assert len(warnings) == 1 and "source_id" in warnings[0]


def test_a_restart_redelivers_nothing(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    ids = [platform.add_delegation(ws.id, status="completed") for _ in range(5)]
    results = tmp_path / "results.jsonl"
    with make_hb():
        assert wait_until(lambda: len(read_lines(results)) == 5)
    consumed = read_delegation_results(results)
    assert sorted(r["delegation_id"] for r in consumed) == sorted(ids)
    seen = (tmp_path / "seen").read_text().split(",")
    assert sorted(seen) == sorted(ids)
    late = platform.add_delegation(ws.id, status="completed")
    with make_hb() as again:
        assert wait_until(lambda: len(read_lines(results)) == 1)
        assert wait_until(lambda: again.status().beats_ok >= 3)
    assert [r["delegation_id"] for r in _records(results)] == [late]


def test_seen_ids_are_bounded_newest_kept_in_insertion_order(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    results = tmp_path / "results.jsonl"
    delivered: list[str] = []
    with make_hb(max_seen_ids=MIN_SEEN_IDS) as hb:
        for size in (20, 40, 40, 20):
            batch = [platform.add_delegation(ws.id, status="completed") for _ in range(size)]
            delivered += batch
            want = len(delivered)
            assert wait_until(lambda want=want: len(read_lines(results)) == want)
        assert wait_until(lambda: hb.status().beats_ok >= 2)
    seen = (tmp_path / "seen").read_text().split(",")
    assert len(seen) == MIN_SEEN_IDS == 100
    # 120 delivered: the first batch (20) is evicted, the batches stay in order.
    assert set(seen) == set(delivered[20:])
    assert set(seen[:40]) == set(delivered[20:60])


def test_bad_rows_cost_no_good_row(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    for bad in (None, 7, "row", [], {"delegation_id": 5, "status": "completed"}, {"status": 1}):
        platform.add_raw_delegation_row(ws.id, bad)
    good = platform.add_delegation(ws.id, status="completed", summary={"not": "a string"})  # type: ignore[arg-type]
    platform.add_raw_delegation_row(
        ws.id,
        {"delegation_id": "x,y", "status": "completed", "source_id": ws.id},
    )
    with make_hb() as hb:
        assert wait_until(lambda: len(read_lines(tmp_path / "results.jsonl")) == 1)
        assert wait_until(lambda: hb.status().beats_ok >= 3)
    (record,) = _records(tmp_path / "results.jsonl")
    assert record["delegation_id"] == good
    assert record["summary"] == ""


def test_a_consumer_holding_the_lock_delays_delivery_not_beats(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    import filelock

    results = tmp_path / "results.jsonl"
    interval = 0.1
    with make_hb(interval_seconds=interval) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        with filelock.FileLock(str(results) + ".lock"):
            did = platform.add_delegation(ws.id, status="completed")
            # Eight beats while the lock is held: a beat thread that waited for it would send
            # none of them before the block ends.
            assert wait_for_beats(platform, 8, timeout=10)
            assert read_lines(results) == []
        assert wait_until(lambda: len(read_lines(results)) == 1, timeout=5)
        m = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= m + 3)
    assert [r["delegation_id"] for r in _records(results)] == [did]
