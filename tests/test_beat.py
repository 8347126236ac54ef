"""The beat: its body, wedge state, runtime metadata, counters, token and inbound secret."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from heartbeat_sync import clear_wedge, is_wedged, mark_wedged, wedge_reason
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, poll_once, wait_until


def _beats(platform: FakePlatform, ws: Workspace, n: int) -> list[dict[str, object]]:
    assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= n, timeout=5)
    return platform.heartbeats(ws.id)


def test_body_has_the_reference_fields(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(interval_seconds=5.0)
    hb.record_success()
    hb.record_error("boom")
    hb.record_error("bang")
    hb.active_tasks = 2
    with hb:
        body = _beats(platform, ws, 1)[0]
    assert body["workspace_id"] == ws.id
    assert body["error_rate"] == pytest.approx(2 / 3)
    assert body["sample_error"] == "bang"
    assert body["active_tasks"] == 2
    assert body["current_task"] == ""
    assert isinstance(body["uptime_seconds"], int)
    assert "runtime_state" not in body
    assert "runtime_metadata" not in body


def test_is_busy_follows_the_tasks_unless_the_agent_says_otherwise(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(interval_seconds=5.0)
    assert hb.is_busy is False
    with hb:
        assert _beats(platform, ws, 1)[-1]["is_busy"] is False
        hb.active_tasks = 1
        hb.beat_now()
        assert _beats(platform, ws, 2)[-1]["is_busy"] is True
        hb.is_busy = False  # busy or not whatever the tasks, as the agent says
        hb.beat_now()
        assert _beats(platform, ws, 3)[-1]["is_busy"] is False
        hb.is_busy = None  # back to the tasks
        hb.beat_now()
        assert _beats(platform, ws, 4)[-1]["is_busy"] is True
    with pytest.raises(ValueError, match="is_busy"):
        hb.is_busy = "yes"  # type: ignore[assignment]
    # An older server (the May one) takes the field and ignores it: every beat was answered.
    assert hb.status().beats_failed == 0


def test_wedge_state_is_reported_and_cleared(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    mark_wedged("claude sdk stuck in a retry loop")
    assert is_wedged() and wedge_reason() == "claude sdk stuck in a retry loop"
    hb = make_hb()
    hb.record_error("ordinary error")
    with hb:
        wedged = _beats(platform, ws, 1)[0]
        clear_wedge()
        n = len(platform.heartbeats(ws.id))
        healthy = _beats(platform, ws, n + 1)[-1]
    assert wedged["runtime_state"] == "wedged"
    assert wedged["sample_error"] == "claude sdk stuck in a retry loop"
    assert "runtime_state" not in healthy
    assert not is_wedged() and wedge_reason() == ""


def test_runtime_metadata_from_the_callable(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    meta = {"capabilities": {"heartbeat": True, "session": False}, "idle_timeout_seconds": 600}
    with make_hb(runtime_metadata=lambda: meta):
        body = _beats(platform, ws, 1)[0]
    assert body["runtime_metadata"] == meta
    assert platform.workspace(ws.id).runtime_metadata == meta


@pytest.mark.parametrize("source", [lambda: None, lambda: 1 / 0, lambda: ["not", "a", "dict"]])
def test_runtime_metadata_omitted_when_nothing_yields(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, source: object
) -> None:
    with make_hb(runtime_metadata=source) as hb:
        body = _beats(platform, ws, 1)[0]
        assert wait_until(lambda: hb.status().beats_ok >= 1)
    assert "runtime_metadata" not in body
    assert hb.status().beats_failed == 0


ADAPTER = """
class _Caps:
    def to_dict(self):
        return {"heartbeat": True, "scheduler": False, "session": True, "status_mgmt": False,
                "retry": False, "activity_decoration": False, "channel_dispatch": False}

class Adapter:
    def capabilities(self):
        return _Caps()
    def idle_timeout_override(self):
        return IDLE
