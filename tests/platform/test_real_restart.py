"""Restarts against the real server: a stopped Heartbeat, or a killed process, followed by a
new one on the same files, delivers every result once and nothing twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat

from .._writer import kill_writer, start_writer
from ._real import RealPlatform, wait_until, write_token

INTERVAL = 0.3


def delivered(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]  # a torn tail is cut by the next writer
    return [json.loads(line)["delegation_id"] for line in lines]


def _scene(real_platform: RealPlatform) -> tuple[str, str, str, str, str]:
    """A (poll mode, the Heartbeat's), B (a peer that messages A), C (A's delegations to it
    fail)."""
    a, ta = real_platform.create_workspace("restarted")
    b, tb = real_platform.create_workspace("peer")
    c, _ = real_platform.failing_target()
    real_platform.register(a, ta, delivery_mode="poll")
    return a, ta, b, tb, c


def _produce(real_platform: RealPlatform, scene: tuple[str, str, str, str, str], n: int) -> None:
    """``n`` failed delegations and ``n`` peer messages for A."""
    a, ta, b, tb, c = scene
    for i in range(n):
        real_platform.delegate(a, ta, c, f"task {i}")
        reply = real_platform.peer_message(a, b, tb, f"note {i}")
        assert reply.status_code == 200, reply.text


def test_a_restarted_heartbeat_delivers_nothing_twice(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    scene = _scene(real_platform)
    a, ta = scene[0], scene[1]
    write_token(hb_files["configs_dir"], ta)
    results: Path = hb_files["results_file"]
    _produce(real_platform, scene, 3)
    with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files):
        assert wait_until(lambda: len(delivered(results)) == 6)
    _produce(real_platform, scene, 2)
    with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files) as hb:
        assert wait_until(lambda: len(delivered(results)) >= 10)
        threading.Event().wait(4 * INTERVAL)
        assert hb.status().results_delivered == 4
    ids = delivered(results)
    assert len(ids) == 10 and len(set(ids)) == 10, Counter(ids).most_common(3)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_a_killed_process_and_its_successor_deliver_each_result_once(
    real_platform: RealPlatform, tmp_path: Path
) -> None:
    scene = _scene(real_platform)
    a, ta = scene[0], scene[1]
    (tmp_path / "configs").mkdir()
    write_token(tmp_path / "configs", ta)
    results = tmp_path / "results.jsonl"
    files = {
        "results_file": results,
        "cursor_file": tmp_path / "cursor",
        "seen_file": tmp_path / "seen",
        "configs_dir": tmp_path / "configs",
    }

    def start() -> subprocess.Popen[str]:
        return start_writer(files, real_platform.url, a, 0.05)

    expected = 0
    for _ in range(3):
        proc = start()
        try:
            before = len(delivered(results))
            _produce(real_platform, scene, 4)
            expected += 8
            # Kill it while results are coming in, once some of this round's have arrived.
            assert wait_until(lambda before=before: len(delivered(results)) > before)
        finally:
            kill_writer(proc)
    proc = start()
    try:
        assert wait_until(lambda: len(delivered(results)) >= expected)
        threading.Event().wait(0.5)
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    ids = delivered(results)
    assert len(ids) == expected and len(set(ids)) == expected, Counter(ids).most_common(3)
