"""A failed delegation is delivered as what happened: status failed and the platform's error.

On the real platform a delegation to a workspace without an agent leaves a ``delegate`` row
that still carries the request (summary ``Delegating to <uuid>``, preview
``{"delegation_id": ...}``) next to ``status: failed`` and ``error``.
"""

from __future__ import annotations

import json
from pathlib import Path

from heartbeat_sync import format_delegation_results, read_delegation_results
from heartbeat_sync.delivery.rows import delegation_results
from heartbeat_sync.effects.texts import notify_text, trigger_text
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, read_lines, wait_until

TARGET = "0d6af571-9e13-4da6-9d10-e400794d1a65"
DID = "7553a07f-436d-4a57-ab07-2420e339e38f"


def _failed_row(source: str, **extra: object) -> dict[str, object]:
    """The ``delegate`` row of a failed delegation, as the real server lists it."""
    row: dict[str, object] = {
        "created_at": "2026-12-02T19:44:27.557864Z",
        "delegation_id": DID,
        "error": "workspace has no URL",
        "id": "b4239e52-d1f0-41b5-8552-ce987c048598",
        "response_preview": json.dumps({"delegation_id": DID}),
        "source_id": source,
        "status": "failed",
        "summary": f"Delegating to {TARGET}",
        "target_id": TARGET,
        "type": "delegation",
    }
    row.update(extra)
    return row


def test_a_failed_row_becomes_a_record_of_the_failure() -> None:
    me = "ce9052da-5abb-4f02-8dee-163963bc90bc"
    (result,) = delegation_results([_failed_row(me)], me, set(), 1.0).results
    record = result.record
    assert record["status"] == "failed"
    assert record["error"] == "workspace has no URL"
    assert record["summary"] == "workspace has no URL"
    assert record["response_preview"] == ""
    # The wake-up and the notification say it failed, and why, once.
    assert notify_text(result) == "Delegation failed: workspace has no URL"
    text = trigger_text([result], "")
    assert "- [failed] Delegation 7553a07f: workspace has no URL" in text
    assert "Delegating to" not in text and text.count("workspace has no URL") == 1


def test_a_failed_row_without_an_error_keeps_its_summary() -> None:
    me = "ce9052da-5abb-4f02-8dee-163963bc90bc"
    row = _failed_row(me, error=None, summary="summarise the numbers")
    (result,) = delegation_results([row], me, set(), 1.0).results
    assert result.record["summary"] == "summarise the numbers"
    assert result.record["response_preview"] == ""
    row = _failed_row(me, error="", summary="")
    (result,) = delegation_results([row], me, set(), 1.0).results
    assert result.record["summary"] == "Delegation failed"


def test_format_says_that_a_delegation_failed_and_why() -> None:
    new = {"status": "failed", "summary": "workspace has no URL", "error": "workspace has no URL"}
    old = {  # written before, or by the reference runtime: the request's text
        "status": "failed",
        "summary": f"Delegating to {TARGET}",
        "response_preview": "",
        "error": "failed to reach workspace agent",
    }
    text = format_delegation_results([new, old])
    assert text.splitlines()[1:-1] == [
        "- [failed] workspace has no URL",
        f"- [failed] Delegating to {TARGET}",
        "  Failed: failed to reach workspace agent",
    ]


def test_a_completed_record_is_formatted_as_before() -> None:
    record = {"status": "completed", "summary": "Delegation completed (42)", "error": ""}
    text = format_delegation_results([{**record, "response_preview": "42"}])
    assert text.splitlines()[1:-1] == ["- [completed] Delegation completed (42)", "  Response: 42"]


def test_a_failed_delegation_reaches_the_agent_as_a_failure(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    platform.add_delegation(
        ws.id,
        delegation_id=DID,
        target_id=TARGET,
        status="failed",
        summary=f"Delegating to {TARGET}",
        response_preview=json.dumps({"delegation_id": DID}),
        error="workspace has no URL",
    )
    results = tmp_path / "results.jsonl"
    with make_hb() as hb:
        assert wait_until(lambda: len(read_lines(results)) == 1, timeout=5)
        assert wait_until(lambda: hb.status().notifications_sent == 1, timeout=5)
    (record,) = read_delegation_results(results)
    assert (record["status"], record["error"]) == ("failed", "workspace has no URL")
    assert record["summary"] == "workspace has no URL" and record["response_preview"] == ""
    assert platform.notifications(ws.id) == ["Delegation failed: workspace has no URL"]
    assert "[failed] workspace has no URL" in format_delegation_results([record])
