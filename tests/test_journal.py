"""The delivery journal (heartbeat_sync.delivery.journal): a delivery interrupted at any step is
finished exactly once, by a writer or by the reader."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import _safefile
from heartbeat_sync.delivery import journal as _journal
from heartbeat_sync.delivery.results import IdLog, ResultsFile, read_delegation_results

from ._results import fresh_warning_counters, line, record, warnings_of  # noqa: F401


def _jbytes(offset: int | None, data: bytes, ids: dict[str, list[str]]) -> bytes:
    obj = {"version": 2, "offset": offset, "data": data.decode("utf-8"), "ids": ids}
    return json.dumps(obj).encode()


def _writer(path: Path, *names: str) -> ResultsFile:
    """The results file as a writer sees it: with its id logs next to it."""
    return ResultsFile(path, id_logs=[IdLog(path.parent / n, max_ids=10) for n in names])


def test_recover_completes_a_half_written_delivery(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    seen_path = tmp_path / "seen"
    seen_path.write_text("d0")
    head = line(record("d0"))
    data = line(record("d1")) + line(record("d2"))
    # The crash: journal written, half of the data appended, id log not yet updated.
    path.write_bytes(head + data[: len(data) // 2])
    Path(str(path) + ".journal").write_bytes(_jbytes(len(head), data, {"seen": ["d1", "d2"]}))
    _writer(path, "seen").recover()
    assert path.read_bytes() == head + data
    assert seen_path.read_text() == "d0,d1,d2"
    assert not Path(str(path) + ".journal").exists()
    _writer(path, "seen").recover()  # idempotent
    assert path.read_bytes() == head + data


def test_recover_when_data_written_but_journal_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    seen_path = tmp_path / "seen"
    head = line(record("d0"))
    data = line(record("d1"))
    path.write_bytes(head + data)  # every byte landed
    seen_path.write_text("d1")  # and even the id log was updated
    Path(str(path) + ".journal").write_bytes(_jbytes(len(head), data, {"seen": ["d1"]}))
    assert _writer(path, "seen").consume() == [record("d0"), record("d1")]
    assert seen_path.read_text() == "d1"
    assert not Path(str(path) + ".journal").exists()


def test_recover_before_any_byte_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"  # the file does not even exist yet
    data = line(record("d1"))
    Path(str(path) + ".journal").write_bytes(_jbytes(0, data, {}))
    assert ResultsFile(path).consume() == [record("d1")]


def test_recover_discards_a_damaged_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(line(record("d0")))
    for damage in (b"{not json", b"[]", b'{"offset": -1, "data": "", "ids": []}'):
        Path(str(path) + ".journal").write_bytes(damage)
        with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
            ResultsFile(path).recover()
        assert not Path(str(path) + ".journal").exists()
        assert path.read_bytes() == line(record("d0"))
    assert sum("unreadable delivery journal" in m for m in warnings_of(caplog)) == 3


def test_stale_journal_after_outside_truncation_does_not_pad(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    seen_path = tmp_path / "seen"
    path.write_bytes(b"")
    Path(str(path) + ".journal").write_bytes(_jbytes(500, line(record("d1")), {"seen": ["d1"]}))
    _writer(path, "seen").recover()
    assert path.read_bytes() == b""  # no NUL padding, no re-append
    assert seen_path.read_text() == "d1"


def test_restarted_writer_does_not_redeliver_what_a_journal_delivered(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    seen_path = tmp_path / "seen"
    data = line(record("d1")) + line(record("d2"))
    Path(str(path) + ".journal").write_bytes(_jbytes(0, data, {"seen": ["d1", "d2"]}))
    # The restarted writer read its seen file before anyone recovered, so it picks d1, d2 again.
    seen = IdLog(seen_path, max_ids=10)
    assert "d1" not in seen
    batch = [record("d1"), record("d2"), record("d3")]
    ResultsFile(path).deliver(batch, [(seen, ["d1", "d2", "d3"])])
    assert ResultsFile(path).consume() == batch  # each exactly once
    assert seen.ids() == ["d1", "d2", "d3"]
    assert seen_path.read_text() == "d1,d2,d3"


def test_consumer_finishes_the_text_and_leaves_the_ids_to_the_writer(tmp_path: Path) -> None:
    """The reader knows no id log: it appends the text, keeps only the ids in the journal,
    and nothing is appended twice after it emptied the file."""
    path = tmp_path / "r.jsonl"
    seen_path = tmp_path / "seen"
    cursor_path = tmp_path / "cursor"
    data = line(record("d1"))
    journal = Path(str(path) + ".journal")
    journal.write_bytes(_jbytes(0, data, {"seen": ["d1"], "cursor": ["a9"]}))
    assert read_delegation_results(path) == [record("d1")]
    assert not seen_path.exists() and not cursor_path.exists()
    assert json.loads(journal.read_bytes())["offset"] is None
    assert read_delegation_results(path) == []  # never appended again
    _writer(path, "seen", "cursor").recover()
    assert seen_path.read_text() == "d1"
    assert cursor_path.read_text() == "a9"
    assert not journal.exists()
    assert read_delegation_results(path) == []


def test_journal_holds_no_paths_only_id_log_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    seen = IdLog("seen", max_ids=10)
    results = ResultsFile("r.jsonl", id_logs=[seen])
    written: list[bytes] = []

    def crash_before_append(path: str, journal: Any) -> None:
        written.append(Path(path + ".journal").read_bytes())
        raise KeyboardInterrupt  # not an OSError: no rollback, the journal stays (a "crash")

    monkeypatch.setattr(_journal, "append_text", crash_before_append)
    with pytest.raises(KeyboardInterrupt):
        results.deliver([record("d1")], [(seen, ["d1"])])
    monkeypatch.undo()
    assert json.loads(written[0])["ids"] == {"seen": ["d1"]}
    assert str(tmp_path).encode() not in written[0]
    # A consumer running in another directory gets the result; the writer records its id.
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert read_delegation_results(tmp_path / "w" / "r.jsonl") == [record("d1")]
    _writer(tmp_path / "w" / "r.jsonl", "seen").recover()
    assert (tmp_path / "w" / "seen").read_text() == "d1"
    assert not (tmp_path / "elsewhere" / "seen").exists()


def test_failed_append_is_rolled_back_and_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.jsonl"
    results = ResultsFile(path)
    seen = IdLog(tmp_path / "seen", max_ids=10)
    results.deliver([record("d0")], [(seen, ["d0"])])

    real_write_all = _safefile.write_all

    def half_then_fail(fd: int, data: bytes) -> None:
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("r.jsonl"):
            return real_write_all(fd, data)  # the journal
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_safefile, "write_all", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        results.deliver([record("d1")], [(seen, ["d1"])])
    monkeypatch.undo()
    assert path.read_bytes() == line(record("d0"))
    assert not Path(str(path) + ".journal").exists()
    assert seen.ids() == ["d0"] and (tmp_path / "seen").read_text() == "d0"
    results.deliver([record("d1")], [(seen, ["d1"])])  # the retry delivers it once
    assert results.consume() == [record("d0"), record("d1")]


def test_unwritable_id_log_does_not_block_delivery_and_keeps_its_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An id log that cannot be written (here: its temp name is taken by a directory) keeps
    the delivered ids pending, in memory and in the journal, until a later write succeeds."""
    results = ResultsFile(tmp_path / "r.jsonl")
    seen = IdLog(tmp_path / "seen", max_ids=10)
    (tmp_path / "seen.tmp").mkdir()
    with caplog.at_level(logging.WARNING, logger="heartbeat_sync"):
        results.deliver([record("d1")], [(seen, ["d1"])])
    assert results.peek() == [record("d1")]
    assert json.loads(Path(results.journal_path).read_bytes())["ids"] == {"seen": ["d1"]}
    assert "d1" in seen and seen.dirty
    assert any("could not record delivered ids" in m for m in warnings_of(caplog))
    # A restarted writer decides against the journal too: d1 is not appended again.
    again = IdLog(tmp_path / "seen", max_ids=10)
    assert results.deliver([record("d1")], [(again, ["d1"])]) == []
    (tmp_path / "seen.tmp").rmdir()
    seen.save()
    assert (tmp_path / "seen").read_text() == "d1"
    results.recover()
    assert not Path(results.journal_path).exists()
    assert results.peek() == [record("d1")]


