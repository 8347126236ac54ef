"""The id logs (heartbeat_sync.delivery.idlog): order, bounds, persistence, merging writers."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heartbeat_sync.delivery.results import IdLog

from ._results import fresh_warning_counters, line, record, warnings_of  # noqa: F401

# --------------------------------------------------------------------------------------------
# IdLog
# --------------------------------------------------------------------------------------------


def test_idlog_keeps_insertion_order_and_newest(tmp_path: Path) -> None:
    log = IdLog(tmp_path / "ids", max_ids=10)
    assert len(log) == 0 and log.newest() is None and log.ids() == []
    assert log.add(["z", "a", "m"]) == ["z", "a", "m"]
    assert log.add(["a", "b", "b"]) == ["b"]
    assert log.ids() == ["z", "a", "m", "b"]
    assert log.newest() == "b"
    assert "a" in log and "q" not in log and 3 not in log and None not in log


def test_idlog_eviction_keeps_newest_by_insertion_not_sort_order(tmp_path: Path) -> None:
    log = IdLog(tmp_path / "ids", max_ids=3)
    log.add(["9", "1", "8"])
    log.add(["0", "7"])
    # Sorting would keep 7, 8, 9; insertion order keeps the three added last.
    assert log.ids() == ["8", "0", "7"]
    assert "9" not in log and "1" not in log


def test_idlog_long_batch_reports_every_new_id_even_if_evicted(tmp_path: Path) -> None:
    log = IdLog(tmp_path / "ids", max_ids=2)
    assert log.add(["a", "b", "c", "d"]) == ["a", "b", "c", "d"]
    assert log.ids() == ["c", "d"]


def test_idlog_persistence_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ids"
    log = IdLog(path, max_ids=5)
    log.add(["c", "a", "b"])
    log.save()
    assert path.read_bytes() == b"c,a,b"
    again = IdLog(str(path), max_ids=5)
    assert again.ids() == ["c", "a", "b"]
    assert again.path == str(path)


def test_idlog_file_longer_than_max_keeps_newest(tmp_path: Path) -> None:
    path = tmp_path / "ids"
    path.write_text("1,2,3,4,5")
    assert IdLog(path, max_ids=2).ids() == ["4", "5"]


def test_idlog_tolerates_whitespace_newline_and_empty_items(tmp_path: Path) -> None:
    path = tmp_path / "ids"
    path.write_text("  a,,b , c,\n")
    assert IdLog(path, max_ids=10).ids() == ["a", "b", "c"]


def test_idlog_missing_file_is_empty_and_not_created(tmp_path: Path) -> None:
    log = IdLog(tmp_path / "ids", max_ids=10)
    assert log.ids() == []
    log.save()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00garbage", []),  # not UTF-8: nothing trustworthy
        (b"a,b c,d", ["a", "d"]),  # a malformed item is dropped, the rest kept
    ],
)
def test_idlog_corrupt_file_tolerated_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, expected: list[str]
) -> None:
    path = tmp_path / "ids"
    path.write_bytes(content)
    log = IdLog(path, max_ids=10)
    with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
        assert log.ids() == expected
        log.reload()
        log.reload()
    assert len(warnings_of(caplog)) == 1
    log.add(["new"])
    log.save()
    assert path.read_text().split(",") == [*expected, "new"]


def test_idlog_unreadable_path_is_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "ids").mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
        assert IdLog(tmp_path / "ids", max_ids=3).ids() == []
    assert warnings_of(caplog)


@pytest.mark.parametrize(
    "bad", ["a,b", "a b", "tab\there", "nl\n", "", " ", "\u2003em-space", ",", 7, None]
)
def test_idlog_rejects_ids_that_would_corrupt_the_format(tmp_path: Path, bad: Any) -> None:
    log = IdLog(tmp_path / "ids", max_ids=10)
    assert log.add(["ok1", bad, "ok2"]) == ["ok1", "ok2"]
    log.save()
    assert IdLog(tmp_path / "ids", max_ids=10).ids() == ["ok1", "ok2"]


def test_idlog_bare_string_is_one_id(tmp_path: Path) -> None:
    log = IdLog(tmp_path / "ids", max_ids=10)
    assert log.add("abc") == ["abc"]
    assert log.ids() == ["abc"]


def test_idlog_rejects_nonpositive_max(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_ids"):
        IdLog(tmp_path / "ids", max_ids=0)


def test_idlog_save_only_when_dirty(tmp_path: Path) -> None:
    path = tmp_path / "ids"
    log = IdLog(path, max_ids=10)
    log.add(["a"])
    log.save()
    inode = path.stat().st_ino
    log.save()  # nothing new
    log.add(["a"])  # already present: not dirty
    log.save()
    assert path.stat().st_ino == inode  # an atomic replace would give a new inode
    log.add(["b"])
    log.save()
    assert path.stat().st_ino != inode
    assert path.read_text() == "a,b"


def test_idlog_save_failure_is_logged_not_raised_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a file where the directory should be
    path = blocker / "ids"
    log = IdLog(path, max_ids=10)
    log.add(["a"])
    with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
        log.save()
    assert any("could not save" in m for m in warnings_of(caplog))
    blocker.unlink()
    blocker.mkdir()
    log.save()  # still dirty, so this retries
    assert path.read_text() == "a"


def test_idlog_reload_keeps_unsaved_additions_pending(tmp_path: Path) -> None:
    """A re-read after a failed save must not forget the ids it could not write."""
    log = IdLog(tmp_path / "ids", max_ids=10)
    log.add(["a"])
    log.save()
    log.add(["b"])
    (tmp_path / "ids").write_text("a,x")  # another writer added x meanwhile
    log.reload()
    assert log.ids() == ["a", "x", "b"] and log.dirty
    log.save()
    assert (tmp_path / "ids").read_text() == "a,x,b" and not log.dirty


def test_idlog_leaves_lock_and_no_temp_file(tmp_path: Path) -> None:
    log = IdLog(tmp_path / "ids", max_ids=10)
    log.add(["a"])
    log.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids", "ids.lock"]


_id_strategy = st.text(alphabet="abc012,_ \n", min_size=0, max_size=3)
_op_strategy: st.SearchStrategy[tuple[str, list[str]]] = st.one_of(
    st.tuples(st.just("add"), st.lists(_id_strategy, max_size=8)),
    st.tuples(st.just("save"), st.just([])),
    st.tuples(st.just("reload"), st.just([])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_ids=st.integers(1, 6), ops=st.lists(_op_strategy, max_size=25))
def test_idlog_property_any_sequence_keeps_invariants(
    max_ids: int, ops: list[tuple[str, list[str]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ids")
        log = IdLog(path, max_ids)
        memory: list[str] = []  # the model: an ordered list, newest last
        saved: list[str] = []
        pending: list[str] = []  # added, not yet written: a save or reload merges them in

        def merged() -> list[str]:
            return list(dict.fromkeys(saved + pending))[-max_ids:]

        for op, ids in ops:
            if op == "add":
                expected_new: list[str] = []
                for i in ids:
                    valid = i and "," not in i and not any(c.isspace() for c in i)
                    if valid and i not in memory:
                        memory.append(i)
                        pending.append(i)
                        expected_new.append(i)
                memory = memory[-max_ids:]
                pending = [i for i in pending if i in memory]
                assert log.add(ids) == expected_new
            elif op == "save":
                log.save()
                if pending:
                    saved = merged()
                    memory = list(saved)
                    pending = []
            else:
                log.reload()
                memory = merged()
                pending = [i for i in pending if i in memory]
            assert log.ids() == memory
            assert len(log) == len(set(log.ids())) <= max_ids
            assert log.newest() == (memory[-1] if memory else None)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                assert (text.split(",") if text else []) == saved


def test_ids_on_disk_sees_another_writers_ids_and_our_pending_ones(tmp_path: Path) -> None:
    """What a delivery decides against: the file now, not this object's memory."""
    ours = IdLog(tmp_path / "seen", max_ids=10)
    ours.add(["mine"])
    IdLog(tmp_path / "seen", max_ids=10).record(["theirs"])
    assert ours.ids_on_disk() == {"theirs", "mine"}
    assert "theirs" in ours and ours.dirty  # memory refreshed; "mine" still to be written


def test_record_merges_writes_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "seen"
    path.write_text("a")
    log = IdLog(path, max_ids=10)
    log.add(["b"])
    log.record(["c"])
    assert path.read_text() == "a,b,c" and not log.dirty
    log.record(["c", "a"])
    assert path.read_text() == "a,b,c"


def test_record_raises_and_keeps_the_ids_pending(tmp_path: Path) -> None:
    """Unlike save(), record() tells its caller (the journal keeps the ids then)."""
    log = IdLog(tmp_path / "seen", max_ids=10)
    (tmp_path / "seen.tmp").mkdir()  # the temp name is taken: the write fails
    with pytest.raises(OSError):
        log.record(["d1"])
    assert "d1" in log and log.dirty
    (tmp_path / "seen.tmp").rmdir()
    log.save()
    assert (tmp_path / "seen").read_text() == "d1"
