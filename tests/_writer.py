"""A Heartbeat in a child process, for the tests that SIGKILL one and start its successor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping

#: The child: a Heartbeat on the files given (as JSON) that says READY once its threads run.
SCRIPT = """
import json, sys, threading
from heartbeat_sync import Heartbeat
url, ws, files, interval = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
hb = Heartbeat(url, ws, interval_seconds=interval, exit_timeout=None, self_message_cooldown=3600,
               **files)
hb.start_thread()
print("READY", flush=True)
threading.Event().wait()
"""


def start_writer(
    files: Mapping[str, object], url: str, workspace_id: str, interval: float
) -> subprocess.Popen[str]:
    """Start a child Heartbeat on ``files`` (Heartbeat's file keywords, as
    ``FakePlatform.agent_files`` returns them); return once it runs."""
    laid_out = json.dumps({name: str(path) for name, path in files.items()})
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, url, workspace_id, laid_out, str(interval)],
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
