"""Fork safety: a child of a running Heartbeat neither deadlocks nor repeats its work."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from heartbeat_sync import Heartbeat, clear_wedge, is_wedged, mark_wedged
from heartbeat_sync.testing import AgentFiles, FakePlatform, Workspace

from .conftest import FixedRandom, HeartbeatFactory, fork_with_threads, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _wait_child(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None if it did not end in time (then it is killed)."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        done.wait(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _child_checks(
    hb: Heartbeat, platform_url: str, child_ws: str, files: AgentFiles, tmp: Path
) -> int:
    """Run in the child (a Heartbeat of its own goes on ``files``); return an exit code naming
    the first check that failed."""
    # A child that deadlocks writes where it is stuck, for the failure message.
    dump = open(tmp / f"tb-{os.getpid()}.txt", "w")  # noqa: SIM115 - lives until os._exit
    faulthandler.dump_traceback_later(8, exit=True, file=dump)
    try:
        status = hb.status()
        if status.running or status.state != "stopped":
            return 10
        if status.queue_depth != 0:
            return 11  # inherited side effects
        # Locks that the parent's threads may have held at the fork must be usable.
        hb.record_error("child")
        mark_wedged("child")
        if not is_wedged():
            return 12
        clear_wedge()
        child = Heartbeat(
            platform_url,
            child_ws,
            interval_seconds=0.05,
            exit_timeout=None,
            rng=FixedRandom(0.0),
            **files,
        )
        child.start_thread()
        ok = wait_until(lambda: child.status().beats_ok >= 2, timeout=5)
        if not child.stop(2.0):
            return 13
        return 0 if ok else 14
    except BaseException:
        return 15


def test_fork_while_running(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    child_ws = platform.add_workspace(name="child")
    peer = platform.add_workspace()
    # Keep the side-effect thread busy and its queue full, and the results lock in use.
    platform.fault("a2a", delay=30)
    hb = make_hb(interval_seconds=0.01)
    hb.start_thread()
    codes = []
    url = platform.url
    for i in range(8):
        for _ in range(20):
            platform.add_activity(ws.id, source_id=peer.id, text=f"r{i}")
        platform.add_delegation(ws.id, status="completed")
        # Laid out here: the child must not touch the platform's lock, which a server thread
        # may hold at the fork.
        child_files = platform.agent_files(child_ws.id, tmp_path / f"child-{i}")
        pid = fork_with_threads()
        if pid == 0:  # the child
            code = 99
            try:
                code = _child_checks(hb, url, child_ws.id, child_files, tmp_path)
            finally:
                os._exit(code)
        codes.append(_wait_child(pid, timeout=15))
        time.sleep(0.003 * i)  # fork at different moments of the cycle
    dumps = [p.read_text() for p in tmp_path.glob("tb-*.txt") if p.stat().st_size]
    assert codes == [0] * 8, (codes, dumps)
    # The parent kept beating, and its queued wake-up was not repeated by any child.
    n = len(platform.heartbeats(ws.id))
    assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= n + 3, timeout=5)
    assert len(platform.requests_for("a2a", ws.id)) == 1
    assert hb.stop(2.0)
