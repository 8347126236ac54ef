"""The results file and the public reader (heartbeat_sync.delivery.results), in one process."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import filelock
import pytest

from heartbeat_sync import _config
from heartbeat_sync.delivery import results as _files
from heartbeat_sync.delivery.results import IdLog, ResultsFile, read_delegation_results

from ._results import fresh_warning_counters, line, record, warnings_of  # noqa: F401

# --------------------------------------------------------------------------------------------
# ResultsFile
# --------------------------------------------------------------------------------------------


def test_deliver_then_consume_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path)
    batch = [record("d1"), record("d2", status="failed", error="boom")]
    results.deliver(batch)
    results.deliver([record("d3")])
    assert path.read_bytes() == b"".join(line(r) for r in [*batch, record("d3")])
    assert results.consume() == [*batch, record("d3")]
    # Emptied in place: the file (and its lock file) stay, nothing else is left behind.
    assert path.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl", "results.jsonl.lock"]
    assert results.consume() == []


def test_lines_are_json_dumps_without_ascii_escaping(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    rec = record("d1", summary="héllo ✓", response_preview="line\u2028sep\u0085x\nnl")
    results.deliver([rec])
    raw = (tmp_path / "r.jsonl").read_bytes()
    assert raw == (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
    assert raw.count(b"\n") == 1
    assert results.consume() == [rec]


def test_lone_surrogate_survives_the_round_trip(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    rec = record("d1", response_preview="bad \ud800 text \\ud801")
    results.deliver([rec])
    assert results.consume() == [rec]


def test_unencodable_value_is_stringified(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    results.deliver([record("d1", timestamp=b"bytes")])
    assert results.consume()[0]["timestamp"] == "b'bytes'"


def test_deliver_updates_id_logs_on_disk_and_in_memory(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    seen = IdLog(tmp_path / "seen", max_ids=10)
    cursor = IdLog(tmp_path / "cursor", max_ids=10)
    seen.add(["old"])
    seen.save()
    results.deliver([record("d1"), record("d2")], [(seen, ["d1", "d2"]), (cursor, ["a1"])])
    assert seen.ids() == ["old", "d1", "d2"]
    assert cursor.ids() == ["a1"]
    assert (tmp_path / "seen").read_text() == "old,d1,d2"
    assert (tmp_path / "cursor").read_text() == "a1"
    assert not seen.dirty and not cursor.dirty
    assert not (tmp_path / "r.jsonl.journal").exists()


def test_deliver_writes_the_callers_pending_ids_too(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    cursor = IdLog(tmp_path / "cursor", max_ids=10)
    cursor.add(["skipped-row"])  # not saved yet
    results.deliver([record("d1")], [(cursor, ["d1"])])
    assert cursor.ids() == ["skipped-row", "d1"] and not cursor.dirty
    assert (tmp_path / "cursor").read_text() == "skipped-row,d1"


def test_a_record_whose_alias_another_writer_recorded_is_not_appended(tmp_path: Path) -> None:
    # Two writers of one workspace's files: each saw one of the two rows the platform wrote for
    # one message (their ids differ, the message key is the same). The decision is taken on
    # disk, under the lock: the second is left out.
    first = ResultsFile(tmp_path / "r.jsonl")
    second = ResultsFile(tmp_path / "r.jsonl")
    cursor_a = IdLog(tmp_path / "cursor", max_ids=10, name="cursor")
    cursor_b = IdLog(tmp_path / "cursor", max_ids=10, name="cursor")
    assert first.deliver([record("r-1")], [(cursor_a, ["r-1", "msg-k"])], {"r-1": "msg-k"})
    assert second.deliver([record("r-2")], [(cursor_b, ["r-2", "msg-k"])], {"r-2": "msg-k"}) == []
    assert [r["delegation_id"] for r in first.peek()] == ["r-1"]
    assert (tmp_path / "cursor").read_text() == "r-1,msg-k,r-2"


def test_deliver_ids_only(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    cursor = IdLog(tmp_path / "cursor", max_ids=10)
    results.deliver([], [(cursor, ["a", "b"])])
    assert (tmp_path / "cursor").read_text() == "a,b"
    assert results.peek() == []


def test_deliver_nothing_touches_nothing(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    results.deliver([], [(IdLog(tmp_path / "seen", 5), [])])
    assert list(tmp_path.iterdir()) == []


def test_torn_tail_is_cut_before_append(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.jsonl"
    torn = b'{"delegation_id": "torn", "sta'
    path.write_bytes(line(record("d0")) + torn)
    with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
        ResultsFile(path).deliver([record("d1")])
    raw = path.read_bytes()
    assert raw == line(record("d0")) + line(record("d1"))
    assert [json.loads(x) for x in raw.splitlines()] == [record("d0"), record("d1")]
    assert any(f"torn tail of {len(torn)} bytes" in m for m in warnings_of(caplog))


def test_torn_tail_without_any_newline_is_cut_to_zero(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"x" * 200_000)  # longer than one backwards-scan chunk
    ResultsFile(path).recover()
    assert path.read_bytes() == b""


def test_torn_tail_far_from_last_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(line(record("d0")) + b"y" * 150_000)
    ResultsFile(path).recover()
    assert path.read_bytes() == line(record("d0"))


def test_consume_skips_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        line(record("d1"))
        + b"not json\n"
        + b"[1, 2]\n"
        + b"\n"
        + b"   \n"
        + b'"a string"\n'
        + b"\xff\xfe{}\n"
        + b"[" * 100_000
        + b"\n"
        + line(record("d2"))
        + b'{"delegation_id": "torn"'
    )
    with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
        assert ResultsFile(path).consume() == [record("d1"), record("d2")]
    assert path.read_bytes() == b""
    # torn tail + 5 bad lines = 6 problems of two kinds; the line kind is cut to 3 + none
    warnings = warnings_of(caplog)
    assert sum("torn tail" in m for m in warnings) == 1
    assert sum("results line" in m for m in warnings) == 3


def test_parse_lines_skips_a_torn_last_line() -> None:
    raw = line(record("d1")) + b'{"delegation_id": "d2", "st'
    assert _files._parse_lines(raw) == [record("d1")]


def test_peek_does_not_remove(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    results.deliver([record("d1")])
    assert results.peek() == [record("d1")]
    assert results.peek() == [record("d1")]
    assert results.consume() == [record("d1")]
    assert results.peek() == []


def test_missing_file_reads_empty_without_creating_anything(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    assert results.consume() == []
    assert results.peek() == []
    results.recover()
    assert list(tmp_path.iterdir()) == []


def test_lock_is_shared_and_left_on_disk(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    assert results.lock.lock_file == str(tmp_path / "r.jsonl.lock")
    results.deliver([record("d1")])
    assert (tmp_path / "r.jsonl.lock").exists()


# --------------------------------------------------------------------------------------------
# read_delegation_results
# --------------------------------------------------------------------------------------------


def test_read_honours_env_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ResultsFile(first).deliver([record("a")])
    ResultsFile(second).deliver([record("b")])
    monkeypatch.setenv("DELEGATION_RESULTS_FILE", str(first))
    assert read_delegation_results() == [record("a")]
    monkeypatch.setenv("DELEGATION_RESULTS_FILE", str(second))
    assert read_delegation_results() == [record("b")]
    assert read_delegation_results() == []


def test_read_path_argument_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ResultsFile(tmp_path / "mine.jsonl").deliver([record("m")])
    monkeypatch.setenv("DELEGATION_RESULTS_FILE", str(tmp_path / "other.jsonl"))
    assert read_delegation_results(str(tmp_path / "mine.jsonl")) == [record("m")]


def test_read_default_path_when_env_unset_or_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "default.jsonl"
    monkeypatch.setattr(_config, "DEFAULT_RESULTS_FILE", str(default))
    ResultsFile(default).deliver([record("x")])
    monkeypatch.setenv("DELEGATION_RESULTS_FILE", "")
    assert read_delegation_results() == [record("x")]
    monkeypatch.delenv("DELEGATION_RESULTS_FILE")
    ResultsFile(default).deliver([record("y")])
    assert read_delegation_results() == [record("y")]


def test_read_missing_file(tmp_path: Path) -> None:
    assert read_delegation_results(tmp_path / "nope.jsonl") == []
    assert read_delegation_results(tmp_path / "no-dir" / "nope.jsonl") == []


def test_read_io_error_logs_and_keeps_nothing_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
        assert read_delegation_results(tmp_path / "dir.jsonl") == []
    assert any("could not read delegation results" in m for m in warnings_of(caplog))


def test_read_gives_up_on_a_held_lock_and_leaves_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.jsonl"
    ResultsFile(path).deliver([record("d1")])
    monkeypatch.setattr(_files, "DEFAULT_LOCK_TIMEOUT", 0.2)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with filelock.FileLock(str(path) + ".lock"):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(5)
        assert read_delegation_results(path) == []
    finally:
        release.set()
        holder.join()
    assert read_delegation_results(path) == [record("d1")]


@pytest.mark.timeout(60)
def test_threads_sharing_one_results_file_object_exclude_each_other(tmp_path: Path) -> None:
    # One ResultsFile shared by two writer threads and a consumer thread: its lock must be
    # held per thread (filelock before 3.11 shared it, and records were lost or doubled).
    results = ResultsFile(tmp_path / "r.jsonl")
    per_writer = 300
    got: list[dict[str, object]] = []
    done = threading.Event()

    def writer(tag: str) -> None:
        for i in range(per_writer):
            results.deliver([record(f"{tag}-{i}")])

    def consumer() -> None:
        while not done.is_set():
            got.extend(results.consume())

    writers = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    reader = threading.Thread(target=consumer)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    got.extend(results.consume())
    ids = [r["delegation_id"] for r in got]
    assert sorted(ids) == sorted(f"{tag}-{i}" for tag in "ab" for i in range(per_writer))
