"""Wake-ups and notifications: their shape, cooldown, retries, pauses, and their own thread."""

from __future__ import annotations

import uuid
from pathlib import Path

from heartbeat_sync.testing import FakePlatform, Response, Workspace

from .conftest import HeartbeatFactory, read_lines, wait_for_beats, wait_until


def _wakeups(platform: FakePlatform, ws: Workspace) -> list[dict[str, object]]:
    return platform.a2a_messages(ws.id)


def _text(message: dict[str, object]) -> str:
    params = message["params"]
    assert isinstance(params, dict)
    parts = params["message"]["parts"]
    assert len(parts) == 1
    return str(parts[0]["text"])


def test_wakeup_shape_and_report_to_parent(
    platform: FakePlatform, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    parent = platform.add_workspace(name="team-lead")
    ws = platform.add_workspace(name="worker", parent_id=parent.id)
    did = platform.add_delegation(ws.id, status="completed", summary="wrote the report")
    with make_hb(workspace_id=ws.id) as hb:
        assert platform.wait_for(lambda: len(_wakeups(platform, ws)) == 1, timeout=5)
        assert wait_until(lambda: hb.status().wakeups_sent == 1)
    (request,) = platform.requests_for("a2a", ws.id)
    assert request.headers["x-workspace-id"] == ws.id
    assert request.headers["authorization"] == f"Bearer {ws.token}"
    body = request.json()
    assert body["method"] == "message/send"
    message = body["params"]["message"]
    assert message["role"] == "user"
    uuid.UUID(message["messageId"])
    assert message["parts"][0]["kind"] == "text"
    text = message["parts"][0]["text"]
    assert text.startswith("Delegation results are ready. Review them and take appropriate action:")
    assert f"- [completed] Delegation {did[:8]}: wrote the report" in text
    assert "IMPORTANT: Report these results back to your parent 'team-lead'" in text


def test_wakeup_without_parent(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    peer = platform.add_workspace()
    platform.add_activity(ws.id, source_id=peer.id, text="hello", summary="greeting")
    with make_hb():
        assert platform.wait_for(lambda: len(_wakeups(platform, ws)) == 1, timeout=5)
    text = _text(_wakeups(platform, ws)[0])
    assert text.startswith("Delegation results are ready (from a2a_receive via activity_logs).")
    assert f"- [completed] Peer response from {peer.id[:8]}: greeting" in text
    assert text.endswith("Report results using send_message_to_user to notify the user.")


def test_parent_lookup_failure_is_retried_later(
    platform: FakePlatform, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    parent = platform.add_workspace(name="lead")
    ws = platform.add_workspace(parent_id=parent.id)
    # The parent's own lookup fails once (500 is not a retried status); the workspace's
    # lookup of itself is left alone (the beat thread reads it too, for its team).
    platform.fault("workspace", status=500, times=1, workspace_id=parent.id)
    platform.add_delegation(ws.id, status="completed")
    with make_hb(workspace_id=ws.id) as hb:
        assert platform.wait_for(lambda: len(_wakeups(platform, ws)) == 1, timeout=5)
        platform.add_delegation(ws.id, status="completed")
        assert platform.wait_for(lambda: len(_wakeups(platform, ws)) == 2, timeout=5)
        assert wait_until(lambda: hb.status().wakeups_sent == 2)
    first, second = (_text(m) for m in _wakeups(platform, ws))
    assert "parent" not in first
    assert "your parent 'lead'" in second


def test_cooldown_coalesces_results_into_one_wakeup(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    first = platform.add_delegation(ws.id, status="completed")
    results = tmp_path / "results.jsonl"
    with make_hb(self_message_cooldown=1.5) as hb:
        assert platform.wait_for(lambda: len(_wakeups(platform, ws)) == 1, timeout=5)
        held = [platform.add_delegation(ws.id, status="completed") for _ in range(3)]
        assert wait_until(lambda: len(read_lines(results)) == 4)
        assert len(_wakeups(platform, ws)) == 1  # still inside the cooldown
        assert platform.wait_for(lambda: len(_wakeups(platform, ws)) == 2, timeout=5)
        # No third: none in the cycles of more than a cooldown (0.2 s apart).
        assert wait_for_beats(platform, 10)
        assert len(_wakeups(platform, ws)) == 2
        assert hb.status().wakeups_sent == 2
    second = _text(_wakeups(platform, ws)[1])
    assert first[:8] in _text(_wakeups(platform, ws)[0])
    assert all(did[:8] in second for did in held)
    times = [r.time for r in platform.requests_for("a2a", ws.id) if r.status == 200]
    assert times[1] - times[0] >= 1.4


def test_busy_agent_wakeup_is_retried_after_retry_after(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.set_a2a_responses(
        ws.id,
        [
            Response(503, {"error": "busy", "busy": True, "retry_after": 1}, {"Retry-After": "1"}),
            Response(503, {"error": "waking", "waking": True}, {"Retry-After": "0"}),
        ],
    )
    platform.add_delegation(ws.id, status="completed")
    with make_hb(self_message_cooldown=60.0) as hb:
        assert platform.wait_for(lambda: len(_wakeups(platform, ws)) == 1, timeout=5)
        assert wait_until(lambda: hb.status().wakeups_sent == 1)
    attempts = platform.requests_for("a2a", ws.id)
    assert [r.status for r in attempts] == [503, 503, 200]
    assert attempts[1].time - attempts[0].time >= 0.9
    assert hb.status().drops.get("wakeup_failed", 0) == 0


def test_wakeup_retries_stop_at_the_deadline(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("a2a", status=503, headers={"Retry-After": "0"}, body={"busy": True})
    platform.add_delegation(ws.id, status="completed")
    with make_hb(wakeup_retry_deadline=0.5) as hb:
        assert wait_until(lambda: hb.status().drops.get("wakeup_failed") == 1, timeout=5)
        n = len(platform.requests_for("a2a", ws.id))
        assert n >= 2
        # No more attempts (with Retry-After: 0 one would come at once): none in three cycles.
        assert wait_for_beats(platform, 3)
        assert len(platform.requests_for("a2a", ws.id)) == n


def test_one_notification_per_result_in_the_reference_wording(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    peer = platform.add_workspace()
    platform.add_delegation(
        ws.id, status="completed", summary="s" * 150, response_preview="p" * 300
    )
    platform.add_delegation(ws.id, status="failed", summary="broke")
    with make_hb() as hb:
        assert platform.wait_for(lambda: len(platform.notifications(ws.id)) == 2, timeout=5)
        platform.add_activity(ws.id, source_id=peer.id, text="reply", summary="")
        assert platform.wait_for(lambda: len(platform.notifications(ws.id)) == 3, timeout=5)
        assert wait_until(lambda: hb.status().notifications_sent == 3)
    notes = platform.notifications(ws.id)
    assert f"Delegation completed: {'s' * 100}\nResult: {'p' * 200}" in notes
    assert "Delegation failed: broke" in notes
    assert notes[2] == "Delegation completed: (no summary)\nResult: reply"
    body = platform.requests_for("notify")[0].json()
    assert set(body) == {"message"}


def test_notifications_turned_off_are_paused_not_repeated(
    platform: FakePlatform, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    ws = platform.add_workspace(talk_to_user_enabled=False)
    for _ in range(3):
        platform.add_delegation(ws.id, status="completed")
    with make_hb(workspace_id=ws.id) as hb:
        assert wait_until(lambda: hb.status().drops.get("notify_disabled") == 3, timeout=5)
        for _ in range(2):
            platform.add_delegation(ws.id, status="completed")
        assert wait_until(lambda: hb.status().drops.get("notify_disabled") == 5, timeout=5)
    notify = platform.requests_for("notify")
    assert [r.status for r in notify] == [403]
    assert hb.status().notifications_sent == 0
    assert hb.status().wakeups_sent >= 1


def test_a_hanging_a2a_never_delays_a_beat(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("a2a", delay=30.0)
    platform.fault("notify", delay=1.0)
    platform.add_delegation(ws.id, status="completed")
    with make_hb(interval_seconds=0.1) as hb:
        assert platform.wait_for_requests("a2a", 1, timeout=5)
        # Eight beats while the wake-up hangs (a beat behind it would wait 30 s).
        assert wait_for_beats(platform, 8, timeout=10)
        assert hb.status().wakeups_sent == 0  # the wake-up is still hanging
        platform.stop()


def test_full_queue_drops_and_counts(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    platform.fault("a2a", delay=5.0)
    results = tmp_path / "results.jsonl"
    hb = make_hb(interval_seconds=0.05)
    hb._worker.max_queue = 2  # a small queue, so that a few batches fill it
    with hb:
        for i in range(6):
            platform.add_delegation(ws.id, status="completed")
            assert wait_until(lambda i=i: len(read_lines(results)) == i + 1)
        assert wait_until(lambda: hb.status().drops.get("queue_full", 0) >= 1)
        assert wait_until(lambda: hb.status().results_delivered == 6)
        status = hb.status()
        assert status.side_effects_dropped >= 1
        assert status.queue_depth >= 2
        assert status.results_delivered == 6  # results are never dropped, only side effects
        platform.stop()


def test_wakeups_do_not_starve_notifications(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    # Every wake-up takes longer than a beat, and results keep arriving: with no cooldown a
    # wake-up is due again the moment the last one ends.
    platform.fault("a2a", delay=0.2)
    results = tmp_path / "results.jsonl"
    with make_hb(interval_seconds=0.05, self_message_cooldown=0.0) as hb:
        for i in range(12):
            platform.add_delegation(ws.id, status="completed")
            assert wait_until(lambda i=i: len(read_lines(results)) == i + 1, timeout=5)
            assert wait_for_beats(platform, 2)  # the next result a couple of cycles later
        assert hb.status().wakeups_sent >= 2
        assert hb.status().notifications_sent >= 2  # while results were still arriving
