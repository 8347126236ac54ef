"""Crash safety of the real loop: SIGKILL at random moments, restart, nothing lost or twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from heartbeat_sync.testing import FakePlatform

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

WRITER = textwrap.dedent(
    """
    import sys, threading
    from heartbeat_sync import Heartbeat
    url, ws, tmp = sys.argv[1], sys.argv[2], sys.argv[3]
    hb = Heartbeat(url, ws, interval_seconds=0.02, results_file=tmp + "/results.jsonl",
                   cursor_file=tmp + "/cursor", seen_file=tmp + "/seen",
                   configs_dir=tmp + "/configs", exit_timeout=None,
                   self_message_cooldown=3600)
    hb.start_thread()
    print("READY", flush=True)
    threading.Event().wait()
    """
)


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


def _start(tmp: Path, url: str, ws: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(tmp / "writer.py"), url, ws, str(tmp)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("writers", [1, 2], ids=["one-writer", "two-writers-one-workspace"])
def test_sigkill_at_random_moments_while_results_stream_in(tmp_path: Path, writers: int) -> None:
    """Writers killed at random moments; with two, two processes for one workspace share the
    files and each decides against what the other recorded."""
    rng = random.Random(20261124)
    (tmp_path / "writer.py").write_text(WRITER)
    expected: set[str] = set()
    pause = threading.Event()
    with FakePlatform() as platform:
        ws = platform.add_workspace()
        peer = platform.add_workspace()
        assert ws.token
        (tmp_path / "configs").mkdir()
        (tmp_path / "configs" / ".auth_token").write_text(ws.token)
        (tmp_path / "configs" / ".auth_token").chmod(0o600)
        # A first run sets the activity cursor: with none, the loop reads only the newest
        # window (as the reference does), and rows older than that were never the loop's.
        first = platform.add_activity(ws.id, source_id=peer.id, text="first")
        expected.add(first)
        proc = _start(tmp_path, platform.url, ws.id)
        for _ in range(100):
            if first in _check_files(tmp_path):
                break
            pause.wait(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        kills = 0
        while kills < 22:
            procs = [_start(tmp_path, platform.url, ws.id) for _ in range(writers)]
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
        proc = _start(tmp_path, platform.url, ws.id)
        try:
            deadline = threading.Event()
            for _ in range(300):
                if set(_check_files(tmp_path)) >= expected:
                    break
                deadline.wait(0.1)
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
