"""What the August 2026 platform adds, used, and the May one served as before: against the
real servers (the fake's side is tests/test_generations.py)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat

from ..conftest import LogCapture
from ._real import RealPlatform, wait_until, write_token
from .conftest import TENANT_ORG_ID

INTERVAL = 0.3


def _heartbeat(real: RealPlatform, ws_id: str, files: dict[str, Any], **kw: Any) -> Heartbeat:
    kw.setdefault("interval_seconds", INTERVAL)
    return Heartbeat(real.url, ws_id, exit_timeout=None, **files, **kw)


def _results(files: dict[str, Any]) -> list[str]:
    path: Path = files["results_file"]
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def quiet_logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    logger = logging.getLogger("heartbeat_sync")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_beats_carry_is_busy_and_the_generation_they_saw(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    """August stores both fields (May takes them and ignores them: every beat is answered)."""
    a, ta = real_platform.create_workspace("gen-busy")
    write_token(hb_files["configs_dir"], ta)
    august = real_platform.august
    with _heartbeat(real_platform, a, hb_files) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2)
        hb.is_busy = True  # busy, though no task is counted
        if august:
            # What the platform does when it wakes a workspace: a new desired generation,
            # carried by every beat's reply from then on.
            real_platform.sql(f"UPDATE workspaces SET desired_generation = 2 WHERE id = '{a}'")
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 3)
        assert hb.status().beats_failed == 0
    assert real_platform.row(a)["status"] == "online"
    if august:
        stored = real_platform.sql(
            f"SELECT observed_generation || ',' || is_busy FROM workspaces WHERE id = '{a}'"
        )
        assert stored == "2,true"


def test_handled_rows_are_acknowledged_where_the_platform_takes_acks(
    real_platform: RealPlatform, hb_files: dict[str, Any], quiet_logs: LogCapture
) -> None:
    a, ta = real_platform.create_workspace("acked")
    b, tb = real_platform.create_workspace("acked-peer")
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    with _heartbeat(real_platform, a, hb_files, self_message_cooldown=3600.0) as hb:
        for i in range(3):
            assert real_platform.peer_message(a, b, tb, f"note {i}").status_code == 200
        assert wait_until(lambda: len(_results(hb_files)) == 3)
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 2)
    rows = real_platform.activity(a, ta, type="a2a_receive", source="agent")
    if real_platform.august:
        acked = real_platform.sql(
            f"SELECT last_acked_seq FROM inbox_delivery_state WHERE workspace_id = '{a}'"
        )
        # Every handled message is acknowledged; the rows of the Heartbeat's own wake-up,
        # written after the poll that handled them, are acknowledged by a later poll (with
        # the stream up, an event's or the safety schedule's): never beyond the last row.
        peers = [r["seq"] for r in rows if r.get("source_id") == b]
        assert len(peers) == 3
        assert max(peers) <= int(acked) <= max(r["seq"] for r in rows)
    else:
        assert all("seq" not in r for r in rows)  # nothing to acknowledge, nothing asked
    assert not [r for r in quiet_logs.records if r.levelno >= logging.WARNING]


@pytest.mark.generations("2026-08")
def test_a_message_logged_twice_behind_a_busy_agent_is_delivered_once(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    """August queues a message to a workspace whose agent has not registered yet, and logs it
    twice: an (ingest) row and a (queued: target busy) row."""
    a, ta = real_platform.create_workspace("queued-for")
    b, tb = real_platform.create_workspace("queued-from")
    first = real_platform.peer_message(a, b, tb, "waiting for you")
    assert first.status_code == 202, first.text

    def summaries() -> list[str]:
        rows = real_platform.activity(a, ta, type="a2a_receive")
        return sorted(r["summary"].rsplit("(", 1)[-1] for r in rows)

    # The second row is written after the 202, as the server queues the message.
    assert wait_until(lambda: summaries() == ["ingest)", "queued: target busy)"]), summaries()
    write_token(hb_files["configs_dir"], ta)
    with _heartbeat(real_platform, a, hb_files, register=True, self_message_cooldown=3600.0) as hb:
        assert wait_until(lambda: len(_results(hb_files)) >= 1)
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 3)
        assert hb.status().results_delivered == 1
    assert len(_results(hb_files)) == 1


def test_a_rotation_announced_has_the_next_requests_carry_the_new_token(
    real_platform: RealPlatform, hb_files: dict[str, Any], quiet_logs: LogCapture
) -> None:
    """The platform announces a rotation on the stream; with the new token on disk by then,
    no request is refused for the old one."""
    a, ta = real_platform.create_workspace("rotation-event")
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    with _heartbeat(real_platform, a, hb_files, interval_seconds=30.0) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        assert wait_until(lambda: (hb.status().stream or _no_stream()).connects >= 1)
        events = (hb.status().stream or _no_stream()).events
        threading.Event().wait(0.5)  # the first cycle's polls and team lookup are over
        quiet_logs.records.clear()
        new = real_platform.rotate(a)
        write_token(hb_files["configs_dir"], new)
        assert wait_until(lambda: (hb.status().stream or _no_stream()).events > events)
        hb.beat_now()
        assert wait_until(lambda: hb.status().beats_ok >= 2)
        assert hb.status().beats_failed == 0
    assert not [r for r in quiet_logs.records if r.levelno >= logging.WARNING]


def _no_stream() -> Any:
    raise AssertionError("the event stream is not open")


# --- the variant server: a tenant guard, and the delegation ledger ------------------------------


@pytest.mark.generations("2026-08")
def test_a_tenant_that_wants_its_org_id_is_one_error_naming_the_setting(
    tenant_platform: RealPlatform, tmp_path: Path, quiet_logs: LogCapture
) -> None:
    a, ta = tenant_platform.create_workspace("tenant")
    files = _files(tmp_path / "without")
    write_token(files["configs_dir"], ta)
    with _heartbeat(tenant_platform, a, files) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 4)  # the registry routes are open
        status = hb.status()
    assert status.last_error is not None and "MOLECULE_ORG_ID" in status.last_error
    errors = [r.getMessage() for r in quiet_logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "org_id" in errors[0]
    assert not [r for r in quiet_logs.records if r.levelno == logging.WARNING]
    files = _files(tmp_path / "with")
    write_token(files["configs_dir"], ta)
    with _heartbeat(tenant_platform, a, files, org_id=TENANT_ORG_ID) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2)
        assert hb.status().last_error is None


@pytest.mark.generations("2026-08")
def test_a_delegation_the_workspace_received_is_never_delivered_as_its_result(
    tenant_platform: RealPlatform, tmp_path: Path
) -> None:
    """With the ledger written, August lists a delegation to a workspace in its own list,
    marked direction received."""
    a, ta = tenant_platform.create_workspace("caller")
    b, tb = tenant_platform.create_workspace("callee")
    tenant_platform.register(b, tb, delivery_mode="poll")
    did = tenant_platform.delegate(a, ta, b, "summarise")
    listed = tenant_platform.request("GET", f"/workspaces/{b}/delegations", token=tb).json()
    assert wait_until(
        lambda: any(
            r.get("direction") == "received" and r.get("status") in ("completed", "failed")
            for r in tenant_platform.request("GET", f"/workspaces/{b}/delegations", token=tb).json()
        )
    ), listed
    files = _files(tmp_path)
    write_token(files["configs_dir"], tb)
    with _heartbeat(tenant_platform, b, files, org_id=TENANT_ORG_ID) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 3)
        assert wait_until(lambda: len(_results(files)) >= 1)
        n = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= n + 2)
    # What B delivers is the message A's delegation sent it (an activity row: this server
    # logs that message twice, with one messageId, and it is delivered once), never the
    # delegation itself as if B had delegated it.
    rows = tenant_platform.activity(b, tb, type="a2a_receive", source="agent")
    delivered = [json.loads(line)["delegation_id"] for line in _results(files)]
    assert len(delivered) == 1 and delivered[0] in [r["id"] for r in rows]
    assert did not in delivered


def _files(folder: Path) -> dict[str, Any]:
    configs = folder / "configs"
    configs.mkdir(parents=True)
    return {
        "results_file": folder / "results.jsonl",
        "cursor_file": folder / "cursor",
        "seen_file": folder / "seen",
        "configs_dir": configs,
    }
