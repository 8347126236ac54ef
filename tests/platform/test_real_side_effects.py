"""Wake-ups and notifications against the real server."""

from __future__ import annotations

from typing import Any

from heartbeat_sync import Heartbeat

from ._real import AgentServer, RealPlatform, wait_until, write_token

INTERVAL = 0.5


def test_the_wakeup_and_the_notification_are_accepted(
    real_platform: RealPlatform, agent_server: AgentServer, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("woken")
    b, tb = real_platform.create_workspace("peer")
    real_platform.register(a, ta, url=agent_server.url)
    write_token(hb_files["configs_dir"], ta)
    with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files) as hb:
        assert real_platform.peer_message(a, b, tb, "numbers attached").status_code == 200
        assert wait_until(lambda: hb.status().wakeups_sent == 1)
        assert wait_until(lambda: hb.status().notifications_sent == 1)
        assert hb.status().drops == {}
    # The peer's message, then the wake-up, reached A's agent.
    assert len(agent_server.received) == 2
    wakeup = agent_server.received[1]
    assert wakeup["params"]["message"]["parts"][0]["text"].startswith(
        "Delegation results are ready"
    )
    text = wakeup["params"]["message"]["parts"][0]["text"]
    assert f"Peer response from {b[:8]}" in text
    # The platform's marker for it, and no parent to report to: a top-level workspace's
    # parent on August is the platform's own root ("Org Concierge"), no agent to report to.
    assert wakeup["params"]["metadata"] == {"source_type": "self-delegation-result"}
    assert "Org Concierge" not in text and "send_message_to_user" in text

    def rows(kind: str) -> list[dict[str, Any]]:
        every = real_platform.activity(a, ta)
        if kind == "wakeup":
            return [r for r in every if r["activity_type"] == "a2a_receive" and r["source_id"] == a]
        return [r for r in every if r.get("method") == "notify"]

    # The proxy writes the wake-up's row from a goroutine, possibly after it answered.
    assert wait_until(lambda: len(rows("wakeup")) == 1)
    assert rows("wakeup")[0]["status"] == "ok"
    notes = rows("notify")
    assert len(notes) == 1
    assert "numbers attached" in str(notes[0].get("response_body")), notes[0]


def test_notifications_turned_off_pause_notifications(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("quiet")
    c, _ = real_platform.failing_target()
    real_platform.register(a, ta, delivery_mode="poll")
    real_platform.abilities(a, talk_to_user_enabled=False)
    write_token(hb_files["configs_dir"], ta)
    hb = Heartbeat(
        real_platform.url, a, interval_seconds=INTERVAL, self_message_cooldown=0.0, **hb_files
    )
    with hb:
        real_platform.delegate(a, ta, c, "first")
        assert wait_until(lambda: hb.status().drops.get("notify_disabled", 0) == 1)
        real_platform.delegate(a, ta, c, "second")
        assert wait_until(lambda: hb.status().results_delivered == 2)
        assert hb.flush(timeout=5.0)
        # The second result's notification is not sent while notifications are paused.
        status = hb.status()
        assert status.notifications_sent == 0
        assert status.drops.get("notify_disabled", 0) == 2
    notes = [r for r in real_platform.activity(a, ta) if r.get("method") == "notify"]
    assert notes == []


def test_a_workspace_without_an_agent_url_is_not_woken_again_and_again(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    """Beats alone bring an external workspace online, with no agent URL: the platform answers
    its wake-up ``503 workspace has no URL`` (August too: it queues only for a workspace still
    waiting for its agent), which no retry can change."""
    a, ta = real_platform.create_workspace("beats-only")
    c, _ = real_platform.failing_target()
    write_token(hb_files["configs_dir"], ta)
    with Heartbeat(real_platform.url, a, interval_seconds=INTERVAL, **hb_files) as hb:
        real_platform.delegate(a, ta, c, "summarise")
        assert wait_until(lambda: hb.status().results_delivered == 1)
        assert wait_until(lambda: hb.status().drops.get("wakeup_failed", 0) == 1, timeout=5)
        assert hb.flush(timeout=2.0)
        assert hb.status().wakeups_sent == 0
    assert real_platform.row(a)["status"] == "online"