"""


@pytest.mark.parametrize(("idle", "expected"), [(600, 600), (0, None), (None, None)])
def test_runtime_metadata_from_the_adapter_module(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    idle: int | None,
    expected: int | None,
) -> None:
    name = f"hbs_test_adapter_{idle}"
    (tmp_path / f"{name}.py").write_text(ADAPTER.replace("IDLE", repr(idle)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ADAPTER_MODULE", name)
    with make_hb():
        body = _beats(platform, ws, 1)[0]
    sys.modules.pop(name, None)
    meta = body["runtime_metadata"]
    assert isinstance(meta, dict)
    assert meta["capabilities"] == {
        "heartbeat": True,
        "scheduler": False,
        "session": True,
        "status_mgmt": False,
        "retry": False,
        "activity_decoration": False,
        "channel_dispatch": False,
    }
    assert meta.get("idle_timeout_seconds") == expected


def test_adapter_module_that_does_not_import_is_ignored(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ADAPTER_MODULE", "no_such_module_for_heartbeat_sync")
    with make_hb() as hb:
        body = _beats(platform, ws, 1)[0]
        assert wait_until(lambda: hb.status().beats_ok >= 1)
    assert "runtime_metadata" not in body


def test_error_counters_reset_only_after_a_2xx_beat(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("heartbeat", status=500, times=2)
    hb = make_hb()
    hb.record_error("e1")
    with hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        assert hb.error_rate == 0.0
        hb.record_success()
        assert hb.error_rate == 0.0
    beats = [r.json() for r in platform.requests_for("heartbeat")]
    assert [b["error_rate"] for b in beats[:3]] == [1.0, 1.0, 1.0]  # two failures, then success
    status = hb.status()
    assert status.beats_failed == 2
    assert status.beats_ok >= 1


def test_a_500_beat_is_a_failure(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("heartbeat", status=500, body={"error": "failed to update"})
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().consecutive_failures >= 2)
        status = hb.status()
    assert status.beats_ok == 0
    assert status.state in ("degraded", "stopped")
    assert "500" in (status.last_error or "")


def test_token_from_the_configs_dir(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb():
        _beats(platform, ws, 1)
    sent = platform.requests_for("heartbeat")[0].headers["authorization"]
    assert sent == f"Bearer {ws.token}"


def test_token_from_the_environment_when_no_file(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "configs" / ".auth_token").unlink()
    assert ws.token
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", ws.token)
    with make_hb() as hb:
        _beats(platform, ws, 1)
        assert wait_until(lambda: hb.status().beats_ok >= 1)


def test_401_rereads_the_token_and_retries_once_with_the_same_body(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    # No event stream: a stream that connects after the rotation would re-read the token
    # first (the threads share it), and the beat would never see its 401.
    hb = make_hb(
        interval_seconds=10.0,
        runtime_metadata=lambda: {"capabilities": {"retry": True}},
        events=False,
    )
    with hb:
        _beats(platform, ws, 1)
        new_token = platform.rotate_token(ws.id)
        platform.write_token(ws.id, hb.configs_dir)
        platform.clear_requests()
        hb.beat_now()
        assert platform.wait_for_requests("heartbeat", 2, timeout=5)
        assert wait_until(lambda: hb.status().beats_ok >= 2)
    first, second = platform.requests_for("heartbeat")[:2]
    assert first.status == 401 and second.status == 200
    assert first.headers["authorization"] != second.headers["authorization"]
    assert second.headers["authorization"] == f"Bearer {new_token}"
    assert first.json() == second.json()
    assert "runtime_metadata" in second.json()
    assert hb.status().beats_failed == 0


def test_401_with_no_new_token_is_one_failed_beat(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.rotate_token(ws.id)  # the file still holds the revoked token
    with make_hb(interval_seconds=10.0) as hb:
        assert platform.wait_for_requests("heartbeat", 2, timeout=5)
        assert wait_until(lambda: hb.status().beats_failed == 1)
    assert len(platform.requests_for("heartbeat")) == 2  # the beat and its single retry


def test_inbound_secret_is_saved_0600_and_only_when_changed(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    path = tmp_path / "configs" / ".platform_inbound_secret"
    with make_hb() as hb:
        assert wait_until(path.exists)
        first = os.stat(path)
        assert path.read_text() == platform.workspace(ws.id).inbound_secret
        assert first.st_mode & 0o777 == 0o600
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 2)
        assert os.stat(path).st_ino == first.st_ino  # not rewritten while unchanged
        secret = platform.rotate_inbound_secret(ws.id)
        assert wait_until(lambda: path.read_text() == secret)
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]


def test_no_secret_from_an_older_server(tmp_path: Path, make_hb: HeartbeatFactory) -> None:
    with FakePlatform(generation="APR") as old:
        ws = old.add_workspace()
        with make_hb(on=old, workspace_id=ws.id) as hb:
            assert wait_until(lambda: hb.status().beats_ok >= 2)
    assert not (tmp_path / "configs" / ".platform_inbound_secret").exists()


def test_a_changed_current_task_beats_at_once_an_unchanged_one_not_at_all(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(interval_seconds=30.0)
    with hb:
        n = len(_beats(platform, ws, 1))
        assert wait_until(lambda: platform.open_streams(ws.id) == 1)
        hb.current_task = "summarising"
        body = _beats(platform, ws, n + 1)[-1]
        assert body["current_task"] == "summarising"
        assert platform.wait_for_requests("activity", n + 1)  # that cycle's last request
        hb.current_task = "summarising"  # unchanged: no extra beat
        # A poll asked for after it comes alone: a cycle asked for by the change would beat.
        assert poll_once(platform, hb)
        assert len(platform.heartbeats(ws.id)) == n + 1


def test_a_netrc_entry_for_the_platform_does_not_replace_the_bearer_token(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elsewhere\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2)
    assert hb.status().beats_failed == 0
    for request in platform.requests:
        if request.route in ("heartbeat", "delegations", "activity"):
            assert request.headers["authorization"] == f"Bearer {ws.token}"


def test_the_environment_is_read_at_construction_only(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "hbs_late_adapter.py").write_text(ADAPTER.replace("IDLE", "600"))
    monkeypatch.syspath_prepend(str(tmp_path))
    hb = make_hb()
    monkeypatch.setenv("ADAPTER_MODULE", "hbs_late_adapter")  # too late for this Heartbeat
    with hb:
        body = _beats(platform, ws, 1)[0]
        assert wait_until(lambda: hb.status().beats_ok >= 1)
    sys.modules.pop("hbs_late_adapter", None)
    assert "runtime_metadata" not in body
