"""A wake-up the platform cannot deliver because the workspace has no agent URL."""

from __future__ import annotations

from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, wait_until

NO_URL = {"error": "workspace has no URL", "status": "online"}


def test_a_wakeup_answered_no_url_is_dropped_at_once_not_retried(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    """The real server answers ``503 workspace has no URL`` (no Retry-After) for a workspace
    that beats but never registered an agent: retrying for minutes cannot change that."""
    platform.fault("a2a", status=503, body=NO_URL)
    platform.add_delegation(ws.id, status="completed")
    with make_hb(self_message_cooldown=60.0, wakeup_retry_deadline=300.0) as hb:
        assert wait_until(lambda: hb.status().drops.get("wakeup_failed", 0) == 1, timeout=3)
        assert hb.flush(timeout=1.0)
        assert hb.status().wakeups_sent == 0
    assert len(platform.requests_for("a2a", ws.id)) == 1


def test_a_busy_503_is_still_retried(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("a2a", status=503, headers={"Retry-After": "0"}, body={"busy": True}, times=1)
    platform.add_delegation(ws.id, status="completed")
    with make_hb(self_message_cooldown=60.0) as hb:
        assert wait_until(lambda: hb.status().wakeups_sent == 1, timeout=5)
    assert [r.status for r in platform.requests_for("a2a", ws.id)] == [503, 200]
