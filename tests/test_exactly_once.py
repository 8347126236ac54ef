"""Each result reaches the results file once, ever: against a cursor that cannot advance, rows
that commit late, ids the file cannot store, several writers, failed writes, symbolic links,
planted files and locks held by a consumer."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

from heartbeat_sync import Heartbeat, read_delegation_results
from heartbeat_sync._settings import MIN_CURSOR_IDS, MIN_SEEN_IDS
from heartbeat_sync.delivery.activity import OVERLAP_MAX, ActivityPager
from heartbeat_sync.delivery.results import IdLog, ResultsFile
from heartbeat_sync.delivery.rows import newest_first
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import (
    HeartbeatFactory,
    LogCapture,
    fork_with_threads,
    read_lines,
    wait_for_beats,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown to another user"
)


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["delegation_id"] for line in read_lines(path)]


def _beats_after(hb: Heartbeat, n: int, timeout: float = 5.0) -> bool:
    start = hb.status().beats_ok
    return wait_until(lambda: hb.status().beats_ok >= start + n, timeout)


def _file_ids(path: Path) -> list[str]:
    return path.read_text().split(",") if path.exists() else []


def _record(did: str) -> dict[str, object]:
    return {"delegation_id": did, "status": "completed", "summary": f"s {did}"}


# --- 1. a cursor that cannot advance ----------------------------------------------------------


def test_reference_cursor_with_sorted_ids_does_not_stall_delivery(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    """The reference runtime stores its cursor sorted, so its "newest" id is an arbitrary old
    row; here the 249 rows after it are all known. Asking from it again every cycle re-reads
    the same page for ever; paging onward reaches the new row."""
    peer = platform.add_workspace()
    first = platform.add_activity(
        ws.id, source_id=peer.id, text="old", activity_id="ffffffff-0000-4000-8000-000000000000"
    )
    rest = [
        platform.add_activity(
            ws.id, source_id=peer.id, text="old", activity_id=f"0{uuid.uuid4().hex[1:8]}-0000"
        )
        for _ in range(249)
    ]
    (tmp_path / "cursor").write_text(",".join(sorted([first, *rest])))
    new = platform.add_activity(ws.id, source_id=peer.id, text="new")
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: _ids(results) == [new])
        assert _beats_after(hb, 3)
    assert _ids(results) == [new]


def test_a_cursor_that_cannot_advance_says_so(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """A full page with no well-formed row to page on from is a warning, not a silent stall."""
    peer = platform.add_workspace()
    known = platform.add_activity(ws.id, source_id=peer.id, text="known")
    (tmp_path / "cursor").write_text(known)
    for n in range(100):
        platform.add_raw_activity_row(ws.id, {"id": None, "n": n})
    with make_hb() as hb:
        assert _beats_after(hb, 3)
    assert any("cannot advance" in m for m in logs.messages(logging.WARNING))


def test_pager_pages_onward_from_the_last_row_even_when_all_are_known() -> None:
    pager = ActivityPager(clock=lambda: 0.0)
    assert pager.first_since(lambda: ["a"]) == "a"
    page = [f"r{i}" for i in range(100)]
    assert pager.read("a", page, full=True) == "r99"
    assert pager.read("r99", ["s1"], full=False) is None


# --- 2. rows that commit late -------------------------------------------------------------------


def test_a_row_committed_late_is_delivered_exactly_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    """A row whose created_at is older than a row already read, visible only later: a
    since_id of the newer row never returns it (the real server's rule), the overlap does."""
    peer = platform.add_workspace()
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        r1 = platform.add_activity(ws.id, source_id=peer.id, text="one")
        assert wait_until(lambda: _ids(results) == [r1])
        late = platform.add_activity(ws.id, source_id=peer.id, text="late", committed=False)
        r2 = platform.add_activity(ws.id, source_id=peer.id, text="two")
        assert wait_until(lambda: _ids(results) == [r1, r2])
        assert _beats_after(hb, 3)
        platform.commit_activity(ws.id, late)
        assert wait_until(lambda: _ids(results) == [r1, r2, late])
        assert _beats_after(hb, 5)
    assert _ids(results) == [r1, r2, late]


def test_fake_platform_since_id_skips_a_late_row_like_the_real_server(
    platform: FakePlatform, ws: Workspace
) -> None:
    peer = platform.add_workspace()
    r1 = platform.add_activity(ws.id, source_id=peer.id, text="one")
    late = platform.add_activity(ws.id, source_id=peer.id, text="late", committed=False)
    r2 = platform.add_activity(ws.id, source_id=peer.id, text="two")
    assert [r["id"] for r in platform.activity_rows(ws.id)] == [r1, r2]  # type: ignore[index]
    platform.commit_activity(ws.id, late)
    assert ws.token
    import requests

    def since(row: str) -> list[str]:
        reply = requests.get(
            f"{platform.url}/workspaces/{ws.id}/activity",
            params={"since_id": row},
            headers={"Authorization": f"Bearer {ws.token}"},
            timeout=5,
        )
        return [r["id"] for r in reply.json()]

    assert since(r2) == []
    assert since(r1) == [late, r2]


def test_overlap_settles_so_an_idle_poll_rereads_nothing() -> None:
    now = [0.0]
    pager = ActivityPager(settle=5.0, clock=lambda: now[0])
    assert pager.first_since(lambda: []) is None  # nothing known: the newest window
    assert pager.read(None, ["a", "b", "c"], full=False) is None
    for t in (1.0, 2.0, 6.0):
        now[0] = t
        assert pager.first_since(lambda: []) == "a"  # a, b, c are re-read while they settle
    now[0] = 7.5  # the previous poll (6.0) started more than 5 s after they were read
    assert pager.first_since(lambda: []) == "c"
    assert pager.overlap == 0


def test_overlap_is_bounded_so_a_burst_still_moves_on() -> None:
    pager = ActivityPager(clock=lambda: 0.0)
    pager.first_since(lambda: ["a"])
    ids = [f"r{i}" for i in range(100)]
    assert pager.read("a", ids, full=True) == "r99"
    assert pager.overlap == OVERLAP_MAX
    assert pager.first_since(lambda: []) == ids[-OVERLAP_MAX - 1]


def test_a_late_row_seen_in_the_overlap_keeps_its_place() -> None:
    now = [0.0]
    pager = ActivityPager(settle=5.0, clock=lambda: now[0])
    pager.first_since(lambda: ["a"])
    pager.read("a", ["b", "d"], full=False)
    now[0] = 3.0
    assert pager.first_since(lambda: []) == "a"
    pager.read("a", ["b", "c", "d"], full=False)  # c committed late
    now[0] = 6.5
    pager.first_since(lambda: [])
    now[0] = 7.0
    # b and d settled, but c was first read at 3.0: the anchor stays before it.
    assert pager.first_since(lambda: []) == "b"


def test_timestamps_with_fewer_fraction_digits_are_not_taken_for_newest_first() -> None:
    """Go drops trailing zeros: ``.1Z`` is earlier than ``.12Z`` though it sorts after it."""
    rows = [{"created_at": "2026-12-02T19:47:43.1Z"}, {"created_at": "2026-12-02T19:47:43.12Z"}]
    assert not newest_first(rows)
    assert newest_first(rows[::-1])


# --- 3. an id the library cannot store -------------------------------------------------------


def _delegation_row(did: str, ws_id: str) -> dict[str, object]:
    return {"delegation_id": did, "source_id": ws_id, "status": "completed", "summary": "s"}


def test_an_id_with_a_lone_surrogate_is_skipped_and_blocks_nothing(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    """ "\\ud800" is valid JSON but no file can store it: it must be skipped like any malformed
    row, and neither the delivery of other rows nor the reader may fail because of it."""
    good = str(uuid.uuid4())
    body = json.dumps([_delegation_row("\ud800", ws.id), _delegation_row(good, ws.id)])
    platform.fault("delegations", body=body)
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: _ids(results) == [good])
        platform.clear_faults()
        later = platform.add_delegation(ws.id, status="completed")
        assert wait_until(lambda: _ids(results) == [good, later])
        assert _beats_after(hb, 2)
        got = read_delegation_results(results)
    assert [r["delegation_id"] for r in got] == [good, later]
    assert not Path(str(results) + ".journal").exists()


# --- 4. several writers of one set of files ------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, sys
    from heartbeat_sync import Heartbeat
    url, ws, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    # Every cycle polls (not only on an event): the two writers contend as often as they can.
    hb = Heartbeat(url, ws, interval_seconds=0.05, exit_timeout=None, self_message_cooldown=3600,
                   safety_poll_interval=None, **files)
    hb.start_thread()
    print("READY", flush=True)
    sys.stdin.read()
    hb.stop()
    """
)


def test_two_processes_for_one_workspace_deliver_each_result_once(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Both processes on the one agent's files.
    files = platform.agent_files(ws.id, tmp_path)
    laid_out = json.dumps({name: str(path) for name, path in files.items()})
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, platform.url, ws.id, laid_out],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        made = []
        for _ in range(5):  # one result a poll, while both processes poll
            polls = len(platform.requests_for("delegations"))
            made.append(platform.add_delegation(ws.id, status="completed"))
            assert platform.wait_for_requests("delegations", polls + 1)
        assert wait_until(lambda: len(read_lines(tmp_path / "results.jsonl")) >= 5)
        n = len(platform.requests_for("delegations"))
        assert platform.wait_for(lambda: len(platform.requests_for("delegations")) >= n + 10)
    finally:
        for proc in procs:
            proc.communicate("", timeout=10)
    assert sorted(_ids(tmp_path / "results.jsonl")) == sorted(made)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_restarting_its_heartbeat_delivers_nothing_twice(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    results = tmp_path / "results.jsonl"
    hb = make_hb(interval_seconds=0.05, self_message_cooldown=3600)
    hb.start_thread()
    assert _beats_after(hb, 1)
    pid = fork_with_threads()
    if pid == 0:  # the child: restart the inherited Heartbeat, deliver beside the parent, leave
        code = 1
        try:
            hb.start_thread()
            # Until the five results are in (from either process), then a few cycles more.
            ran = wait_until(lambda: len(read_lines(results)) >= 5, 20.0) and _beats_after(hb, 3)
            code = 2 if not hb.stop(2.0) else (0 if ran else 3)
        finally:
            os._exit(code)
    made = []
    for _ in range(5):  # one result a poll, while both processes poll
        polls = len(platform.requests_for("delegations"))
        made.append(platform.add_delegation(ws.id, status="completed"))
        assert platform.wait_for_requests("delegations", polls + 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _beats_after(hb, 3)
    assert hb.stop(2.0)
    assert sorted(_ids(results)) == sorted(made)


def test_saves_of_two_id_log_objects_merge_not_overwrite(tmp_path: Path) -> None:
    one, two = IdLog(tmp_path / "seen", 100), IdLog(tmp_path / "seen", 100)
    one.add(["a"])
    two.add(["b"])
    one.save()
    two.save()
    assert (tmp_path / "seen").read_text() == "a,b"
    assert one.ids() == ["a"]
    one.reload()
    assert one.ids() == ["a", "b"]


# --- 5. a failed write of an id log --------------------------------------------------------------


def test_a_failed_cursor_write_is_retried_and_never_delivers_twice(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    """The cursor cannot be written for a while (its temp name is taken, as a full disk
    would refuse it), and a consumer holds the results lock meanwhile: X, Y, never X again,
    neither in this run nor after a restart; the cursor is written once it can be."""
    peer = platform.add_workspace()
    blocker = tmp_path / "cursor.tmp"
    blocker.mkdir()
    results = tmp_path / "results.jsonl"
    lock = filelock.FileLock(str(results) + ".lock")
    with make_hb() as hb:
        x = platform.add_activity(ws.id, source_id=peer.id, text="x")
        assert wait_until(lambda: _ids(results) == [x])
        with lock:
            y = platform.add_activity(ws.id, source_id=peer.id, text="y")
            assert _beats_after(hb, 3)
        assert wait_until(lambda: _ids(results) == [x, y])
        assert _beats_after(hb, 3)
        assert _ids(results) == [x, y]
    with make_hb() as again:  # a restart while the cursor still cannot be written
        assert _beats_after(again, 3)
        blocker.rmdir()
        assert wait_until(lambda: {x, y} <= set(_file_ids(tmp_path / "cursor")))
        assert wait_until(lambda: not Path(str(results) + ".journal").exists())
        assert _beats_after(again, 2)
    assert _ids(results) == [x, y]


# --- 6. symbolic links ---------------------------------------------------------------------------


def test_a_writer_through_a_link_and_a_reader_by_the_real_path_exclude_each_other(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    held, release = threading.Event(), threading.Event()

    def reader_holds_the_lock() -> None:
        with filelock.FileLock(str(real) + ".lock"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=reader_holds_the_lock)
    holder.start()
    try:
        assert held.wait(5)
        with pytest.raises(filelock.Timeout):
            ResultsFile(link, lock_timeout=0.2).deliver([_record("d1")])
    finally:
        release.set()
        holder.join(5)
    ResultsFile(link).deliver([_record("d1")])
    assert [r["delegation_id"] for r in read_delegation_results(real)] == ["d1"]
    assert link.is_symlink()


def test_a_linked_id_log_is_saved_through_to_its_target(tmp_path: Path) -> None:
    target = tmp_path / "store" / "seen"
    target.parent.mkdir()
    link = tmp_path / "seen"
    link.symlink_to(target)
    log = IdLog(link, 100)
    log.add(["a"])
    log.save()
    assert link.is_symlink() and target.read_text() == "a"
    assert IdLog(target, 100).ids() == ["a"]


# --- 7. planted files -------------------------------------------------------------------------


def _old_journal(data: str, id_log: Path) -> bytes:
    """A journal in the first format, which held the id logs' paths."""
    return json.dumps({"offset": 0, "data": data, "ids": [[str(id_log), ["x"], 10]]}).encode()


@needs_root
def test_a_journal_owned_by_another_user_is_refused_with_one_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    results = tmp_path / "results.jsonl"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    journal = Path(str(results) + ".journal")
    journal.write_bytes(_old_journal(json.dumps(_record("forged")) + "\n", victim))
    os.chown(journal, NOBODY, NOBODY)
    with caplog.at_level(logging.ERROR, logger="heartbeat_sync"):
        assert read_delegation_results(results) == []
        assert read_delegation_results(results) == []
        ResultsFile(results).deliver([_record("d1")])
    assert victim.read_text() == "precious"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "owned by uid" in errors[0]
    assert [r["delegation_id"] for r in read_delegation_results(results)] == ["d1"]


@needs_root
def test_a_results_file_owned_by_another_user_is_not_read(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(_record("forged")) + "\n")
    os.chown(results, NOBODY, NOBODY)
    assert read_delegation_results(results) == []
    assert results.read_text()  # left as it was


def test_a_journal_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    victim = tmp_path / "victim"
    elsewhere = tmp_path / "forged"
    elsewhere.write_bytes(_old_journal(json.dumps(_record("forged")) + "\n", victim))
    Path(str(results) + ".journal").symlink_to(elsewhere)
    assert read_delegation_results(results) == []
    assert not victim.exists()


@pytest.mark.timeout(20)
def test_a_fifo_planted_as_the_journal_never_blocks_the_reader(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(_record("d1")) + "\n")
    os.mkfifo(str(results) + ".journal")
    assert [r["delegation_id"] for r in read_delegation_results(results)] == ["d1"]


def test_every_file_the_library_creates_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        seen = IdLog(tmp_path / "seen", 100)
        results = ResultsFile(tmp_path / "results.jsonl")
        results.deliver([_record("d1")], [(seen, ["d1"])])
    finally:
        os.umask(old)
    for name in ("results.jsonl", "results.jsonl.lock", "seen", "seen.lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


# --- locks and bounds the beat thread depends on ---------------------------------------------


@pytest.fixture
def seen_lock_held(tmp_path: Path) -> Iterator[threading.Event]:
    """Holds the seen file's lock, as a consumer in another process might, until set."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with filelock.FileLock(str(tmp_path / "seen") + ".lock"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    yield release
    release.set()
    holder.join(5)


def test_a_consumer_holding_the_seen_lock_does_not_stall_the_beat(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    seen_lock_held: threading.Event,
) -> None:
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert _beats_after(hb, 1)
        did = platform.add_delegation(ws.id, status="completed")
        # Six beats while the lock is held: a beat thread that waited out a lock for 30 s (as
        # long as the fixture holds it) would send none of them within the 20 s given here.
        assert wait_for_beats(platform, 6, timeout=20.0)
        seen_lock_held.set()
        assert wait_until(lambda: _ids(results) == [did])
        assert _beats_after(hb, 3)
    assert _ids(results) == [did]


@pytest.mark.parametrize(
    ("arg", "least"), [("max_seen_ids", MIN_SEEN_IDS), ("max_cursor_ids", MIN_CURSOR_IDS)]
)
def test_id_log_sizes_below_one_poll_are_refused(arg: str, least: int, tmp_path: Path) -> None:
    """With ``max_seen_ids=10``, 20 delegations came back 90 times: refused at construction."""
    # No platform and no token, never started: only the arguments are looked at.
    for bad in (10, least - 1, True, 1.5e3):
        with pytest.raises(ValueError, match=arg):
            Heartbeat("http://127.0.0.1:9", "ws", configs_dir=tmp_path, **{arg: bad})
    Heartbeat("http://127.0.0.1:9", "ws", configs_dir=tmp_path, exit_timeout=None, **{arg: least})
