"""The library against both server generations the fake speaks: what the August 2026 platform
adds is used, and the May one is served as before (the same tests run against the real servers
in tests/platform/test_generations.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat
from heartbeat_sync.testing import FakePlatform, Workspace
from heartbeat_sync.wire import Credentials, PlatformClient, make_session

from .conftest import LogCapture, read_lines, wait_until

GENERATIONS = ["MAY", "2026-08"]


@pytest.fixture(params=GENERATIONS, ids=["2026-05", "2026-08"])
def fp(request: pytest.FixtureRequest) -> Iterator[FakePlatform]:
    with FakePlatform(generation=request.param) as platform:
        yield platform


@pytest.fixture
def august() -> Iterator[FakePlatform]:
    with FakePlatform(generation="2026-08") as platform:
        yield platform


def _heartbeat(platform: FakePlatform, ws: Workspace, tmp_path: Path, **options: Any) -> Heartbeat:
    files = platform.agent_files(ws.id, tmp_path)
    options.setdefault("interval_seconds", 0.2)
    options.setdefault("self_message_cooldown", 0.0)
    return Heartbeat(platform.url, ws.id, exit_timeout=None, **files, **options)


def _ids(tmp_path: Path) -> list[str]:
    return [json.loads(line)["delegation_id"] for line in read_lines(tmp_path / "results.jsonl")]


# --- the beat: is_busy and observed_generation -------------------------------------------------


def test_beats_say_the_last_generation_they_saw_once_a_reply_carried_one(
    fp: FakePlatform, tmp_path: Path
) -> None:
    ws = fp.add_workspace(name="gen")
    with _heartbeat(fp, ws, tmp_path) as hb:
        assert fp.wait_for(lambda: len(fp.heartbeats(ws.id)) >= 2)
        if fp.generation == "2026-08":
            fp.set_desired_generation(ws.id, 3)
            n = len(fp.heartbeats(ws.id))
            # The beat after the one whose reply carried 3 says it saw 3.
            assert fp.wait_for(lambda: len(fp.heartbeats(ws.id)) >= n + 2)
        beats = fp.heartbeats(ws.id)
        assert hb.status().beats_failed == 0
    assert all(isinstance(b["is_busy"], bool) for b in beats)
    if fp.generation == "2026-08":
        assert beats[1]["observed_generation"] == 0  # the first reply carried 0
        assert beats[-1]["observed_generation"] == 3
        assert fp.workspace(ws.id).observed_generation == 3
    else:
        assert all("observed_generation" not in b for b in beats)  # May sends none


def test_august_stores_is_busy_as_the_agent_says_it(august: FakePlatform, tmp_path: Path) -> None:
    ws = august.add_workspace(name="busy")
    hb = _heartbeat(august, ws, tmp_path, interval_seconds=5.0)
    with hb:
        assert august.wait_for(lambda: len(august.heartbeats(ws.id)) >= 1)
        assert august.workspace(ws.id).is_busy is False
        hb.is_busy = True
        hb.beat_now()
        assert august.wait_for(lambda: august.workspace(ws.id).is_busy is True)


# --- the wake-up: its marker, and the bearer the August platform asks of a self-message -------


def test_the_wakeup_is_accepted_with_its_marker_and_the_workspaces_bearer(
    fp: FakePlatform, tmp_path: Path
) -> None:
    ws = fp.add_workspace(name="woken", url="http://localhost:9")
    fp.add_delegation(ws.id, status="completed", response_preview="42")
    with _heartbeat(fp, ws, tmp_path) as hb:
        assert wait_until(lambda: hb.status().wakeups_sent == 1)
    (sent,) = fp.requests_for("a2a", ws.id)
    assert sent.headers["x-workspace-id"] == ws.id
    assert sent.headers["authorization"] == f"Bearer {ws.token}"
    assert sent.json()["params"]["metadata"] == {"source_type": "self-delegation-result"}


def test_a_self_message_refused_for_a_stale_token_is_sent_again_with_the_new_one(
    august: FakePlatform, tmp_path: Path
) -> None:
    # August refuses a self-message whose bearer is not the workspace's live one: the token
    # is read again and the message sent once more, as a beat would be.
    ws = august.add_workspace(name="rotated", url="http://localhost:9")
    configs = august.agent_files(ws.id, tmp_path)["configs_dir"]
    credentials = Credentials(configs)
    client = PlatformClient(august.url, ws.id, credentials, make_session)
    try:
        assert credentials.token() == ws.token  # held in memory from here on
        august.revoke_tokens(ws.id)
        new = august.issue_token(ws.id)
        august.write_token(ws.id, configs)
        assert client.self_message("results are ready", "m-1") == 200
        assert client.notify("done") == 200
    finally:
        client.close()
    a2a = august.requests_for("a2a", ws.id)
    assert [r.status for r in a2a] == [401, 200]
    assert a2a[1].headers["authorization"] == f"Bearer {new}"
    assert [r.status for r in august.requests_for("notify", ws.id)] == [200]


# --- acknowledging activity rows ----------------------------------------------------------------


def test_handled_rows_are_acknowledged_on_august_and_may_is_never_asked(
    fp: FakePlatform, tmp_path: Path
) -> None:
    ws = fp.add_workspace(name="acked")
    peer = fp.add_workspace(name="peer")
    first = fp.add_activity(ws.id, source_id=peer.id, text="first")
    with _heartbeat(fp, ws, tmp_path, self_message_cooldown=3600.0) as hb:
        assert wait_until(lambda: _ids(tmp_path) == [first])
        rows = [fp.add_activity(ws.id, source_id=peer.id, text=f"r{i}") for i in range(3)]
        assert wait_until(lambda: _ids(tmp_path) == [first, *rows])
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 2)
    acks = fp.requests_for("ack", ws.id)
    if fp.generation != "2026-08":
        assert acks == []  # May's rows carry no seq: nothing to acknowledge, nothing asked
        return
    # The rows the poll reads (from peers: the workspace's own notify rows are not read).
    read = [r["seq"] for r in fp.activity_rows(ws.id) if isinstance(r, dict) and r["source_id"]]
    assert fp.workspace(ws.id).last_acked_seq == max(read)
    values = [r.json()["acked_seq"] for r in acks]
    assert values == sorted(set(values))  # each ack past the one before, none repeated
    assert all(r.status == 200 for r in acks)


def test_rows_not_yet_written_are_not_acknowledged(august: FakePlatform, tmp_path: Path) -> None:
    ws = august.add_workspace(name="unwritten")
    peer = august.add_workspace(name="peer")
    first = august.add_activity(ws.id, source_id=peer.id, text="first")
    files = august.agent_files(ws.id, tmp_path)
    # The results file cannot be written: a directory stands where it goes.
    (tmp_path / "results.jsonl").mkdir()
    hb = Heartbeat(august.url, ws.id, interval_seconds=0.2, exit_timeout=None, **files)
    with hb:
        assert august.wait_for_requests("activity", 3)
    assert first and august.requests_for("ack", ws.id) == []


def test_a_platform_without_the_ack_route_is_not_asked_again_this_run(
    august: FakePlatform, tmp_path: Path, logs: LogCapture
) -> None:
    ws = august.add_workspace(name="no-ack", url="http://localhost:9")
    peer = august.add_workspace(name="peer")
    august.fault("ack", status=404, body=b"404 page not found")
    august.add_activity(ws.id, source_id=peer.id, text="one")
    with _heartbeat(august, ws, tmp_path, self_message_cooldown=3600.0) as hb:
        assert wait_until(lambda: len(_ids(tmp_path)) == 1)
        assert august.wait_for_requests("ack", 1)
        august.add_activity(ws.id, source_id=peer.id, text="two")
        assert wait_until(lambda: len(_ids(tmp_path)) == 2)
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 2)
    assert len(august.requests_for("ack", ws.id)) == 1
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]


# --- what the August platform says, understood -------------------------------------------------


def test_a_tenant_that_wants_its_org_id_is_one_error_naming_the_setting(
    tmp_path: Path, logs: LogCapture
) -> None:
    with FakePlatform(generation="2026-08", org_id="org-1") as platform:
        ws = platform.add_workspace(name="tenant")
        hb = _heartbeat(platform, ws, tmp_path)
        with hb:
            assert platform.wait_for_requests("activity", 4)
            status = hb.status()
        # The beats pass (the registry routes are open), the polls are refused: said once.
        assert status.beats_ok >= 1
        assert status.last_error is not None and "MOLECULE_ORG_ID" in status.last_error
        errors = logs.messages(logging.ERROR)
        assert len(errors) == 1 and "org_id" in errors[0] and "MOLECULE_ORG_ID" in errors[0]
        assert not [r for r in logs.records if r.levelno == logging.WARNING]
        # Only the schedule's polls: no request is tried again at once.
        assert len(platform.requests_for("activity")) <= status.beats_ok + 2
        # With the org id, the tenant is served.
        with _heartbeat(platform, ws, tmp_path / "second", org_id="org-1") as hb2:
            assert wait_until(lambda: hb2.status().beats_ok >= 2)
            assert hb2.status().last_error is None


def test_a_delegation_this_workspace_received_is_never_delivered(
    august: FakePlatform, tmp_path: Path, logs: LogCapture
) -> None:
    ws = august.add_workspace(name="callee")
    caller = august.add_workspace(name="caller")
    received = august.add_delegation(
        ws.id, status="completed", direction="received", source_id=caller.id
    )
    own = august.add_delegation(ws.id, status="completed", response_preview="mine")
    with _heartbeat(august, ws, tmp_path) as hb:
        assert wait_until(lambda: _ids(tmp_path) == [own])
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 2)
    assert received not in _ids(tmp_path)
    assert not any("not this workspace" in m for m in logs.messages(logging.WARNING))


def test_a_message_queued_behind_a_busy_agent_is_delivered_once(
    fp: FakePlatform, tmp_path: Path
) -> None:
    ws = fp.add_workspace(name="busy-target")
    peer = fp.add_workspace(name="peer")
    first = fp.add_activity(ws.id, source_id=peer.id, text="first")
    with _heartbeat(fp, ws, tmp_path, self_message_cooldown=3600.0) as hb:
        assert wait_until(lambda: _ids(tmp_path) == [first])
        rows = fp.queue_busy_message(ws.id, "wait behind the busy agent", sender_id=peer.id)
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 3)
    # August: the (ingest) row and the (queued: target busy) row; May: one row.
    assert len(rows) == (2 if fp.generation == "2026-08" else 1)
    assert _ids(tmp_path) == [first, rows[0]]


def test_the_platforms_root_is_no_parent_to_report_to(august: FakePlatform, tmp_path: Path) -> None:
    ws = august.add_workspace(name="top-level", url="http://localhost:9")
    august.add_delegation(ws.id, status="completed", response_preview="done")
    with _heartbeat(august, ws, tmp_path) as hb:
        assert wait_until(lambda: hb.status().wakeups_sent == 1)
    (sent,) = august.requests_for("a2a", ws.id)
    text = sent.json()["params"]["message"]["parts"][0]["text"]
    assert "Org Concierge" not in text
    assert "Report results using send_message_to_user" in text


def test_a_tenant_refusal_stays_in_last_error_after_the_beats_that_pass() -> None:
    """The tenant refusal is a standing condition: the beats pass (the registry routes are
    open) between the refused polls, and a passing beat must not hide why nothing arrives."""
    from heartbeat_sync.effects import SideEffectCounts
    from heartbeat_sync.loop.tally import Tally

    tally = Tally()
    tally.set_standing_error("tenant", "activity poll answered 400: set org_id or $MOLECULE_ORG_ID")
    tally.beat_succeeded(tally.beat_report())
    side = SideEffectCounts(wakeups_sent=0, notifications_sent=0, drops={}, queue_depth=0)
    status = tally.status(None, running=True, paused=False, side=side, workspace_status="online")
    assert status.last_error is not None and "MOLECULE_ORG_ID" in status.last_error
    # A beat that fails says its own error first; once beats pass again, the standing one.
    tally.beat_failed("heartbeat answered 502")
    assert "502" in (
        tally.status(
            None, running=True, paused=False, side=side, workspace_status="online"
        ).last_error
        or ""
    )
    tally.beat_succeeded(tally.beat_report())
    status = tally.status(None, running=True, paused=False, side=side, workspace_status="online")
    assert status.last_error is not None and "MOLECULE_ORG_ID" in status.last_error
