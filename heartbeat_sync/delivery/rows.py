"""Pure: platform rows into results, and the values read from the platform's JSON.

Nothing here does I/O or keeps state, so every rule of the reference loop about *which* rows
become results (and which ids are remembered) can be tested with plain tables and property
tests. The texts built from results are in :mod:`heartbeat_sync.effects.texts`.
"""

from __future__ import annotations

import calendar
import datetime
import hashlib
import re
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAILED_SUMMARY",
    "FINAL_STATUSES",
    "MAX_ID_LENGTH",
    "ORIGIN_ACTIVITY",
    "ORIGIN_DELEGATION",
    "PREVIEW_LIMIT",
    "Parsed",
    "Record",
    "Result",
    "activity_results",
    "created_ns",
    "delegation_results",
    "is_message_key",
    "message_key",
    "message_text",
    "newest_first",
    "order_key",
    "seq_of",
    "valid_id",
]

#: The longest id an id log keeps (platform ids are 36-character UUIDs).
MAX_ID_LENGTH = 256

#: Where a result came from: the delegations list, or an a2a_receive activity row.
ORIGIN_DELEGATION = "delegation"
ORIGIN_ACTIVITY = "activity"
FINAL_STATUSES = ("completed", "failed")
#: The summary of a failed delegation's result when the platform gave neither error nor
#: summary (its own wording for such a row).
FAILED_SUMMARY = "Delegation failed"
PREVIEW_LIMIT = 4096

#: One delegation result: ``delegation_id, target_id, source_id, status, summary,
#: response_preview, error, timestamp`` (the reference runtime's record shape).
Record = dict[str, Any]


def _encodable(item: str) -> bool:
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from JSON's "\ud800"
        return False
    return True


def valid_id(item: object) -> bool:
    """True for an id an id log can keep: a non-empty string of at most
    :data:`MAX_ID_LENGTH` characters, UTF-8 encodable (no lone surrogate), without a comma or
    white space (either would split or merge ids when the log is read back)."""
    return (
        isinstance(item, str)
        and 0 < len(item) <= MAX_ID_LENGTH
        and "," not in item
        and not any(ch.isspace() for ch in item)
        and _encodable(item)
    )


@dataclass(frozen=True)
class Result:
    """One result for the agent: the record written to the results file, and its origin."""

    record: Record
    origin: str

    @property
    def id(self) -> str:
        return str(self.record["delegation_id"])


