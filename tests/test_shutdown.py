"""Interpreter exit: pending side effects get a short, logged, bounded chance."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    from pathlib import Path
    from heartbeat_sync import Heartbeat
    from heartbeat_sync.testing import FakePlatform

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    tmp = Path(sys.argv[1]); delay = float(sys.argv[2]); exit_timeout = sys.argv[3]
    fp = FakePlatform().start()
    ws = fp.add_workspace()
    fp.fault("a2a", delay=delay)
    fp.add_delegation(ws.id, status="completed")
    hb = Heartbeat(fp.url, ws.id, interval_seconds=0.05, **fp.agent_files(ws.id, tmp),
                   exit_timeout=None if exit_timeout == "none" else float(exit_timeout))
    def report():
        print("A2A_ANSWERED=%d" % len(fp.a2a_messages(ws.id)), flush=True)
    import atexit
    atexit.register(report)   # registered first, so it runs after the library's hook
    hb.start_thread()
    fp.wait_for(lambda: len(fp.requests_for("a2a")) >= 1, timeout=5)
    # Leave without stopping anything: the exit hook has to cope.
    """
)


def _run(tmp_path: Path, delay: float, exit_timeout: str) -> tuple[float, str, str]:
    script = tmp_path / "leave.py"
    script.write_text(SCRIPT)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(delay), exit_timeout],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - started, proc.stdout, proc.stderr


@pytest.mark.slow
def test_exit_hook_lets_a_pending_wakeup_finish(tmp_path: Path) -> None:
    elapsed, out, err = _run(tmp_path, delay=0.5, exit_timeout="3")
    assert "waiting up to 3.0 s for a wake-up for 1 result(s)" in err
    assert "A2A_ANSWERED=1" in out
    assert elapsed < 10


@pytest.mark.slow
def test_exit_hook_never_hangs_exit(tmp_path: Path) -> None:
    elapsed, out, err = _run(tmp_path, delay=60, exit_timeout="0.5")
    assert "waiting up to 0.5 s for" in err
    assert "exiting with" in err and "not sent" in err
    assert "A2A_ANSWERED=0" in out
    assert elapsed < 8


@pytest.mark.slow
def test_exit_hook_can_be_turned_off(tmp_path: Path) -> None:
    elapsed, _, err = _run(tmp_path, delay=60, exit_timeout="none")
    assert "waiting up to" not in err
    assert elapsed < 8
