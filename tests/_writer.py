"""A Heartbeat in a child process, for the tests that SIGKILL one and start its successor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

#: The child: a Heartbeat on the files in ``tmp`` that says READY once its threads run.
SCRIPT = """
import sys, threading
from heartbeat_sync import Heartbeat
url, ws, tmp, interval = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
hb = Heartbeat(url, ws, interval_seconds=interval, results_file=tmp + "/results.jsonl",
               cursor_file=tmp + "/cursor", seen_file=tmp + "/seen",
               configs_dir=tmp + "/configs", exit_timeout=None,
               self_message_cooldown=3600)
hb.start_thread()
print("READY", flush=True)
threading.Event().wait()
"""


def start_writer(tmp: Path, url: str, workspace_id: str, interval: float) -> subprocess.Popen[str]:
    """Start a child Heartbeat on ``tmp``'s files (token in ``tmp/configs``); return once it
    runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, url, workspace_id, str(tmp), str(interval)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


def kill_writer(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the child, at whatever it is doing, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout:
        proc.stdout.close()