def test_unencodable_record_raises_before_writing(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "r.jsonl")
    with pytest.raises(TypeError):
        results.deliver([{("tuple", "key"): 1}])  # type: ignore[dict-item]
    assert not (tmp_path / "r.jsonl").exists()
    assert not Path(results.journal_path).exists()


@pytest.mark.parametrize(
    "journal",
    [
        _journal.Journal(0, "", {}),
        _journal.Journal(12, '{"a": "\udc80 é"}\n', {"seen": ["d1"], "cursor": ["a1", "a2"]}),
        _journal.Journal(None, "", {"seen": ["d1"]}),
    ],
)
def test_journal_round_trip(journal: _journal.Journal) -> None:
    back = _journal.Journal.loads(journal.dumps())
    assert back is not None
    assert (back.offset, back.data, back.ids) == (journal.offset, journal.data, journal.ids)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        b"[]",
        b'{"version": 2, "offset": true, "data": "", "ids": {}}',
        b'{"version": 2, "offset": 0, "data": 5, "ids": {}}',
        b'{"version": 2, "offset": 0, "data": "", "ids": []}',
        b'{"version": 2, "offset": 0, "data": "", "ids": {"seen": "d1"}}',
        b'{"offset": null, "data": "", "ids": []}',
        b'{"offset": 0, "data": "", "ids": [["p", ["d1"]]]}',
    ],
)
def test_journal_that_is_not_ours_does_not_load(raw: bytes) -> None:
    assert _journal.Journal.loads(raw) is None


def test_first_version_journal_ids_go_only_to_a_known_log_at_that_path(tmp_path: Path) -> None:
    """The first version named id logs by path: only a log this process knows there gets ids."""
    path = tmp_path / "r.jsonl"
    seen_path = tmp_path / "seen"
    data = line(record("d1"))
    legacy = {
        "offset": 0,
        "data": data.decode(),
        "ids": [[str(seen_path), ["d1"], 10], [str(tmp_path / "elsewhere"), ["x"], 10]],
    }
    Path(str(path) + ".journal").write_bytes(json.dumps(legacy).encode())
    _writer(path, "seen").recover()
    assert path.read_bytes() == data
    assert seen_path.read_text() == "d1"
    assert not (tmp_path / "elsewhere").exists()
    assert not Path(str(path) + ".journal").exists()
