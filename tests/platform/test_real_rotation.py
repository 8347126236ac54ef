"""A token rotated on the real server: the Heartbeat recovers once the new token is on disk."""

from __future__ import annotations

import time
from typing import Any

from heartbeat_sync import Heartbeat

from ._real import RealPlatform, wait_until, write_token

INTERVAL = 1.0


def test_a_rotated_token_recovers_within_two_intervals_after_the_file_changes(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("rotated")
    c, _ = real_platform.failing_target()
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        new_token = real_platform.rotate(a)
        # The platform refuses the old token at once; the new one reaches the file later.
        assert wait_until(lambda: hb.status().consecutive_failures >= 2)
        assert hb.status().state == "degraded"
        ok_before = hb.status().beats_ok
        write_token(hb_files["configs_dir"], new_token)
        changed = time.monotonic()
        assert wait_until(lambda: hb.status().beats_ok > ok_before, timeout=2 * INTERVAL + 5)
        assert time.monotonic() - changed <= 2 * INTERVAL + 0.1
        assert hb.status().state == "healthy"
        # The polls use the new token too: a delegation made now is delivered.
        did = real_platform.delegate(a, new_token, c, "after the rotation")
        assert wait_until(
            lambda: (
                did in hb_files["results_file"].read_text()
                if hb_files["results_file"].exists()
                else False
            )
        )
    assert real_platform.row(a)["status"] == "online"