@dataclass
class Parsed:
    """What a list of rows yielded: new results, ids to remember, and what was wrong."""

    results: list[Result] = field(default_factory=list)
    #: ids to add to the cursor/seen log, in processing order (oldest first).
    ids: list[str] = field(default_factory=list)
    #: delegation ids of completed rows that name another workspace as their source.
    foreign: list[tuple[str, str]] = field(default_factory=list)
    malformed: int = 0
    #: A result's id -> the key of the message it carries (:func:`message_key`): a result is
    #: new only while neither is known.
    aliases: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str:
    """A string field from platform JSON: strings as they are, null as "", numbers printed."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return ""


def _objects(rows: Iterable[Any], out: Parsed) -> Iterator[dict[str, Any]]:
    """The rows that are JSON objects; every other row is counted in ``out.malformed``."""
    for row in rows:
        if isinstance(row, dict):
            yield row
        else:
            out.malformed += 1


def delegation_results(
    rows: Iterable[Any], workspace_id: str, seen: Container[str], now: float
) -> Parsed:
    """Turn ``GET /delegations`` rows into results, as the reference does.

    A row becomes a result when it is an object with a ``delegation_id`` not in ``seen``, a
    status of completed or failed, and ``source_id`` equal to this workspace; a row the
    platform marks ``direction: "received"`` (a delegation *to* this workspace) never does.
    A completed row from another source is listed in ``foreign`` (for a warning) and not
    delivered. Anything
    malformed is counted and skipped alone. A failed delegation's result says what happened:
    its summary is the row's ``error`` (else the row's summary), and it has no preview (the
    row's preview is the request, not an answer).
    """
    out = Parsed()
    batch: set[str] = set()
    for row in _objects(rows, out):
        did = row.get("delegation_id")
        if did is None or did == "":
            continue  # activity-path "Delegation failed" rows carry no id (docs/platform.md §2.3)
        if not isinstance(did, str) or not valid_id(did):
            out.malformed += 1
            continue
        status = row.get("status")
        if status not in FINAL_STATUSES or did in seen or did in batch:
            continue
        if row.get("direction") == "received":
            continue  # the August platform lists delegations to this workspace too: not ours
        source_id = _text(row.get("source_id"))
        if source_id != workspace_id:
            out.foreign.append((did, source_id))
            continue
        batch.add(did)
        out.ids.append(did)
        summary = _text(row.get("summary"))
        preview = _text(row.get("response_preview"))
        error = _text(row.get("error"))
        if status == "failed":
            # The platform's failed row still carries the request ("Delegating to <id>",
            # preview {"delegation_id": ...}); what happened is the error.
            summary, preview = error or summary or FAILED_SUMMARY, ""
        record: Record = {
            "delegation_id": did,
            "target_id": _text(row.get("target_id")),
            "source_id": source_id,
            "status": status,
            "summary": summary,
            "response_preview": preview,
            "error": error,
            "timestamp": now,
        }
        out.results.append(Result(record, ORIGIN_DELEGATION))
    return out


def message_text(request_body: Any) -> str | None:
    """The text parts of an A2A request (``params.message.parts``), joined; None if none.

    A part counts when it is an object whose ``kind`` or ``type`` is ``"text"`` and whose
    ``text`` is a non-empty string. Any other shape is ignored, never an error: the reference
    runtime lost a whole poll to one part that was not an object.
    """
    if not isinstance(request_body, dict):
        return None
    params = request_body.get("params")
    message = params.get("message") if isinstance(params, dict) else None
    parts = message.get("parts") if isinstance(message, dict) else None
    if not isinstance(parts, list):
        return None
    texts = [
        p["text"]
        for p in parts
        if isinstance(p, dict)
        and (p.get("kind") == "text" or p.get("type") == "text")
        and isinstance(p.get("text"), str)
        and p["text"]
    ]
    return " ".join(texts) if texts else None


#: What a :func:`message_key` starts with (the platform's ids are UUIDs: none does).
_KEY_PREFIX = "msg-"
#: The longest ``messageId`` read for :func:`message_key` (A2A ids are short).
_MAX_MESSAGE_ID = 1024


def message_key(row: Any) -> str | None:
    """A key for the message an activity row carries: its sender and its A2A ``messageId``.

    The August 2026 platform logs a message that waited behind a busy agent twice (an
    ``(ingest)`` row and a ``(queued: target busy)`` row, with the same request); the key is
    the same for both, so the message is delivered once. It fits an id log (no comma, no white
    space); None when the row carries no ``messageId``.
    """
    if not isinstance(row, dict):
        return None
    body = row.get("request_body")
    params = body.get("params") if isinstance(body, dict) else None
    message = params.get("message") if isinstance(params, dict) else None
    message_id = message.get("messageId") if isinstance(message, dict) else None
    if not isinstance(message_id, str) or not message_id or len(message_id) > _MAX_MESSAGE_ID:
        return None
    source = row.get("source_id")
    sender = source if isinstance(source, str) else ""
    data = f"{sender}\x00{message_id}".encode("utf-8", "surrogatepass")
    return _KEY_PREFIX + hashlib.blake2b(data, digest_size=16).hexdigest()


def is_message_key(item: str) -> bool:
    """True for an id log entry that is a :func:`message_key`, not a row's id (never a
    position to read from)."""
    return item.startswith(_KEY_PREFIX)


def activity_results(
    rows: Iterable[Any], workspace_id: str, seen: Container[str], now: float
) -> Parsed:
    """Turn ``a2a_receive`` activity rows (oldest first) into results, as the reference does.

    Every well-formed row not in ``seen`` is listed in ``ids`` (so the cursor moves past it);
    it becomes a result only when its ``source_id`` names a peer (a string, not this
    workspace) and its message (:func:`message_key`) was not delivered before: the key is
    listed in ``ids`` after the row's id, and in ``aliases``. The record has the reference's
    shape: the row id as ``delegation_id``, the peer as ``target_id``, status completed, and the
    request's text (else the summary) as preview.
    """
    out = Parsed()
    batch: set[str] = set()
    for row in _objects(rows, out):
        activity_id = row.get("id")
        if not isinstance(activity_id, str) or not valid_id(activity_id):
            out.malformed += 1
            continue
        if activity_id in seen or activity_id in batch:
            continue
        batch.add(activity_id)
        out.ids.append(activity_id)
        source_id = row.get("source_id")
        if not isinstance(source_id, str) or not source_id or source_id == workspace_id:
            continue
        key = message_key(row)
        if key is not None:
            if key in seen or key in batch:
                continue  # the same message logged again (August's busy queue)
            batch.add(key)
            out.ids.append(key)
            out.aliases[activity_id] = key
        summary = _text(row.get("summary"))
        text = message_text(row.get("request_body"))
        preview = text if text is not None else summary
        record: Record = {
            "delegation_id": activity_id,
            "target_id": source_id,
            "source_id": workspace_id,
            "status": "completed",
            "summary": summary,
            "response_preview": preview[:PREVIEW_LIMIT],
            "error": "",
            "timestamp": now,
        }
        out.results.append(Result(record, ORIGIN_ACTIVITY))
    return out


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)


def created_ns(value: Any) -> int | None:
    """An RFC 3339 timestamp as nanoseconds since the epoch; None if it is not one.

    The server's timestamps cannot be compared as strings: Go drops trailing zeros of the
    fraction, so ``…:00.1Z`` sorts after ``…:00.12Z``.
    """
    if not isinstance(value, str):
        return None
    m = _RFC3339.match(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        moment = datetime.datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError:
        return None
    seconds = calendar.timegm(moment.timetuple())
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds * 1_000_000_000 + int((m.group(7) or "0").ljust(9, "0"))


def seq_of(row: Any) -> int | None:
    """An activity row's ``seq`` (August 2026 and later: a server-wide position, in the order
    rows were written), when it is a non-negative JSON integer; else None."""
    value = row.get("seq") if isinstance(row, dict) else None
    return value if type(value) is int and value >= 0 else None


def order_key(row: Any) -> tuple[int, int] | None:
    """Where a row stands among the platform's: ``(created_at, seq)``, as the newer platform
    orders rows (and compares its ``since_id``); ``seq`` counts as -1 where the row has none.
    None without a readable ``created_at``."""
    stamp = created_ns(row.get("created_at")) if isinstance(row, dict) else None
    if stamp is None:
        return None
    seq = seq_of(row)
    return stamp, -1 if seq is None else seq


def newest_first(rows: Sequence[Any]) -> bool:
    """True when rows are ordered newest first (a server that ignored ``since_id``), by
    ``created_at`` and, for rows of one instant, by ``seq``."""
    keys = [k for k in (order_key(r) for r in rows) if k is not None]
    return len(keys) >= 2 and keys[0] > keys[-1]
