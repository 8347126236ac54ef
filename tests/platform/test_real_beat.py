"""Beats against the real server: the workspace row shows what the Heartbeat reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from heartbeat_sync import Heartbeat, clear_wedge, mark_wedged

from ._real import RealPlatform, wait_until, write_token

INTERVAL = 0.5


def _online(real_platform: RealPlatform, hb_files: dict[str, Any], name: str) -> tuple[str, str]:
    ws_id, token = real_platform.create_workspace(name)
    write_token(hb_files["configs_dir"], token)
    return ws_id, token


def test_beats_bring_the_workspace_online_with_a_fresh_last_heartbeat(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    ws_id, _ = _online(real_platform, hb_files, "beats")
    assert real_platform.row(ws_id)["status"] == "awaiting_agent"
    with Heartbeat(real_platform.url, ws_id, interval_seconds=INTERVAL, **hb_files) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2)
        row = real_platform.row(ws_id)
        assert row["status"] == "online"
        age = dt.datetime.now(dt.timezone.utc) - row["last_heartbeat_at"]
        assert age < dt.timedelta(seconds=5 * INTERVAL + 2)
        assert hb.status().beats_failed == 0
        assert hb.status().state == "healthy"


def test_task_counts_error_rate_and_the_wedge_reach_the_row(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    ws_id, _ = _online(real_platform, hb_files, "fields")
    # A slower beat than the other tests': the row of the beat that carried the errors must be
    # read before the next beat (no errors) replaces it, on a loaded machine too.
    with Heartbeat(real_platform.url, ws_id, interval_seconds=2.0, **hb_files) as hb:
        assert wait_until(lambda: real_platform.row(ws_id)["status"] == "online")
        hb.active_tasks = 2
        hb.current_task = "summarising the report"
        assert wait_until(
            lambda: (
                real_platform.row(ws_id)["current_task"] == "summarising the report"
                and real_platform.row(ws_id)["active_tasks"] == 2
            )
        )
        # Error rate: one success, three errors since the last beat -> 0.75, degraded. They are
        # recorded just after a beat, so that one beat reports all four.
        beats = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok > beats, step=0.005)
        hb.record_success()
        for _ in range(3):
            hb.record_error("upstream timed out")
        seen: dict[str, Any] = {}

        def degraded() -> bool:
            seen.update(real_platform.row(ws_id))  # one read: status and rate of one beat
            return bool(seen["status"] == "degraded")

        assert wait_until(degraded, timeout=10)
        assert seen["last_error_rate"] == 0.75
        assert seen["last_sample_error"] == "upstream timed out"
        # No errors since: the rate falls to 0 and the workspace recovers.
        assert wait_until(lambda: real_platform.row(ws_id)["status"] == "online")
        assert real_platform.row(ws_id)["last_error_rate"] == 0

        mark_wedged("SDK stuck in a retry loop")
        try:
            assert wait_until(lambda: real_platform.row(ws_id)["status"] == "degraded")
            assert real_platform.row(ws_id)["last_sample_error"] == "SDK stuck in a retry loop"
        finally:
            clear_wedge()
        assert wait_until(lambda: real_platform.row(ws_id)["status"] == "online")


def test_the_inbound_secret_file_equals_the_servers_and_is_private(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    ws_id, token = _online(real_platform, hb_files, "secret")
    secret = real_platform.register(ws_id, token, delivery_mode="poll")["platform_inbound_secret"]
    path = Path(hb_files["configs_dir"], ".platform_inbound_secret")
    with Heartbeat(real_platform.url, ws_id, interval_seconds=INTERVAL, **hb_files) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1 and path.exists())
    assert path.read_text() == secret
    assert path.stat().st_mode & 0o777 == 0o600
