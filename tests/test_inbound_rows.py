"""Pure: which activity rows are messages to the workspace, and what a handler is told of them
(``delivery.messages``); the hand-off log's claim, finish and take-over (``delivery.handoff``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync.delivery import messages as _messages
from heartbeat_sync.delivery.handoff import HandoffLog, Owner
from heartbeat_sync.delivery.idlog import IdLog
from heartbeat_sync.delivery.messages import MAX_PARTS, MAX_TEXT, MessageRow, message_row
from heartbeat_sync.delivery.results import ResultsFile

WS = "11111111-1111-4111-8111-111111111111"
PEER = "22222222-2222-4222-8222-222222222222"
ROW = "33333333-3333-4333-8333-333333333333"


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": ROW,
        "activity_type": "a2a_receive",
        "method": "message/send",
        "source_id": PEER,
        "target_id": WS,
        "status": "ok",
        "created_at": "2026-12-07T00:19:14.640419Z",
        "request_body": {
            "jsonrpc": "2.0",
            "id": "1",
            "method": "message/send",
            "params": {
                "message": {
                    "messageId": "peer-msg-1",
                    "role": "user",
                    "parts": [{"kind": "text", "text": "report ready"}],
                }
            },
        },
    }
    row.update(fields)
    return row


def _body(parts: Any, **message: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "params": {"message": {"parts": parts, **message}}}


# --- which rows are messages ---------------------------------------------------------------


def test_a_peers_row_is_a_message_with_its_sender_text_and_time() -> None:
    message = message_row(_row(seq=16, peer_name="beta", peer_role="researcher"), WS)
    assert message is not None
    assert (message.id, message.seq, message.source, message.source_id) == (ROW, 16, "peer", PEER)
    assert (message.peer_name, message.peer_role) == ("beta", "researcher")
    assert message.text == "report ready" and message.message_id == "peer-msg-1"
    assert message.received_at is not None and message.received_at.year == 2026
    assert message.received_at.utcoffset() is not None and not message.truncated


def test_a_canvas_row_has_no_sender_id() -> None:
    message = message_row(_row(source_id=None), WS)
    assert message is not None and message.source == "canvas" and message.source_id is None


@pytest.mark.parametrize(
    ("case", "fields"),
    [
        ("its own notification", {"source_id": None, "method": "notify", "request_body": None}),
        ("its own self-message", {"source_id": WS}),
        ("not an a2a_receive row", {"activity_type": "delegation"}),
        ("no id", {"id": None}),
        ("an id that is no id", {"id": "two words"}),
        (
            "the August stall probe",
            {
                "source_id": None,
                "request_body": _body(
                    [{"kind": "text", "text": "Liveness check"}],
                    metadata={
                        "kind": "stall_probe",
                        "source": "platform",
                        "source_type": "self-stall",
                    },
                ),
            },
        ),
    ],
)
def test_rows_that_are_no_message_to_the_workspace(case: str, fields: dict[str, Any]) -> None:
    assert message_row(_row(**fields), WS) is None, case


def test_a_canvas_message_marked_as_the_canvas_users_is_a_message() -> None:
    """August marks a canvas message ``params.metadata.source: canvas_user``: it is no probe."""
    body = _body([{"kind": "text", "text": "hi"}])
    body["params"]["metadata"] = {"source": "canvas_user"}
    message = message_row(_row(source_id=None, request_body=body), WS)
    assert message is not None and message.source == "canvas" and message.text == "hi"


def test_text_joins_the_text_parts_of_either_spelling_and_lists_the_files() -> None:
    parts = [
        {"kind": "text", "text": "first"},
        {"type": "text", "text": "second"},  # the legacy spelling
        {"kind": "file", "file": {"name": "a.csv", "mimeType": "text/csv", "bytes": "AAAA"}},
        {"kind": "data", "data": {"x": 1}},
    ]
    message = message_row(_row(request_body=_body(parts)), WS)
    assert message is not None
    assert message.text == "first\nsecond"
    assert message.parts == tuple(parts)
    assert message.attachments == ({"name": "a.csv", "mimeType": "text/csv"},)  # no bytes


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("a string", "not json-rpc"),
        ("no params", {"jsonrpc": "2.0"}),
        ("parts not a list", _body("text")),
        ("no text part", _body([{"kind": "data", "data": {}}])),
        ("parts of wrong types", _body([1, None, {"kind": "text", "text": 5}])),
        ("no body at all", None),
    ],
)
def test_a_row_with_an_odd_body_is_handed_over_with_what_can_be_read(case: str, body: Any) -> None:
    message = message_row(_row(request_body=body), WS)
    assert message is not None, case
    assert message.text == "" and message.source_id == PEER


def test_params_parts_are_read_when_the_message_has_none() -> None:
    body = {"params": {"parts": [{"kind": "text", "text": "flat"}]}}
    message = message_row(_row(request_body=body), WS)
    assert message is not None and message.text == "flat"


def test_a_huge_message_is_cut_and_marked() -> None:
    parts = [{"kind": "text", "text": "x" * (MAX_TEXT + 10)}] + [
        {"kind": "text", "text": "y"} for _ in range(MAX_PARTS + 5)
    ]
    message = message_row(_row(request_body=_body(parts)), WS)
    assert message is not None and message.truncated
    assert len(message.parts) == MAX_PARTS
    assert message.parts[0] == {"kind": "text", "text": "x" * MAX_TEXT, "truncated": True}
    assert message.text.startswith("x" * MAX_TEXT) and len(message.text) <= MAX_TEXT


def test_a_message_row_survives_its_json_form() -> None:
    message = message_row(_row(seq=7, peer_name="beta"), WS)
    assert message is not None
    assert MessageRow.from_json(message.to_json()) == message
    assert MessageRow.from_json({"id": "a b", "source": "peer"}) is None
    assert MessageRow.from_json({"id": ROW, "source": "elsewhere"}) is None


def test_the_message_a_handler_receives_replies_through_what_it_was_given() -> None:
    row = message_row(_row(), WS)
    assert row is not None
    sent: list[str] = []
    message = _messages.InboundMessage.of(
        row, redelivered=True, reply=lambda text: sent.append(text) is None
    )
    assert message.redelivered and message.text == "report ready"
    assert message.reply("done") is True and sent == ["done"]
    with pytest.raises(TypeError):
        message.reply(42)  # type: ignore[arg-type]


# --- the hand-off log ------------------------------------------------------------------------


def _log(tmp_path: Path) -> tuple[HandoffLog, IdLog]:
    results = ResultsFile(str(tmp_path / "results.jsonl"), lock_timeout=5.0)
    cursor = IdLog(str(tmp_path / "cursor"), 2000, 5.0, name="cursor")
    return HandoffLog(results, cursor), cursor


def _message(row_id: str, message_id: str = "m") -> MessageRow:
    row = message_row(_row(id=row_id, request_body=_body([], messageId=message_id)), WS)
    assert row is not None
    return row


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_claimed_message_is_claimed_once_and_recorded_in_the_cursor(tmp_path: Path) -> None:
    log, cursor = _log(tmp_path)
    owner = Owner.new_run()
    try:
        first = _message("44444444-4444-4444-8444-444444444444", "m1")
        assert log.claim([first], owner) == [first]
        assert log.claim([first], owner) == []  # in the log: someone has it
        assert first.id in cursor.ids_on_disk()
        log.finish(first.id)
        assert log.held() == set()
        assert log.claim([first], owner) == []  # in the cursor: handled
    finally:
        owner.end()


def test_two_rows_of_one_message_are_claimed_once(tmp_path: Path) -> None:
    """August logs a message that waited behind a busy agent twice, with one messageId."""
    log, _ = _log(tmp_path)
    owner = Owner.new_run()
    try:
        ingest = _message("55555555-5555-4555-8555-555555555555", "same")
        queued = _message("66666666-6666-4666-8666-666666666666", "same")
        assert log.claim([ingest, queued], owner) == [ingest]
        assert log.claim([queued], owner) == []
    finally:
        owner.end()


def test_a_message_left_by_a_dead_process_is_taken_over_once(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    dead = Owner(_dead_pid(), 0, "gone")
    message = _message("77777777-7777-4777-8777-777777777777")
    assert log.claim([message], dead) == [message]
    owner = Owner.new_run()
    try:
        assert log.take_over(owner) == [message]
        assert log.take_over(owner) == []  # ours now, and we are alive
        assert log.held() == {message.id}
    finally:
        owner.end()


def test_a_live_run_keeps_its_messages_and_an_ended_one_gives_them_up(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    running, later = Owner.new_run(), Owner.new_run()
    try:
        message = _message("88888888-8888-4888-8888-888888888888")
        log.claim([message], running)
        assert log.take_over(later) == []
        running.end()
        # A handler of the ended run still runs: the next run leaves its message alone.
        assert log.take_over(later, busy={message.id}) == []
        assert log.take_over(later) == [message]
    finally:
        running.end()
        later.end()


def test_an_unreadable_log_starts_afresh_and_no_log_costs_one_lstat(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    owner = Owner.new_run()
    try:
        assert not os.path.lexists(log.path)
        assert log.take_over(owner) == []
        Path(log.path).write_bytes(b"\xff not json")
        os.chmod(log.path, 0o600)
        assert log.take_over(owner) == []
    finally:
        owner.end()
