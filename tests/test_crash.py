"""Crash safety: SIGKILL at random moments, restart, nothing lost or twice; and concurrent
consumer processes. First the real loop, then the results file and its journal alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync.delivery.results import IdLog, ResultsFile, read_delegation_results
from heartbeat_sync.testing import AgentFiles, FakePlatform

from ._writer import kill_writer, start_writer
from .conftest import wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

REPO = Path(__file__).resolve().parents[1]

#: Seconds between the child writers' cycles.
INTERVAL = 0.02


def _check_files(tmp: Path) -> list[str]:
    """Every complete line parses and the id files parse; return the delivered ids."""
    raw = (tmp / "results.jsonl").read_bytes() if (tmp / "results.jsonl").exists() else b""
    lines = raw.split(b"\n")
    complete = lines[:-1]  # the last element is "" or a torn tail the next writer cuts
    ids = [json.loads(line)["delegation_id"] for line in complete]
    for name in ("cursor", "seen"):
        path = tmp / name
        if path.exists():
            text = path.read_text()
            items = text.split(",") if text else []
            assert all(i and "," not in i and i.strip() == i for i in items), text[:200]
    return ids


def _start(files: AgentFiles, url: str, ws: str) -> subprocess.Popen[str]:
    return start_writer(files, url, ws, INTERVAL)


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        kill_writer(proc)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("writers", [1, 2], ids=["one-writer", "two-writers-one-workspace"])
def test_sigkill_at_random_moments_while_results_stream_in(tmp_path: Path, writers: int) -> None:
    """Writers killed at random moments; with two, two processes for one workspace share the
    files and each decides against what the other recorded."""
    rng = random.Random(20261124)
    expected: set[str] = set()
    pause = threading.Event()
    with FakePlatform() as platform:
        ws = platform.add_workspace()
        peer = platform.add_workspace()
        # One agent's files, shared by the writers: results, cursor and seen in tmp_path.
        files = platform.agent_files(ws.id, tmp_path)
        # A first run sets the activity cursor: with none, the loop reads only the newest
        # window (as the reference does), and rows older than that were never the loop's.
        first = platform.add_activity(ws.id, source_id=peer.id, text="first")
        expected.add(first)
        proc = _start(files, platform.url, ws.id)
        assert wait_until(lambda: first in _check_files(tmp_path), timeout=10)
        kill_writer(proc)
        kills = 0
        while kills < 22:
            procs = [_start(files, platform.url, ws.id) for _ in range(writers)]
            # Hundreds of results per cycle: whole pages of peer rows, plus delegations
            # (kept under the platform's 50-row delegations window).
            for _ in range(rng.randint(1, 3)):
                for _ in range(150):
                    expected.add(platform.add_activity(ws.id, source_id=peer.id, text="x" * 300))
            if len(expected) < 3000 and kills % 2 == 0:
                did = platform.add_delegation(ws.id, status="completed", response_preview="y")
                expected.add(did)
            pause.wait(rng.uniform(0.02, 0.4))
            _kill(procs[:1])
            pause.wait(rng.uniform(0.0, 0.1))  # the other one goes on alone for a moment
            _kill(procs[1:])
            kills += 1
            ids = _check_files(tmp_path)
            assert len(ids) == len(set(ids)), "a result was delivered twice"
        # A last, clean run delivers whatever the crashes left pending.
        proc = _start(files, platform.url, ws.id)
        try:
            # What is missing after that, the assertions below name.
            wait_until(lambda: set(_check_files(tmp_path)) >= expected, timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
    ids = _check_files(tmp_path)
    assert len(ids) == len(set(ids)), "a result was delivered twice"
    order = {r["id"]: i for i, r in enumerate(platform.activity_rows(ws.id)) if isinstance(r, dict)}
    lost = sorted(order.get(i, -1) for i in expected - set(ids))
    assert set(ids) == expected, f"{len(expected - set(ids))} result(s) lost at {lost}"
    assert len(ids) > 3000


# --------------------------------------------------------------------------------------------
# Subprocess tests: SIGKILL at random moments, concurrent consumers
# --------------------------------------------------------------------------------------------

# A writer that is idempotent across restarts, like the heartbeat: the "platform" serves ids
# 0, 1, 2, ... in batches; the writer resumes after the newest id in its seen log, so a batch
# delivered twice (or lost) shows up as a duplicate (or a gap) in the results file.
_RF_WRITER = r"""
import sys
from heartbeat_sync.delivery.results import IdLog, ResultsFile

folder, batch, stop_at, recover_first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
results = ResultsFile(folder + "/results.jsonl")
if recover_first == "1":
    results.recover()  # what the heartbeat does at start-up
