"""What a FakePlatform holds and answers: the public value types, stored rows, JSON helpers.

Pure data and pure functions (standard library only); no sockets, no threads.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ._events import Subscriber

#: The August 2026 generation's name.
AUGUST = "2026-08"

#: Route names accepted by :meth:`FakePlatform.fault` and used in :class:`RecordedRequest`.
ROUTES: tuple[str, ...] = (
    "heartbeat",
    "register",
    "delegations",
    "activity",
    "workspace",
    "state",
    "a2a",
    "notify",
    "events",
    "peers",
    "ack",
    "delete",
)


class _Missing(enum.Enum):
    MISSING = 0


MISSING = _Missing.MISSING


def new_secret() -> str:
    """32 random bytes, base64url without padding (43 characters)."""
    return secrets.token_urlsafe(32)


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def encode_body(body: object) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def loads(data: bytes) -> Any:
    """Strict JSON parsing (no NaN/Infinity); raises ValueError on anything invalid."""
    if not data.strip():
        raise ValueError("empty body")
    return json.loads(data, parse_constant=_reject_constant)


def json_object(data: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is anything else (or not JSON)."""
    try:
        value = loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def format_ts(micros: int, *, trim: bool = False) -> str:
    """RFC 3339 UTC with microseconds; ``trim`` drops trailing zeros of the fraction (and a
    fraction of zero), as Go's ``RFC3339Nano`` does on the real server."""
    epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    moment = epoch + _dt.timedelta(microseconds=micros)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if trim:
        text = text.rstrip("0").rstrip(".")
    return text + "Z"


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Response:
    """A scripted HTTP answer for ``POST /workspaces/:id/a2a``.

    See :meth:`FakePlatform.set_a2a_responses`.

    Attributes:
        status: HTTP status to answer with.
        body: The body.  ``bytes``/``str`` are sent verbatim, any other object is
            JSON-encoded.  ``None`` means "the default body": the default JSON-RPC
            success message for a status below 400, else ``{"error": <reason phrase>}``.
            (Send the literal JSON ``null`` with ``body="null"``.)
        headers: Extra response headers; they override ``Content-Type``.
        delay: Seconds to wait before answering (interrupted by
            :meth:`FakePlatform.stop`).
    """

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class RecordedRequest:
    """One request received by a :class:`FakePlatform`.

    Requests are logged as soon as they have been read (headers and body), *before*
    any injected fault applies.  The entry object is shared with the log, and the
    server fills in :attr:`status` (and :attr:`faulted`) in place when it decides the
    answer, just before the response bytes are written.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: The path without the query string (still percent-encoded).
        query: Parsed query string (``urllib.parse.parse_qs``, blank values kept).
        headers: Request headers, names lower-cased; repeated headers are joined
            with ``", "``.
        body: The request body (at most 1 MiB; the excess is not kept).
        route: One of :data:`ROUTES`, or ``"unknown"``.
        workspace_id: The workspace the request is about: the ``:id`` path segment,
            or ``workspace_id`` (heartbeat) / ``id`` (register) from the JSON body.
        time: ``time.monotonic()`` when the request was logged.
        status: The HTTP status answered, or ``None`` while unanswered or when the
            connection was dropped without an answer.
        faulted: True when an injected fault (other than a pure delay or pure extra
            headers) produced the answer or dropped the connection.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    route: str
    workspace_id: str | None
    time: float
    status: int | None = None
    faulted: bool = False

    def json(self) -> Any:
        """The body parsed as JSON, or ``None`` when it is not valid JSON."""
        try:
            return loads(self.body)
        except ValueError:
            return None


@dataclass
class Workspace:
    """The state of one workspace held by a :class:`FakePlatform`.

    :meth:`FakePlatform.workspace` returns the live object.  The server updates it
    under the platform lock; list fields are replaced rather than mutated, so reading
    them from a test is safe.  Tests may assign simple fields directly (for example
    ``ws.status = "removed"`` or ``ws.talk_to_user_enabled = False``) to change what
    the server answers from then on.

    Attributes:
        id: Workspace id.
        name: Display name (reported by ``GET /workspaces/:id``).
        parent_id: Parent workspace id or ``None``.
        status: ``online``, ``offline``, ``degraded``, ``provisioning``,
            ``awaiting_agent``, ``removed``, ...  Heartbeats drive the same status
            transitions as the real server (``docs/platform.md`` §2.1).
        talk_to_user_enabled: MAY and 2026-08: when False ``/notify`` answers 403.
        tokens: Live (non-revoked) auth tokens, oldest first.
        inbound_secret: ``platform_inbound_secret``; minted lazily by the first
            heartbeat/register that needs it (MAY) or by
            :meth:`FakePlatform.rotate_inbound_secret`.
        last_heartbeat: JSON body of the last accepted heartbeat, or ``None``.
        heartbeat_count: Number of accepted heartbeats (not counting those skipped
            because the workspace is ``removed``).
        runtime_metadata: ``runtime_metadata`` of the last accepted heartbeat; a beat
            without it (or with ``null``) clears it.
        active_tasks: ``active_tasks`` of the last beat.
        error_rate: ``error_rate`` of the last beat (``last_error_rate``).
        uptime_seconds: ``uptime_seconds`` of the last beat.
        sample_error: ``sample_error`` of the last beat.
        current_task: ``current_task`` of the last beat.
        url: Agent URL set by ``/registry/register``.
        agent_card: Agent card set by ``/registry/register``.
        delivery_mode: ``"push"`` or ``"poll"`` (set by register, MAY and 2026-08).
        kind: ``"workspace"``, or ``"platform"`` for the 2026-08 root workspace
            (``Org Concierge``); shown by ``GET /workspaces/:id`` on 2026-08 only.
        last_heartbeat_at: ``created_at``-style time of the last accepted beat, or ``None``
            (``GET /workspaces/:id`` shows it on 2026-08 only).
        is_busy: 2026-08 only: what the last accepted beat stored, as the real server does:
            its ``is_busy`` when it sent a JSON bool, else ``active_tasks > 0``.
        observed_generation: 2026-08 only: the largest ``observed_generation`` any accepted
            beat sent (a beat without it, or with ``null``, leaves it).
        desired_generation: The generation the 2026-08 heartbeat reply carries
            (``"generation"``); raised with :meth:`FakePlatform.set_desired_generation`.
        last_acked_seq: 2026-08 only: the largest ``acked_seq`` that
            ``POST /workspaces/:id/activity/ack`` accepted (0 before any).
        role: The workspace's role (``GET /workspaces/:id``, the peers, and on 2026-08 a
            message's ``peer_role``), or ``None``.
    """

    id: str
    name: str = ""
    parent_id: str | None = None
    status: str = "online"
    talk_to_user_enabled: bool = True
    tokens: list[str] = field(default_factory=list)
    inbound_secret: str | None = None
    last_heartbeat: dict[str, Any] | None = None
    heartbeat_count: int = 0
    runtime_metadata: dict[str, Any] | None = None
    active_tasks: int = 0
    error_rate: float = 0.0
    uptime_seconds: int = 0
    sample_error: str = ""
    current_task: str = ""
    url: str = ""
    agent_card: object = None
    delivery_mode: str = "push"
    kind: str = "workspace"
    last_heartbeat_at: str | None = None
    is_busy: bool = False
    observed_generation: int = 0
    desired_generation: int = 0
    last_acked_seq: int = 0
    role: str | None = None

    @property
    def token(self) -> str | None:
        """The newest live token, or ``None`` when the workspace has none."""
        tokens = self.tokens
        return tokens[-1] if tokens else None


# --------------------------------------------------------------------------- stored rows, replies


@dataclass
class Activity:
    id: str
    workspace_id: str
    activity_type: str
    status: str
    source_id: str | None
    method: str | None
    summary: str | None
    # When the row was written (microseconds since the epoch) and the server-wide sequence
    # number drawn for it; together they order a workspace's log, as on the real server.
    created_us: int
    seq: int
    request_body: object = MISSING
    response_body: object = MISSING
    target_id: str | None = None
    duration_ms: int | None = None
    # 2026-08: the request's messageId, which the row's ACTIVITY_LOGGED events carry.
    message_id: str | None = None
    # False until a late commit: the row has its created_at but no reader sees it yet.
    committed: bool = True

    @property
    def key(self) -> tuple[int, int]:
        """The order of rows: ``(created_at, seq)``."""
        return (self.created_us, self.seq)

    def to_json(self, generation: str) -> dict[str, object]:
        aug = generation == AUGUST
        row: dict[str, object] = {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "activity_type": self.activity_type,
            "status": self.status,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "method": self.method,
            "summary": self.summary,
            "error_detail": None,
            "duration_ms": self.duration_ms,
            "created_at": format_ts(self.created_us, trim=aug),
        }
        if aug:
            row["seq"] = self.seq
        if self.request_body is not MISSING:
            row["request_body"] = self.request_body
        if self.response_body is not MISSING:
            row["response_body"] = self.response_body
        return row

    def event_data(self, generation: str, summary: str | None = None) -> dict[str, object]:
        """The ``ACTIVITY_LOGGED`` data for the row (``summary`` overrides the row's)."""
        if generation != AUGUST:
            row = self.to_json(generation)
            return {k: v for k, v in row.items() if k not in ("id", "workspace_id", "created_at")}
        data: dict[str, object] = {
            "activity_type": self.activity_type,
            "method": self.method,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "status": self.status,
            "summary": self.summary if summary is None else summary,
            "duration_ms": self.duration_ms,
        }
        if self.request_body is not MISSING:
            data["request_body"] = self.request_body
        if self.response_body is not MISSING:
            data["response_body"] = self.response_body
        if self.message_id is not None:
            data["message_id"] = self.message_id
        return data


#: A ledger row's deadline: six hours after it was written.
_LEDGER_DEADLINE_US = 6 * 3600 * 1_000_000


@dataclass
class Delegation:
    delegation_id: str
    row_id: str
    source_id: str
    target_id: str
    status: str
    summary: str
    response_preview: str
    error: str
    created_us: int
    updated_us: int
    # "sent" (the workspace delegated) or "received" (it is the callee; 2026-08 lists it).
    direction: str = "sent"

    def to_json(self, generation: str) -> dict[str, object]:
        ledger = generation != "APR"
        aug = generation == AUGUST
        row: dict[str, object]
        if ledger:
            row = {
                "delegation_id": self.delegation_id,
                "source_id": self.source_id,
                "target_id": self.target_id,
                "summary": self.summary,
                "status": self.status,
            }
        else:
            row = {
                "id": self.row_id,
                "type": "delegation",
                "delegation_id": self.delegation_id,
                "source_id": self.source_id,
                "target_id": self.target_id,
                "summary": self.summary,
                "status": self.status,
            }
        if self.response_preview:
            row["response_preview"] = self.response_preview
        if self.error:
            row["error"] = self.error
        row["created_at"] = format_ts(self.created_us, trim=aug)
        if ledger:
            row["updated_at"] = format_ts(self.updated_us, trim=aug)
            row["_ledger"] = True
        if aug:
            row["deadline"] = format_ts(self.created_us + _LEDGER_DEADLINE_US, trim=True)
            row["direction"] = self.direction
        return row


class Raw:
    """A verbatim row (hostile-data tests): served as it is, never filtered.

    ``key`` places it among the activity rows (``(time it was added, 0)``)."""

    __slots__ = ("key", "value")

    def __init__(self, value: object, key: tuple[int, int] = (0, 0)) -> None:
        self.value = value
        self.key = key


ActivityEntry = Union[Activity, Raw]
DelegationEntry = Union[Delegation, Raw]


@dataclass
class Reply:
    """What a route decided to answer; the server writes it (or streams ``events``)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Runs under the platform lock once the delay is over, just before answering.
    commit: Callable[[], None] | None = None
    stream_size: int | None = None
    events: Subscriber | None = None
    # No Content-Type header at all (the tenant guard's empty 404).
    bare: bool = False


def json_reply(status: int, body: object, headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer."""
    return Reply(status=status, body=encode_body(body), headers=dict(headers or {}))


def error(status: int, message: str, **extra: object) -> Reply:
    """The server's error shape: ``{"error": message, **extra}``."""
    body: dict[str, object] = {"error": message}
    body.update(extra)
    return json_reply(status, body)


def visible(entry: ActivityEntry) -> bool:
    """False for a row that has not committed yet (no reader sees it)."""
    return isinstance(entry, Raw) or entry.committed


def entry_json(entry: ActivityEntry, generation: str) -> object:
    """A row as the activity route returns it (a raw row verbatim)."""
    return entry.value if isinstance(entry, Raw) else entry.to_json(generation)


def text_reply(status: int, text: str) -> Reply:
    """A ``text/plain`` answer, as Go's router sends ``404 page not found``."""
    return Reply(status=status, body=text.encode("utf-8"), headers={"Content-Type": "text/plain"})
