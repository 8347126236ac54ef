"""``heartbeat-sync run`` against the real server, configured as the platform's runtime is."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import CONFIG_ENV
from ._real import RealPlatform, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_run_from_the_runtimes_environment_keeps_the_workspace_online_until_sigterm(
    real_platform: RealPlatform, tmp_path: Path
) -> None:
    """Only the runtime's variables, the URL as runtimes often write it (trailing slash), the
    token in ``$MOLECULE_WORKSPACE_TOKEN``: beats keep the row fresh; SIGTERM ends it cleanly."""
    a, ta = real_platform.create_workspace("cli")
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(
        PLATFORM_URL=real_platform.url + "/",
        WORKSPACE_ID=a,
        MOLECULE_WORKSPACE_TOKEN=ta,
        CONFIGS_DIR=str(tmp_path / "configs"),
        DELEGATION_RESULTS_FILE=str(tmp_path / "results.jsonl"),
        DELEGATION_ACTIVITY_CURSOR_FILE=str(tmp_path / "cursor"),
        DELEGATION_SEEN_FILE=str(tmp_path / "seen"),
        HEARTBEAT_INTERVAL_SECONDS="5",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "heartbeat_sync", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: real_platform.row(a)["status"] == "online"), proc.poll()
        first = real_platform.row(a)["last_heartbeat_at"]
        # The next beat, an interval later, moves last_heartbeat_at on; still online.
        assert wait_until(lambda: real_platform.row(a)["last_heartbeat_at"] > first, timeout=15)
        row = real_platform.row(a)
        assert row["status"] == "online"
        assert dt.datetime.now(dt.timezone.utc) - row["last_heartbeat_at"] < dt.timedelta(
            seconds=10
        )
        assert (tmp_path / "configs" / ".platform_inbound_secret").exists()
    finally:
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert time.monotonic() - start < 5.0
    assert "received SIGTERM; stopping" in err
    assert " 0 failed" in err, err
    assert ta not in err