seen = IdLog(folder + "/seen", max_ids=batch * 3)
sys.stdout.write("ready\n")
sys.stdout.flush()
pad = "é✓" * 40
while True:
    newest = seen.newest()
    start = int(newest) + 1 if newest is not None else 0
    if start >= stop_at:
        break
    ids = [str(i) for i in range(start, min(start + batch, stop_at)) if str(i) not in seen]
    records = [
        {"delegation_id": i, "target_id": "t", "source_id": "s", "status": "completed",
         "summary": "result " + i, "response_preview": pad, "error": "", "timestamp": 0.0}
        for i in ids
    ]
    results.deliver(records, [(seen, ids)])
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _complete_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    body = raw[: raw.rfind(b"\n") + 1]
    return [json.loads(x) for x in body.split(b"\n") if x]  # raises if any line is damaged


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    batch = 200
    results_path, seen_path = tmp_path / "results.jsonl", tmp_path / "seen"
    kills = 0
    for run in range(24):
        proc = subprocess.Popen(
            [sys.executable, "-c", _RF_WRITER, str(tmp_path), str(batch), str(10**9), str(run % 2)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_env(),
        )
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready == b"ready\n", proc.stderr.read() if proc.stderr else b""
            time.sleep(rng.uniform(0.005, 0.080))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(10)
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        # Between crashes: every complete line parses, the seen file parses, no duplicate.
        ids = [r["delegation_id"] for r in _complete_lines(results_path)]
        assert len(ids) == len(set(ids))
        if seen_path.exists():
            text = seen_path.read_text()
            assert all(x.isdigit() for x in text.split(",")) if text else True
    assert kills >= 20
    # A clean run to a fixed end, then recovery: every id exactly once, no gap.
    newest = IdLog(seen_path, max_ids=batch * 3).newest()
    stop_at = (int(newest) if newest else 0) + 3 * batch + 17
    done = subprocess.run(
        [sys.executable, "-c", _RF_WRITER, str(tmp_path), str(batch), str(stop_at), "0"],
        capture_output=True,
        env=_child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    ResultsFile(results_path, id_logs=[IdLog(seen_path, max_ids=batch * 3)]).recover()
    ids = [int(r["delegation_id"]) for r in _complete_lines(results_path)]
    assert ids == list(range(stop_at))
    assert results_path.read_bytes().endswith(b"\n")
    assert not Path(str(results_path) + ".journal").exists()
    assert IdLog(seen_path, max_ids=batch * 3).newest() == str(stop_at - 1)


_PRODUCER = r"""
import sys, time
from heartbeat_sync.delivery.results import IdLog, ResultsFile

folder, total, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
results = ResultsFile(folder + "/results.jsonl")
seen = IdLog(folder + "/seen", max_ids=1000)
for start in range(0, total, batch):
    ids = [str(i) for i in range(start, min(start + batch, total))]
    results.deliver([{"delegation_id": i, "summary": "s" * 100} for i in ids], [(seen, ids)])
    time.sleep(0.002)  # let the consumers in: filelock polls, so a tight re-acquire starves them
"""

_CONSUMER = r"""
import os, sys, time
from heartbeat_sync import read_delegation_results

path, out, stop_flag = sys.argv[1], sys.argv[2], sys.argv[3]
sys.stdout.write("ready\n")
sys.stdout.flush()
with open(out, "a") as f:
    while True:
        stopping = os.path.exists(stop_flag)  # checked before the read: nothing after it is missed
        got = read_delegation_results(path)
        for r in got:
            f.write(r["delegation_id"] + "\n")
        f.flush()
        if stopping and not got:
            break
        time.sleep(0.001)
"""


@pytest.mark.slow
def test_concurrent_consumer_processes_get_everything_once(tmp_path: Path) -> None:
    total = 6000
    stop_flag = tmp_path / "stop"
    results_path = tmp_path / "results.jsonl"
    consumers = [
        subprocess.Popen(
            [sys.executable, "-c", _CONSUMER, str(results_path), str(tmp_path / f"out{n}"),
             str(stop_flag)],
            env=_child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]  # fmt: skip
    try:
        for c in consumers:  # both are in their loops before the first delivery
            assert c.stdout is not None and c.stdout.readline() == b"ready\n"
        producer = subprocess.run(
            [sys.executable, "-c", _PRODUCER, str(tmp_path), str(total), "50"],
            capture_output=True,
            env=_child_env(),
            timeout=90,
            check=False,
        )
        assert producer.returncode == 0, producer.stderr.decode()
    finally:
        stop_flag.touch()
        for c in consumers:
            c.wait(60)
    for c in consumers:
        assert c.returncode == 0, c.stderr.read().decode() if c.stderr else ""
        for stream in (c.stdout, c.stderr):
            if stream:
                stream.close()
    consumed = []
    for n in range(2):
        consumed += (tmp_path / f"out{n}").read_text().split()
    remaining = [r["delegation_id"] for r in ResultsFile(results_path).consume()]
    everything = consumed + remaining
    assert len(everything) == len(set(everything)) == total
    assert set(everything) == {str(i) for i in range(total)}
    assert all((tmp_path / f"out{n}").read_text() for n in range(2)), "a consumer got nothing"


@pytest.mark.slow
def test_concurrent_consumer_threads_in_the_writers_process(tmp_path: Path) -> None:
    total, batch = 5000, 40
    results_path = tmp_path / "results.jsonl"
    results = ResultsFile(results_path)
    seen = IdLog(tmp_path / "seen", max_ids=500)
    stop = threading.Event()
    consumed: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def consume(out: list[str]) -> None:
        try:
            while True:
                stopping = stop.is_set()
                got = read_delegation_results(results_path)
                out.extend(r["delegation_id"] for r in got)
                if stopping and not got:
                    return
                time.sleep(0.0002)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(consumed[n],)) for n in range(2)]
    for t in threads:
        t.start()
    try:
        for start in range(0, total, batch):
            ids = [str(i) for i in range(start, start + batch)]
            results.deliver([{"delegation_id": i} for i in ids], [(seen, ids)])
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors
    everything = consumed[0] + consumed[1] + [r["delegation_id"] for r in results.consume()]
    assert len(everything) == len(set(everything)) == total
    assert set(everything) == {str(i) for i in range(total)}
    assert seen.newest() == str(total - 1)
