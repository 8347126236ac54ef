"""An in-process fake of the Molecule AI platform server, for tests.

:class:`FakePlatform` serves the subset of the platform HTTP API that a heartbeat
loop talks to (see ``CONTRACT.md``) on a real loopback socket, so that agents and
clients can be exercised end to end without the real server::

    from heartbeat_sync.testing import FakePlatform

    with FakePlatform() as fp:
        ws = fp.add_workspace()
        ...  # point the client at fp.url, authenticate with ws.token
        assert fp.wait_for_requests("heartbeat", 1)
        assert fp.heartbeats(ws.id)[0]["workspace_id"] == ws.id

Two server generations are modelled: ``"MAY"`` (the newer server, which returns the
inbound secret on every heartbeat, supports the activity ``since_id`` cursor and the
delegations ledger) and ``"APR"`` (the older one).

Routes served:

* ``POST /registry/heartbeat`` (route name ``"heartbeat"``)
* ``POST /registry/register`` (``"register"``)
* ``GET /workspaces/:id/delegations`` (``"delegations"``)
* ``GET /workspaces/:id/activity`` (``"activity"``)
* ``GET /workspaces/:id`` (``"workspace"``)
* ``GET /workspaces/:id/state`` (``"state"``)
* ``POST /workspaces/:id/a2a`` (``"a2a"``)
* ``POST /workspaces/:id/notify`` (``"notify"``)
* ``GET /workspaces/:id/events/stream`` (``"events"``): Server-Sent Events framed as the real
  server frames them (``: ping``, then one ``data: {"type", "timestamp", "data"}`` per event):
  ``DELEGATION_COMPLETE``/``DELEGATION_FAILED`` when a delegation ends, ``ACTIVITY_LOGGED``
  for every activity row written, ``WORKSPACE_HEARTBEAT`` for every beat. Open streams can be
  dropped (:meth:`FakePlatform.drop_streams`) and stalled (:meth:`FakePlatform.stall_streams`);
  ``fault("events", status=404)`` refuses the stream like a server without the route.

Anything else answers ``404 {"error":"not found"}`` and is logged with route
``"unknown"``.  :meth:`FakePlatform.pause`, :meth:`FakePlatform.hibernate` and
:meth:`FakePlatform.delete` do what the real server's admin routes do, and every route then
answers as the real server does for a paused, hibernated or removed workspace.

Failures (status codes, garbage bodies, huge bodies, delays, dropped connections) can be
injected per route with :meth:`FakePlatform.fault`.

Everything here uses the standard library only.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import io
import ipaddress
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union
from urllib.parse import parse_qs, unquote, urlsplit

from . import _fake_events

__all__ = ["ROUTES", "FakePlatform", "RecordedRequest", "Response", "Workspace"]

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
)

_GENERATIONS = ("MAY", "APR")
_MAX_BODY = 1 << 20  # request bodies are read up to 1 MiB; the excess is discarded
_MAX_DRAIN = 64 * _MAX_BODY  # a larger excess is not read; the connection is closed instead
_STREAM_CHUNK = 64 * 1024
_DELEGATIONS_CAP = 50
_ACTIVITY_DEFAULT_LIMIT = 100
_ACTIVITY_MAX_LIMIT = 500
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_BAD_CALLER_PREFIXES = ("webhook:", "system:", "test:", "channel:")
_TALK_TO_USER_HINT = (
    "talk_to_user is disabled for this workspace; enable it in the workspace settings "
    "to let the agent message the user"
)
_REMOVED_HINT = "this workspace was removed; pass ?include_removed=true to read it anyway"
_PAUSED_STATUSES = ("paused", "hibernating", "hibernated")
_WAKING = "workspace is waking from hibernation — retry in ~15 seconds"


class _Missing(enum.Enum):
    MISSING = 0


_MISSING = _Missing.MISSING


def _new_secret() -> str:
    """32 random bytes, base64url without padding (43 characters)."""
    return secrets.token_urlsafe(32)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _encode_body(body: object) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _loads(data: bytes) -> Any:
    """Strict JSON parsing (no NaN/Infinity); raises ValueError on anything invalid."""
    if not data.strip():
        raise ValueError("empty body")
    return json.loads(data, parse_constant=_reject_constant)


def _format_ts(micros: int) -> str:
    epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    moment = epoch + _dt.timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
            return _loads(self.body)
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
            transitions as the real server (CONTRACT.md §3).
        talk_to_user_enabled: MAY only: when False ``/notify`` answers 403.
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
        delivery_mode: ``"push"`` or ``"poll"`` (set by register, MAY).
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

    @property
    def token(self) -> str | None:
        """The newest live token, or ``None`` when the workspace has none."""
        tokens = self.tokens
        return tokens[-1] if tokens else None


# --------------------------------------------------------------------------- internals


@dataclass
class _Fault:
    route: str
    status: int | None
    headers: dict[str, str]
    body: object
    body_size: int | None
    delay: float
    drop: bool
    remaining: int | None
    workspace_id: str | None
    trickle: float = 0.0

    def answers(self) -> bool:
        return self.status is not None or self.body is not _MISSING or self.body_size is not None


@dataclass
class _Activity:
    id: str
    workspace_id: str
    activity_type: str
    status: str
    source_id: str | None
    method: str | None
    summary: str | None
    created_at: str
    request_body: object = _MISSING
    response_body: object = _MISSING
    # False until a late commit: the row has its created_at but no reader sees it yet.
    committed: bool = True

    def to_json(self) -> dict[str, object]:
        row: dict[str, object] = {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "activity_type": self.activity_type,
            "status": self.status,
            "source_id": self.source_id,
            "target_id": None,
            "method": self.method,
            "summary": self.summary,
            "error_detail": None,
            "duration_ms": None,
            "created_at": self.created_at,
        }
        if self.request_body is not _MISSING:
            row["request_body"] = self.request_body
        if self.response_body is not _MISSING:
            row["response_body"] = self.response_body
        return row


@dataclass
class _Delegation:
    delegation_id: str
    row_id: str
    source_id: str
    target_id: str
    status: str
    summary: str
    response_preview: str
    error: str
    created_at: str
    updated_at: str

    def to_json(self, generation: str) -> dict[str, object]:
        row: dict[str, object]
        if generation == "MAY":
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
        row["created_at"] = self.created_at
        if generation == "MAY":
            row["updated_at"] = self.updated_at
            row["_ledger"] = True
        return row


class _Raw:
    """A verbatim row (hostile-data tests)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


_ActivityEntry = Union[_Activity, _Raw]
_DelegationEntry = Union[_Delegation, _Raw]


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Runs under the platform lock once the delay is over, just before answering.
    commit: Callable[[], None] | None = None
    stream_size: int | None = None
    close: bool = False
    events: _fake_events.Subscriber | None = None


def _json_reply(status: int, body: object, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status=status, body=_encode_body(body), headers=dict(headers or {}))


def _error(status: int, message: str, **extra: object) -> _Reply:
    body: dict[str, object] = {"error": message}
    body.update(extra)
    return _json_reply(status, body)


_MISSING_TOKEN = "missing workspace auth token"
_INVALID_TOKEN = "invalid workspace auth token"


#: The real server's default ``CORS_ORIGINS``.
_CORS_ORIGINS = ("http://localhost:3000", "http://localhost:3001")


def _origin_allowed(headers: dict[str, str]) -> bool:
    """The real server's CORS check: no ``Origin``, the request's own ``http(s)://`` + ``Host``
    (compared as strings: no trailing slash, no path, same case), or a listed origin."""
    origin = headers.get("origin")
    if not origin:
        return True
    host = headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}", *_CORS_ORIGINS)


def _bearer(headers: dict[str, str]) -> str | None:
    """The bearer token, or None when there is none (wrong scheme counts as none)."""
    value = headers.get("authorization", "")
    if not value.startswith("Bearer "):
        return None
    token = value[len("Bearer ") :].strip()
    return token or None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], platform: FakePlatform) -> None:
        self.platform = platform
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Never print tracebacks to stderr."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "FakePlatform/1.0"
    timeout = 60.0
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.platform._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.platform._untrack(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except Exception:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer protocol-level errors with a JSON body too."""
        try:
            reason = message or HTTPStatus(code).phrase
        except ValueError:
            reason = "error"
        body = _encode_body({"error": reason})
        self.close_connection = True
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass

    def _dispatch(self) -> None:
        self.server.platform._handle(self)

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch
    do_OPTIONS = _dispatch


class _BodyError(Exception):
    pass


def _read_body(handler: _Handler) -> tuple[bytes, bool]:
    """Read the request body; returns (body capped at 1 MiB, fully_consumed)."""
    te = (handler.headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        return _read_chunked(handler)
    raw = handler.headers.get("Content-Length")
    if raw is None:
        return b"", True
    raw = raw.strip()
    if not raw.isdigit():
        raise _BodyError("invalid Content-Length")
    length = int(raw)
    body = _read_exact(handler, min(length, _MAX_BODY))
    excess = length - len(body)
    if excess > _MAX_DRAIN:
        return body, False  # the connection is closed after the answer
    while excess > 0:  # discard the rest so that the client can read our answer
        chunk = handler.rfile.read(min(excess, _STREAM_CHUNK))
        if not chunk:
            raise _BodyError("truncated body")
        excess -= len(chunk)
    return body, True


def _read_exact(handler: _Handler, n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        chunk = handler.rfile.read(remaining)
        if not chunk:
            raise _BodyError("truncated body")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _read_chunked(handler: _Handler) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    kept = 0
    discarded = 0
    while True:
        line = handler.rfile.readline(1024)
        if not line.endswith(b"\n"):
            raise _BodyError("bad chunk header")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BodyError("bad chunk size") from None
        if size < 0:
            raise _BodyError("bad chunk size")
        if size == 0:
            break
        if discarded > _MAX_DRAIN:
            raise _BodyError("body too large")
        data = _read_exact(handler, size)
        if kept < _MAX_BODY:
            take = data[: _MAX_BODY - kept]
            parts.append(take)
            kept += len(take)
            discarded += len(data) - len(take)
        else:
            discarded += len(data)
        if _read_exact(handler, 2) != b"\r\n":
            raise _BodyError("bad chunk terminator")
    while True:  # trailers
        line = handler.rfile.readline(8192)
        if not line.endswith(b"\n"):
            raise _BodyError("bad trailer")
        if line in (b"\r\n", b"\n"):
            break
    return b"".join(parts), True


def _classify(method: str, path: str) -> tuple[str, str | None]:
    """Map (method, path) to (route, workspace id from the path)."""
    if path == "/registry/heartbeat":
        return ("heartbeat" if method == "POST" else "unknown"), None
    if path == "/registry/register":
        return ("register" if method == "POST" else "unknown"), None
    segments = path.split("/")
    if len(segments) < 3 or segments[0] != "" or segments[1] != "workspaces" or not segments[2]:
        return "unknown", None
    ws_id = unquote(segments[2])
    rest = segments[3:]
    if not rest:
        return ("workspace" if method == "GET" else "unknown"), ws_id
    if len(rest) == 1:
        sub = rest[0]
        if sub == "delegations" and method == "GET":
            return "delegations", ws_id
        if sub == "activity" and method == "GET":
            return "activity", ws_id
        if sub == "state" and method == "GET":
            return "state", ws_id
        if sub == "a2a" and method == "POST":
            return "a2a", ws_id
        if sub == "notify" and method == "POST":
            return "notify", ws_id
    if rest == ["events", "stream"] and method == "GET":
        return "events", ws_id
    return "unknown", ws_id


def _is_int(value: object) -> bool:
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid_heartbeat(body: object) -> bool:
    """Mirror Go's decoding of HeartbeatPayload (JSON null leaves the zero value)."""
    if not isinstance(body, dict):
        return False
    ws_id = body.get("workspace_id")
    if not isinstance(ws_id, str) or not ws_id:
        return False
    checks: dict[str, Callable[[object], bool]] = {
        "error_rate": _is_number,
        "sample_error": lambda v: isinstance(v, str),
        "active_tasks": _is_int,
        "uptime_seconds": _is_int,
        "current_task": lambda v: isinstance(v, str),
        "monthly_spend": _is_int,
        "runtime_state": lambda v: isinstance(v, str),
        "runtime_metadata": _valid_runtime_metadata,
    }
    for key, check in checks.items():
        value = body.get(key)
        if value is not None and not check(value):
            return False
    return True


def _valid_runtime_metadata(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    caps = value.get("capabilities")
    if caps is not None and (
        not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values())
    ):
        return False
    idle = value.get("idle_timeout_seconds")
    return idle is None or _is_int(idle)


# --------------------------------------------------------------------------- FakePlatform


class FakePlatform:
    """An in-process fake of the platform server on a real loopback socket.

    Args:
        generation: ``"MAY"`` (newer server) or ``"APR"`` (older server).
        host: Interface to bind (default ``127.0.0.1``).
        port: Port to bind; 0 picks an ephemeral port.
        max_request_log: Number of requests kept in the log (oldest are dropped).

    Use it as a context manager (``with FakePlatform() as fp:``) or call
    :meth:`start` and :meth:`stop`.  After :meth:`stop`, :meth:`start` serves again on
    the same port with the same state, which simulates a server outage.

    All state lives behind one re-entrant lock, so test code and the server's handler
    threads may use the object concurrently.

    Like the real server, a request whose ``Origin`` header is neither its own
    ``http(s)://`` + ``Host`` nor one of the server's default ``CORS_ORIGINS``
    (``http://localhost:3000``, ``http://localhost:3001``) is refused on every route with
    ``403`` and an empty body.

    Not modelled: rate limiting, the SaaS tenant guard, admin/org tokens, the A2A
    hierarchy check, activity ``peer_id``/``since_secs``/``before_ts`` (ignored),
    WebSocket broadcasts, and UUID validation of workspace ids (any string is an id).

    Where it differs from the real server on purpose (``tests/platform`` runs the library
    against the real one): workspaces, tokens, delegations and activity rows are set up
    with the methods below, not with the server's admin routes (create, delegate, rotate,
    pause, delete); ``POST /workspaces/:id/a2a`` answers from :meth:`set_a2a_responses`
    instead of forwarding to an agent's URL (the real server answers
    ``503 {"error":"workspace has no URL"}`` for a push-mode workspace that registered none:
    script that with :meth:`fault`); ``CORS_ORIGINS`` cannot be configured.
    """

    def __init__(
        self,
        *,
        generation: str = "MAY",
        host: str = "127.0.0.1",
        port: int = 0,
        max_request_log: int = 100_000,
    ) -> None:
        if generation not in _GENERATIONS:
            raise ValueError(f"generation must be 'MAY' or 'APR', not {generation!r}")
        if max_request_log < 1:
            raise ValueError("max_request_log must be >= 1")
        self._generation = generation
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._version = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._conns: set[socket.socket] = set()
        self._workspaces: dict[str, Workspace] = {}
        self._activity: dict[str, list[_ActivityEntry]] = {}
        self._delegations: dict[str, list[_DelegationEntry]] = {}
        self._a2a_script: dict[str, deque[Response]] = {}
        self._faults: list[_Fault] = []
        self._log: deque[RecordedRequest] = deque(maxlen=max_request_log)
        self._last_us = 0
        self._hub = _fake_events.EventHub(self._lock)

    # ------------------------------------------------------------------ lifecycle

    @property
    def generation(self) -> str:
        """The server generation being emulated (``"MAY"`` or ``"APR"``)."""
        return self._generation

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (available once started)."""
        with self._lock:
            if self._port == 0:
                raise RuntimeError("FakePlatform has not been started")
            host = f"[{self._host}]" if ":" in self._host else self._host
            return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """True while the server is serving."""
        with self._lock:
            return self._server is not None

    def start(self) -> FakePlatform:
        """Start serving in a daemon thread (no-op when already running); returns self."""
        with self._lock:
            if self._server is not None:
                return self
            self._stop_event = threading.Event()
            server = _Server((self._host, self._port), self)
            self._port = int(server.server_address[1])
            self._server = server
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FakePlatform:{self._port}",
                daemon=True,
            )
            self._thread = thread
            thread.start()
            self._changed()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and all open connections.

        Idempotent and bounded: in-progress fault/response delays are interrupted and
        their connections are closed without an answer.  State and the request log are
        kept; :meth:`start` serves again on the same port.
        """
        with self._lock:
            server = self._server
            thread = self._thread
            if server is None:
                return
            self._server = None
            self._thread = None
            self._stop_event.set()
            conns = list(self._conns)
            self._hub.close_all()
            self._changed()
        for conn in conns:
            _shutdown_socket(conn)
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=1.0)

    def __enter__(self) -> FakePlatform:
        """Start the server (see :meth:`start`)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server (see :meth:`stop`)."""
        self.stop()

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
            stopping = self._stop_event.is_set()
        if stopping:
            _shutdown_socket(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _changed(self) -> None:
        # caller holds the lock
        self._version += 1
        self._cond.notify_all()

    # ------------------------------------------------------------------ state

    def _ws(self, workspace_id: str) -> Workspace:
        try:
            return self._workspaces[workspace_id]
        except KeyError:
            raise KeyError(f"unknown workspace {workspace_id!r}") from None

    def _now(self) -> str:
        # caller holds the lock; strictly increasing timestamps
        micros = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = micros
        return _format_ts(micros)

    def _create_workspace(self, workspace_id: str, **fields: Any) -> Workspace:
        ws = Workspace(id=workspace_id, **fields)
        self._workspaces[workspace_id] = ws
        self._activity[workspace_id] = []
        self._delegations[workspace_id] = []
        self._a2a_script[workspace_id] = deque()
        return ws

    def add_workspace(
        self,
        workspace_id: str | None = None,
        *,
        name: str = "",
        parent_id: str | None = None,
        with_token: bool = True,
        talk_to_user_enabled: bool = True,
        status: str = "online",
    ) -> Workspace:
        """Create a workspace and return its (live) :class:`Workspace`.

        ``workspace_id`` defaults to a fresh ``uuid4``.  With ``with_token`` (the
        default) one live auth token is minted (``ws.token``); without it the
        registry routes accept unauthenticated calls ("grandfathered").  Raises
        ``ValueError`` if the id exists already.
        """
        ws_id = workspace_id if workspace_id is not None else str(uuid.uuid4())
        with self._lock:
            if ws_id in self._workspaces:
                raise ValueError(f"workspace {ws_id!r} already exists")
            ws = self._create_workspace(
                ws_id,
                name=name,
                parent_id=parent_id,
                status=status,
                talk_to_user_enabled=talk_to_user_enabled,
                tokens=[_new_secret()] if with_token else [],
            )
            self._changed()
            return ws

    def workspace(self, workspace_id: str) -> Workspace:
        """The live :class:`Workspace` object; ``KeyError`` if unknown."""
        with self._lock:
            return self._ws(workspace_id)

    def workspaces(self) -> list[Workspace]:
        """All workspaces, in creation order."""
        with self._lock:
            return list(self._workspaces.values())

    def issue_token(self, workspace_id: str) -> str:
        """Mint one more live token for the workspace and return it."""
        with self._lock:
            ws = self._ws(workspace_id)
            token = _new_secret()
            ws.tokens = [*ws.tokens, token]
            self._changed()
            return token

    def rotate_token(self, workspace_id: str) -> str:
        """Revoke all live tokens, mint a new one and return it (old ones get 401)."""
        with self._lock:
            ws = self._ws(workspace_id)
            token = _new_secret()
            ws.tokens = [token]
            self._changed()
            return token

    def pause(self, workspace_id: str) -> int:
        """``POST /workspaces/:id/pause``: pause the workspace and its descendants.

        As on the real server: status ``paused``, the agent URL cleared; beats are still
        answered 200 but change nothing; a push-mode message answers
        ``503 {"error":"workspace has no URL","status":"paused"}``; only a registration
        brings it back.  Returns how many workspaces were paused; ``KeyError`` when the
        workspace is unknown, removed or already paused (the real server's 404).
        """
        with self._lock:
            ws = self._ws(workspace_id)
            if ws.status in ("removed", "paused"):
                raise KeyError(f"workspace {workspace_id!r} not found or already paused")
            todo = [ws]
            paused = 0
            while todo:
                current = todo.pop()
                if current.status in ("removed", "paused"):
                    continue
                current.status = "paused"
                current.url = ""
                paused += 1
                todo.extend(w for w in self._workspaces.values() if w.parent_id == current.id)
            self._changed()
            return paused

    def hibernate(self, workspace_id: str) -> None:
        """``POST /workspaces/:id/hibernate``: status ``hibernated``, the agent URL cleared.

        A push-mode message then answers 503 ``waking`` (``Retry-After: 15``); beats change
        nothing; a registration brings it back.  ``KeyError`` unless it is online or degraded
        (the real server's 404).
        """
        with self._lock:
            ws = self._ws(workspace_id)
            if ws.status not in ("online", "degraded"):
                raise KeyError(f"workspace {workspace_id!r} is not online or degraded")
            ws.status = "hibernated"
            ws.url = ""
            self._changed()

    def delete(self, workspace_id: str) -> None:
        """``DELETE /workspaces/:id``: status ``removed`` and every token revoked.

        As on the real server: beats pass unauthenticated and are answered 200 (nothing is
        written); ``/workspaces/:id/*`` answers 401 to the old token; ``GET /workspaces/:id``
        answers 410; a registration answers 200 with a fresh token but the status stays
        ``removed``.
        """
        with self._lock:
            ws = self._ws(workspace_id)
            ws.status = "removed"
            ws.tokens = []
            self._changed()

    def revoke_tokens(self, workspace_id: str) -> None:
        """Revoke all live tokens (registry routes then accept unauthenticated calls)."""
        with self._lock:
            self._ws(workspace_id).tokens = []
            self._changed()

    def rotate_inbound_secret(self, workspace_id: str) -> str:
        """Replace the workspace's ``platform_inbound_secret`` and return the new one."""
        with self._lock:
            ws = self._ws(workspace_id)
            ws.inbound_secret = _new_secret()
            self._changed()
            return ws.inbound_secret

    def add_delegation(
        self,
        workspace_id: str,
        *,
        delegation_id: str | None = None,
        source_id: str | None = None,
        target_id: str = "",
        status: str = "pending",
        summary: str = "",
        response_preview: str = "",
        error: str = "",
    ) -> str:
        """Add a delegation to the workspace's ``/delegations`` list; returns its id.

        ``source_id`` defaults to the workspace itself, ``delegation_id`` to a uuid4.
        """
        with self._lock:
            self._ws(workspace_id)
            now = self._now()
            deleg = _Delegation(
                delegation_id=delegation_id if delegation_id is not None else str(uuid.uuid4()),
                row_id=str(uuid.uuid4()),
                source_id=source_id if source_id is not None else workspace_id,
                target_id=target_id,
                status=status,
                summary=summary,
                response_preview=response_preview,
                error=error,
                created_at=now,
                updated_at=now,
            )
            self._delegations[workspace_id].append(deleg)
            self._emit_delegation(workspace_id, deleg, sent=True)
            self._changed()
            return deleg.delegation_id

    def set_delegation(
        self,
        workspace_id: str,
        delegation_id: str,
        *,
        status: str | None = None,
        response_preview: str | None = None,
        error: str | None = None,
        summary: str | None = None,
    ) -> None:
        """Update fields of a delegation added with :meth:`add_delegation`.

        Fields left ``None`` are unchanged; ``updated_at`` is bumped.  ``KeyError`` if
        the workspace or delegation is unknown.
        """
        with self._lock:
            self._ws(workspace_id)
            for entry in self._delegations[workspace_id]:
                if isinstance(entry, _Delegation) and entry.delegation_id == delegation_id:
                    changed = status is not None and status != entry.status
                    if status is not None:
                        entry.status = status
                    if response_preview is not None:
                        entry.response_preview = response_preview
                    if error is not None:
                        entry.error = error
                    if summary is not None:
                        entry.summary = summary
                    entry.updated_at = self._now()
                    if changed:
                        self._emit_delegation(workspace_id, entry, sent=False)
                    self._changed()
                    return
            raise KeyError(f"unknown delegation {delegation_id!r}")

    def _emit_delegation(self, workspace_id: str, deleg: _Delegation, *, sent: bool) -> None:
        # caller holds the lock; the events the real server sends the delegating workspace
        ids = {"delegation_id": deleg.delegation_id, "target_id": deleg.target_id}
        if sent:
            self._hub.emit(workspace_id, "DELEGATION_SENT", {**ids, "task_preview": deleg.summary})
        if deleg.status == "completed":
            preview = {"response_preview": deleg.response_preview}
            self._hub.emit(workspace_id, "DELEGATION_COMPLETE", {**ids, **preview})
        elif deleg.status == "failed":
            self._hub.emit(workspace_id, "DELEGATION_FAILED", {**ids, "error": deleg.error})
        elif not sent:
            self._hub.emit(workspace_id, "DELEGATION_STATUS", {**ids, "status": deleg.status})

    def _emit_activity(self, row: _Activity) -> None:
        # caller holds the lock
        data: dict[str, Any] = {
            k: v for k, v in row.to_json().items() if k not in ("id", "workspace_id", "created_at")
        }
        self._hub.emit(row.workspace_id, "ACTIVITY_LOGGED", data)

    def add_raw_delegation_row(self, workspace_id: str, row: object) -> None:
        """Append any JSON value verbatim to the ``/delegations`` list."""
        with self._lock:
            self._ws(workspace_id)
            self._delegations[workspace_id].append(_Raw(row))
            self._changed()

    def add_activity(
        self,
        workspace_id: str,
        *,
        source_id: str | None,
        activity_type: str = "a2a_receive",
        text: str | None = None,
        summary: str = "",
        status: str = "ok",
        method: str = "message/send",
        request_body: object = _MISSING,
        activity_id: str | None = None,
        committed: bool = True,
    ) -> str:
        """Append an activity row to the workspace's log; returns the row id.

        When ``request_body`` is not given and ``text`` is, the row's request body is
        a JSON-RPC ``message/send`` request carrying ``text`` as one ``kind: text``
        part.  With neither, the row has no ``request_body`` key.  ``created_at`` is
        strictly increasing across all rows of the platform.

        ``committed=False`` makes a row that commits late, as the platform's background
        inserts can: it gets its ``created_at`` now but no read returns it (nor knows its
        id as a ``since_id``) until :meth:`commit_activity`. Rows added meanwhile are
        newer, so a ``since_id`` of one of them never returns it.
        """
        with self._lock:
            self._ws(workspace_id)
            if request_body is _MISSING and text is not None:
                request_body = {
                    "jsonrpc": "2.0",
                    "id": str(uuid.uuid4()),
                    "method": method,
                    "params": {
                        "message": {
                            "role": "user",
                            "messageId": str(uuid.uuid4()),
                            "parts": [{"kind": "text", "text": text}],
                        }
                    },
                }
            row = _Activity(
                id=activity_id if activity_id is not None else str(uuid.uuid4()),
                workspace_id=workspace_id,
                activity_type=activity_type,
                status=status,
                source_id=source_id,
                method=method,
                summary=summary,
                created_at=self._now(),
                request_body=request_body,
                committed=committed,
            )
            self._activity[workspace_id].append(row)
            self._emit_activity(row)
            self._changed()
            return row.id

    def commit_activity(self, workspace_id: str, activity_id: str) -> None:
        """Make a row added with ``committed=False`` visible, with its original ``created_at``."""
        with self._lock:
            self._ws(workspace_id)
            for entry in self._activity[workspace_id]:
                if isinstance(entry, _Activity) and entry.id == activity_id:
                    entry.committed = True
                    self._changed()
                    return
            raise KeyError(f"no activity row {activity_id!r} in {workspace_id!r}")

    def add_raw_activity_row(self, workspace_id: str, row: object) -> None:
        """Append any JSON value verbatim to the activity log (never filtered)."""
        with self._lock:
            self._ws(workspace_id)
            self._activity[workspace_id].append(_Raw(row))
            self._changed()

    def activity_rows(self, workspace_id: str) -> list[object]:
        """The workspace's committed activity rows as JSON, oldest first (raw rows verbatim)."""
        with self._lock:
            self._ws(workspace_id)
            return [_entry_json(e) for e in self._activity[workspace_id] if _visible(e)]

    def set_a2a_responses(self, workspace_id: str, responses: list[Response]) -> None:
        """Script the answers of ``POST /workspaces/:id/a2a`` (replaces any script).

        Each accepted request pops the next :class:`Response`; once the script is
        empty the answer is ``200`` with a JSON-RPC ``result`` message whose text is
        ``"ok"``.
        """
        with self._lock:
            self._ws(workspace_id)
            self._a2a_script[workspace_id] = deque(responses)
            self._changed()

    # ------------------------------------------------------------------ faults

    def fault(
        self,
        route: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        body: object = _MISSING,
        body_size: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int | None = None,
        workspace_id: str | None = None,
        trickle: float = 0.0,
    ) -> None:
        """Inject a failure into the next ``times`` requests of ``route``.

        Args:
            route: One of :data:`ROUTES`.
            status: Answer with this status (body defaults to
                ``{"error": "injected fault"}``).
            headers: Extra response headers.  On their own (no status/body/body_size)
                they are added to the normal answer.  A ``Content-Length`` given here
                is sent as is (and the connection is closed after the answer).
            body: Body to answer with: ``bytes``/``str`` verbatim, anything else
                JSON-encoded.  Without ``status`` the answer is 200.
            body_size: Stream a body of exactly this many bytes (``[`` followed by
                ``0,0,0,...``, an unterminated JSON array) in chunks, never buffered
                whole; 200 unless ``status`` is given.  ``body`` is then ignored.
            delay: Seconds to wait before answering; interrupted by :meth:`stop`.
                With nothing else set, the request is then handled normally.
            drop: Close the connection without sending any response bytes.
            times: Number of matching requests to affect; ``None`` = until cleared.
            workspace_id: Only match requests about this workspace (path ``:id`` or
                the body's ``workspace_id``/``id`` for registry routes).
            trickle: Send the answer (status line, headers and body: the fault's, or the
                normal one) one byte every ``trickle`` seconds, as a broken or hostile
                server may; interrupted by :meth:`stop` or by the client closing.

        Faults are checked in the order they were added; the first match applies.
        """
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
        if status is not None and not 100 <= status <= 599:
            raise ValueError("status must be in 100..599")
        if body_size is not None and body_size < 0:
            raise ValueError("body_size must be >= 0")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if trickle < 0:
            raise ValueError("trickle must be >= 0")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._faults.append(
                _Fault(
                    route=route,
                    status=status,
                    headers=dict(headers or {}),
                    body=body,
                    body_size=body_size,
                    delay=float(delay),
                    drop=drop,
                    remaining=times,
                    workspace_id=workspace_id,
                    trickle=float(trickle),
                )
            )
            self._changed()

    def clear_faults(self, route: str | None = None) -> None:
        """Remove all faults, or only those of ``route``."""
        with self._lock:
            if route is None:
                self._faults = []
            else:
                self._faults = [f for f in self._faults if f.route != route]
            self._changed()

    def _take_fault(self, route: str, workspace_id: str | None) -> _Fault | None:
        # caller holds the lock
        for fault in self._faults:
            if fault.route != route:
                continue
            if fault.workspace_id is not None and fault.workspace_id != workspace_id:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first (entries are shared, see
        :class:`RecordedRequest`)."""
        with self._lock:
            return list(self._log)

    def requests_for(self, route: str, workspace_id: str | None = None) -> list[RecordedRequest]:
        """Logged requests of ``route`` (optionally only those about ``workspace_id``)."""
        with self._lock:
            return [
                r
                for r in self._log
                if r.route == route and (workspace_id is None or r.workspace_id == workspace_id)
            ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true or ``timeout`` seconds pass.

        The predicate runs without the platform lock held (so it may use the
        platform or even make HTTP calls to it).  It is re-evaluated on every request
        and state change, and at least every 50 ms.  Returns its last result.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._version
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bool(predicate())
            with self._cond:
                if self._version == seen:
                    self._cond.wait(min(remaining, 0.05))

    def wait_for_requests(
        self,
        route: str,
        count: int,
        timeout: float = 5.0,
        workspace_id: str | None = None,
    ) -> bool:
        """Wait until at least ``count`` requests of ``route`` have been logged."""
        return self.wait_for(
            lambda: len(self.requests_for(route, workspace_id)) >= count, timeout=timeout
        )

    def _answered_2xx(self, route: str, workspace_id: str | None) -> Iterator[RecordedRequest]:
        for r in self.requests_for(route, workspace_id):
            if r.status is not None and 200 <= r.status < 300:
                yield r

    def heartbeats(self, workspace_id: str | None = None) -> list[dict[str, object]]:
        """JSON bodies of heartbeats answered 2xx (from the request log)."""
        out: list[dict[str, object]] = []
        for r in self._answered_2xx("heartbeat", workspace_id):
            body = r.json()
            if isinstance(body, dict):
                out.append(body)
        return out

    def notifications(self, workspace_id: str) -> list[str]:
        """Messages accepted (2xx) by ``POST /workspaces/:id/notify`` (from the log)."""
        out: list[str] = []
        for r in self._answered_2xx("notify", workspace_id):
            body = r.json()
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                out.append(body["message"])
        return out

    def a2a_messages(self, workspace_id: str) -> list[dict[str, object]]:
        """JSON bodies (as sent) of ``POST /workspaces/:id/a2a`` answered 2xx."""
        out: list[dict[str, object]] = []
        for r in self._answered_2xx("a2a", workspace_id):
            body = r.json()
            if isinstance(body, dict):
                out.append(body)
        return out

    def clear_requests(self) -> None:
        """Empty the request log (and so :meth:`heartbeats`, :meth:`notifications`,
        :meth:`a2a_messages`)."""
        with self._lock:
            self._log.clear()
            self._changed()

    # ------------------------------------------------------------------ serving

    def _handle(self, handler: _Handler) -> None:
        stop_event = self._stop_event
        entry: RecordedRequest | None = None
        try:
            try:
                body, consumed = _read_body(handler)
            except _BodyError as exc:
                self._send(handler, None, _error(400, str(exc)), stop_event, close=True)
                return
            if not consumed:
                handler.close_connection = True
            entry = self._record(handler, body)
            if stop_event.is_set():
                self._drop(handler, entry)
                return
            with self._lock:
                fault = self._take_fault(entry.route, entry.workspace_id)
            extra_headers: dict[str, str] = {}
            if fault is not None and fault.trickle > 0:
                handler.wfile = _Trickle(handler.wfile, fault.trickle, stop_event)
            if fault is not None:
                if fault.delay > 0 and stop_event.wait(fault.delay):
                    self._drop(handler, entry)
                    return
                if fault.drop:
                    self._drop(handler, entry, faulted=True)
                    return
                if fault.answers():
                    self._send(handler, entry, self._fault_reply(fault), stop_event, faulted=True)
                    return
                extra_headers = fault.headers
            with self._lock:
                reply = self._route(entry)
            if reply.delay > 0 and stop_event.wait(reply.delay):
                self._drop(handler, entry)
                return
            reply.headers = {**reply.headers, **extra_headers}
            if reply.events is not None:
                self._serve_events(handler, entry, reply.events, stop_event)
                return
            self._send(handler, entry, reply, stop_event)
        except Exception:
            handler.close_connection = True
            if entry is not None and entry.status is None:
                with contextlib.suppress(Exception):
                    self._send(handler, entry, _error(500, "internal error"), stop_event)

    def _record(self, handler: _Handler, body: bytes) -> RecordedRequest:
        split = urlsplit(handler.path)
        path = split.path or "/"
        headers: dict[str, str] = {}
        for name, value in handler.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        route, ws_id = _classify(handler.command, path)
        if route in ("heartbeat", "register"):
            try:
                parsed = _loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body_id = parsed.get("workspace_id" if route == "heartbeat" else "id")
                ws_id = body_id if isinstance(body_id, str) else None
        entry = RecordedRequest(
            method=handler.command,
            path=path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=body,
            route=route,
            workspace_id=ws_id,
            time=time.monotonic(),
        )
        with self._lock:
            self._log.append(entry)
            self._changed()
        return entry

    def _drop(self, handler: _Handler, entry: RecordedRequest, *, faulted: bool = False) -> None:
        with self._lock:
            entry.status = None
            entry.faulted = entry.faulted or faulted
            self._changed()
        handler.close_connection = True
        _shutdown_socket(handler.connection)

    def _serve_events(
        self,
        handler: _Handler,
        entry: RecordedRequest,
        sub: _fake_events.Subscriber,
        stop_event: threading.Event,
    ) -> None:
        with self._lock:
            entry.status = 200
            self._changed()
        handler.close_connection = True

        def write(data: bytes) -> None:
            handler.wfile.write(data)
            handler.wfile.flush()

        def sent(n: int) -> None:
            with self._lock:
                self._hub.bytes_sent += n

        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-cache")
            handler.send_header("X-Accel-Buffering", "no")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            handler.wfile.flush()
            _fake_events.serve(write, sub, stop_event, self._lock, sent)
        except OSError:
            pass
        finally:
            self._hub.unsubscribe(sub)
            with self._lock:
                self._changed()
            # Dropped or stopped: the connection ends without the closing chunk, as a cut
            # connection would.
            _shutdown_socket(handler.connection)

    # ------------------------------------------------------------------ event stream

    def emit_event(self, workspace_id: str, kind: str, data: dict[str, Any]) -> None:
        """Send an event of type ``kind`` to the workspace's open streams."""
        self._hub.emit(workspace_id, kind, data)

    def emit_raw_event(self, workspace_id: str, frame: bytes) -> None:
        """Send bytes verbatim, as one chunk, to the workspace's open streams."""
        self._hub.emit_raw(workspace_id, frame)

    def open_streams(self, workspace_id: str | None = None) -> int:
        """How many event streams are open (for one workspace, or all)."""
        return self._hub.count(workspace_id)

    def drop_streams(self, workspace_id: str | None = None) -> int:
        """Cut the open event streams (of one workspace, or all); returns how many."""
        dropped = self._hub.drop(workspace_id)
        with self._lock:
            self._changed()
        return dropped

    def stall_streams(self, stalled: bool = True, workspace_id: str | None = None) -> None:
        """Make event streams silent (``stalled=False`` ends it): their connections stay open
        but carry nothing, not even the first ``: ping``. Without ``workspace_id`` it also
        applies to the streams opened from now on."""
        self._hub.stall(stalled, workspace_id)

    @property
    def event_bytes_sent(self) -> int:
        """Bytes of event-stream data (chunk payloads) sent so far, all streams together."""
        with self._lock:
            return self._hub.bytes_sent

    def _fault_reply(self, fault: _Fault) -> _Reply:
        status = fault.status if fault.status is not None else 200
        if fault.body_size is not None:
            return _Reply(status=status, headers=dict(fault.headers), stream_size=fault.body_size)
        body = {"error": "injected fault"} if fault.body is _MISSING else fault.body
        return _Reply(status=status, body=_encode_body(body), headers=dict(fault.headers))

    def _send(
        self,
        handler: _Handler,
        entry: RecordedRequest | None,
        reply: _Reply,
        stop_event: threading.Event,
        *,
        faulted: bool = False,
        close: bool = False,
    ) -> None:
        with self._lock:
            if reply.commit is not None:
                reply.commit()
            if entry is not None:
                entry.status = reply.status
                entry.faulted = entry.faulted or faulted
            self._changed()
        lower = {k.lower() for k in reply.headers}
        size = reply.stream_size if reply.stream_size is not None else len(reply.body)
        if close or reply.close:
            handler.close_connection = True
        try:
            handler.send_response(reply.status)
            if "content-type" not in lower:
                handler.send_header("Content-Type", "application/json")
            if "content-length" not in lower:
                handler.send_header("Content-Length", str(size))
            else:
                handler.close_connection = True
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            if handler.close_connection and "connection" not in lower:
                handler.send_header("Connection", "close")
            handler.end_headers()
            if handler.command == "HEAD":
                return
            if reply.stream_size is None:
                handler.wfile.write(reply.body)
            else:
                _stream(handler, reply.stream_size, stop_event)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True

    # ------------------------------------------------------------------ route logic
    # All _route* methods run with the lock held.

    def _route(self, entry: RecordedRequest) -> _Reply:
        if not _origin_allowed(entry.headers):
            # The real server's CORS middleware: 403 with an empty body, before any route.
            return _Reply(status=403, headers={"Content-Type": "text/plain; charset=utf-8"})
        route = entry.route
        if route == "heartbeat":
            return self._r_heartbeat(entry)
        if route == "register":
            return self._r_register(entry)
        if route == "workspace":
            return self._r_workspace(entry)
        if route == "a2a":
            return self._r_a2a(entry)
        if route == "events":
            ws_id = entry.workspace_id or ""
            denied = self._workspace_auth(entry, ws_id)
            if denied is not None:
                return denied
            if ws_id not in self._workspaces:
                return _error(404, "workspace not found")
            return _Reply(status=200, events=self._hub.subscribe(ws_id))
        if route in ("delegations", "activity", "notify", "state"):
            ws_id = entry.workspace_id or ""
            denied = self._workspace_auth(entry, ws_id)
            if denied is not None:
                return denied
            if ws_id not in self._workspaces:
                return _error(404, "workspace not found")
            if route == "delegations":
                return self._r_delegations(ws_id)
            if route == "activity":
                return self._r_activity(entry, ws_id)
            if route == "state":
                return self._r_state(entry, ws_id)
            return self._r_notify(entry, ws_id)
        return _error(404, "not found")

    def _token_owner(self, token: str) -> Workspace | None:
        for ws in self._workspaces.values():
            if token in ws.tokens:
                return ws
        return None

    def _token_valid_for(self, token: str, ws_id: str) -> bool:
        ws = self._workspaces.get(ws_id)
        return ws is not None and ws.status != "removed" and token in ws.tokens

    def _registry_auth(self, entry: RecordedRequest, ws_id: str) -> _Reply | None:
        ws = self._workspaces.get(ws_id)
        if ws is None or not ws.tokens:
            return None  # grandfathered
        token = _bearer(entry.headers)
        if token is None:
            return _error(401, _MISSING_TOKEN)
        if not self._token_valid_for(token, ws_id):
            return _error(401, _INVALID_TOKEN)
        return None

    def _workspace_auth(self, entry: RecordedRequest, ws_id: str) -> _Reply | None:
        token = _bearer(entry.headers)
        if token is None:
            return _error(401, _MISSING_TOKEN)
        if not self._token_valid_for(token, ws_id):
            return _error(401, _INVALID_TOKEN)
        return None

    def _secret_for(self, ws: Workspace) -> str:
        if not ws.inbound_secret:
            ws.inbound_secret = _new_secret()
        return ws.inbound_secret

    def _r_heartbeat(self, entry: RecordedRequest) -> _Reply:
        try:
            body = _loads(entry.body)
        except ValueError:
            return _error(400, "invalid request body")
        if not _valid_heartbeat(body):
            return _error(400, "invalid request body")
        assert isinstance(body, dict)
        ws_id: str = body["workspace_id"]
        denied = self._registry_auth(entry, ws_id)
        if denied is not None:
            return denied
        ws = self._workspaces.get(ws_id)
        if ws is None:
            if self._generation == "MAY":
                return _json_reply(200, {"status": "ok", "platform_inbound_secret": _new_secret()})
            return _json_reply(200, {"status": "ok"})
        if ws.status != "removed":
            self._apply_heartbeat(ws, body)
        if self._generation == "MAY":
            secret = self._secret_for(ws)
            return _json_reply(200, {"status": "ok", "platform_inbound_secret": secret})
        return _json_reply(200, {"status": "ok"})

    def _apply_heartbeat(self, ws: Workspace, body: dict[str, Any]) -> None:
        error_rate = body.get("error_rate")
        error_rate = float(error_rate) if error_rate is not None else 0.0
        runtime_state = body.get("runtime_state") or ""
        caps = (ws.runtime_metadata or {}).get("capabilities")
        status_mgmt = isinstance(caps, dict) and caps.get("status_mgmt") is True
        if ws.status == "online":
            if runtime_state == "wedged" or (not status_mgmt and error_rate >= 0.5):
                ws.status = "degraded"
        elif ws.status == "degraded":
            if not status_mgmt and error_rate < 0.1 and runtime_state == "":
                ws.status = "online"
        elif ws.status in ("offline", "provisioning") or (
            ws.status == "awaiting_agent" and self._generation == "MAY"
        ):
            ws.status = "online"
        ws.last_heartbeat = body
        ws.heartbeat_count += 1
        ws.error_rate = error_rate
        ws.active_tasks = body.get("active_tasks") or 0
        ws.uptime_seconds = body.get("uptime_seconds") or 0
        ws.sample_error = body.get("sample_error") or ""
        task = body.get("current_task") or ""
        if task != ws.current_task:
            self._hub.emit(
                ws.id, "TASK_UPDATED", {"current_task": task, "active_tasks": ws.active_tasks}
            )
        ws.current_task = task
        self._hub.emit(
            ws.id,
            "WORKSPACE_HEARTBEAT",
            {"active_tasks": ws.active_tasks, "uptime_seconds": ws.uptime_seconds},
        )
        metadata = body.get("runtime_metadata")
        ws.runtime_metadata = metadata if isinstance(metadata, dict) else None

    def _r_register(self, entry: RecordedRequest) -> _Reply:
        try:
            body = _loads(entry.body)
        except ValueError:
            return _error(400, "invalid request body")
        if not isinstance(body, dict):
            return _error(400, "invalid request body")
        ws_id = body.get("id")
        url = body.get("url")
        card = body.get("agent_card")
        if not isinstance(ws_id, str) or not ws_id or card is None:
            return _error(400, "invalid request body")
        if url is not None and not isinstance(url, str):
            return _error(400, "invalid request body")
        url = url or ""
        known = self._workspaces.get(ws_id)
        # The real server keeps the mode a workspace has when the body names none.
        mode = known.delivery_mode if known is not None else "push"
        if self._generation == "APR":
            if not url:
                return _error(400, "invalid request body")
        else:
            raw_mode = body.get("delivery_mode")
            if raw_mode is not None and not isinstance(raw_mode, str):
                return _error(400, "invalid request body")
            if raw_mode:
                if raw_mode not in ("push", "poll"):
                    return _error(400, "delivery_mode must be 'push' or 'poll'")
                mode = raw_mode
            if mode == "push" and not url:
                return _error(400, "url is required for push-mode workspaces")
            if mode == "push":
                refused = _refused_agent_url(url)
                if refused:
                    return _error(400, refused)
        denied = self._registry_auth(entry, ws_id)
        if denied is not None:
            return denied
        ws = self._workspaces.get(ws_id)
        if ws is None:
            ws = self._create_workspace(ws_id)
        if ws.status != "removed":
            ws.status = "online"
        ws.url = url
        ws.agent_card = card
        ws.delivery_mode = mode
        out: dict[str, object] = {"status": "registered"}
        if self._generation == "MAY":
            out["delivery_mode"] = mode
        if not ws.tokens:
            token = _new_secret()
            ws.tokens = [token]
            out["auth_token"] = token
        if self._generation == "MAY":
            out["platform_inbound_secret"] = self._secret_for(ws)
        return _json_reply(200, out)

    def _r_state(self, entry: RecordedRequest, ws_id: str) -> _Reply:
        ws = self._workspaces[ws_id]
        if ws.status == "removed":
            return _json_reply(404, {"workspace_id": ws_id, "status": "removed", "deleted": True})
        return _json_reply(
            200,
            {
                "workspace_id": ws_id,
                "status": ws.status,
                "paused": ws.status == "paused",
                "deleted": False,
            },
        )

    def _r_workspace(self, entry: RecordedRequest) -> _Reply:
        ws = self._workspaces.get(entry.workspace_id or "")
        if ws is None:
            return _error(404, "workspace not found")
        include_removed = entry.query.get("include_removed", [""])[0] == "true"
        if self._generation == "MAY" and ws.status == "removed" and not include_removed:
            return _error(410, "workspace removed", id=ws.id, hint=_REMOVED_HINT, removed_at=None)
        out: dict[str, object] = {
            "id": ws.id,
            "name": ws.name,
            "role": None,
            "tier": 1,
            "status": ws.status,
            "url": ws.url,
            "parent_id": ws.parent_id,
            "active_tasks": ws.active_tasks,
            "max_concurrent_tasks": 1,
            "last_error_rate": ws.error_rate,
            "uptime_seconds": ws.uptime_seconds,
            "runtime": "",
            "x": 0,
            "y": 0,
            "collapsed": False,
            "agent_card": ws.agent_card,
            "last_outbound_at": None,
        }
        if self._generation == "MAY":
            out["broadcast_enabled"] = False
            out["talk_to_user_enabled"] = ws.talk_to_user_enabled
        return _json_reply(200, out)

    def _r_delegations(self, ws_id: str) -> _Reply:
        entries = self._delegations[ws_id]
        rows: list[object] = []
        for e in reversed(entries):
            if len(rows) >= _DELEGATIONS_CAP:
                break
            rows.append(e.value if isinstance(e, _Raw) else e.to_json(self._generation))
        return _json_reply(200, rows)

    def _r_activity(self, entry: RecordedRequest, ws_id: str) -> _Reply:
        def param(name: str) -> str:
            values = entry.query.get(name)
            return values[0] if values else ""

        source = param("source")
        if source not in ("", "canvas", "agent"):
            return _error(400, "source must be 'canvas' or 'agent'")
        limit = _ACTIVITY_DEFAULT_LIMIT
        raw_limit = param("limit")
        if _INT_RE.match(raw_limit):
            n = int(raw_limit)
            if n > 0:
                limit = min(n, _ACTIVITY_MAX_LIMIT)
        activity_type = param("type")
        # The log is in created_at order; a row not yet committed is invisible.
        entries = [e for e in self._activity[ws_id] if _visible(e)]
        since_id = param("since_id") if self._generation == "MAY" else ""
        start = 0
        if since_id:
            pos = next(
                (i for i, e in enumerate(entries) if isinstance(e, _Activity) and e.id == since_id),
                None,
            )
            if pos is None:
                if not _is_uuid(since_id):
                    return _error(500, "cursor lookup failed")
                return _error(410, "cursor not found — reset cursor")
            # Rows with a created_at strictly later than the cursor row's, oldest first (as
            # the real server): a row that committed late with an older created_at is never
            # returned after a newer row's id, however long ago it became visible.
            start = pos + 1

        def keep(e: _ActivityEntry) -> bool:
            if isinstance(e, _Raw):
                return True
            if activity_type and e.activity_type != activity_type:
                return False
            if source == "canvas" and e.source_id is not None:
                return False
            return not (source == "agent" and e.source_id is None)

        selected = [e for e in entries[start:] if keep(e)]
        ordered = selected if since_id else selected[::-1]
        return _json_reply(200, [_entry_json(e) for e in ordered[:limit]])

    def _r_notify(self, entry: RecordedRequest, ws_id: str) -> _Reply:
        try:
            body = _loads(entry.body)
        except ValueError:
            return _error(400, "message is required")
        if not isinstance(body, dict):
            return _error(400, "message is required")
        message = body.get("message")
        if not isinstance(message, str) or not message:
            return _error(400, "message is required")
        attachments = body.get("attachments")
        if attachments is not None:
            if not isinstance(attachments, list):
                return _error(400, "message is required")
            for i, att in enumerate(attachments):
                if not (
                    isinstance(att, dict)
                    and isinstance(att.get("uri"), str)
                    and att["uri"]
                    and isinstance(att.get("name"), str)
                    and att["name"]
                ):
                    return _error(400, f"attachment[{i}]: uri and name are required")
        ws = self._workspaces[ws_id]
        if ws.status == "removed":
            return _error(404, "workspace not found")
        if self._generation == "MAY" and not ws.talk_to_user_enabled:
            return _error(403, "talk_to_user_disabled", hint=_TALK_TO_USER_HINT)
        preview = message if len(message) <= 80 else message[:80] + "…"
        row = _Activity(
            id=str(uuid.uuid4()),
            workspace_id=ws_id,
            activity_type="a2a_receive",
            status="ok",
            source_id=None,
            method="notify",
            summary=f"Agent message: {preview}",
            created_at=self._now(),
            response_body={"result": message},
        )
        self._activity[ws_id].append(row)
        self._emit_activity(row)
        return _json_reply(200, {"status": "sent"})

    def _r_a2a(self, entry: RecordedRequest) -> _Reply:
        target_id = entry.workspace_id or ""
        try:
            body = _loads(entry.body)
        except ValueError:
            return _error(400, "invalid JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid JSON")
        caller = entry.headers.get("x-workspace-id", "").strip()
        token = _bearer(entry.headers)
        if not caller and token is not None and self._generation == "MAY":
            owner = self._token_owner(token)
            if owner is not None and owner.status != "removed":
                caller = owner.id
        if caller.startswith(_BAD_CALLER_PREFIXES):
            return _error(403, "invalid caller ID")
        if caller and caller != target_id:
            caller_ws = self._workspaces.get(caller)
            if caller_ws is not None and caller_ws.tokens:
                if token is None:
                    return _error(401, "missing caller auth token")
                if not self._token_valid_for(token, caller):
                    return _error(401, "invalid caller auth token")
        ws = self._workspaces.get(target_id)
        if ws is None:
            return _error(404, "workspace not found")
        # As on the real server, a removed workspace's messages still reach its old agent.
        if ws.delivery_mode != "poll" and ws.status == "hibernated":
            reply = _error(503, _WAKING, retry_after=15, waking=True)
            reply.headers["Retry-After"] = "15"
            return reply
        if ws.delivery_mode != "poll" and ws.status in _PAUSED_STATUSES:
            return _json_reply(503, {"error": "workspace has no URL", "status": ws.status})

        normalized = _normalize_jsonrpc(body)
        if ws.delivery_mode == "poll" and self._generation == "MAY":
            queued_method = normalized.get("method")
            queued = queued_method if isinstance(queued_method, str) else None
            self._activity[target_id].append(
                _Activity(
                    id=str(uuid.uuid4()),
                    workspace_id=target_id,
                    activity_type="a2a_receive",
                    status="ok",
                    source_id=caller or None,
                    method=queued,
                    summary=f"{queued or ''} → {ws.name} (queued for poll)",
                    created_at=self._now(),
                    request_body=normalized,
                )
            )
            return _json_reply(200, {"status": "queued", "delivery_mode": "poll", "method": queued})
        script = self._a2a_script[target_id]
        scripted = script.popleft() if script else None
        if scripted is None:
            scripted = Response()
        status = scripted.status
        if scripted.body is not None:
            payload = _encode_body(scripted.body)
        elif status < 400:
            payload = _encode_body(
                {
                    "jsonrpc": "2.0",
                    "id": normalized.get("id"),
                    "result": {
                        "kind": "message",
                        "role": "agent",
                        "parts": [{"kind": "text", "text": "ok"}],
                    },
                }
            )
        else:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "error"
            payload = _encode_body({"error": phrase})
        method = normalized.get("method")
        method_str = method if isinstance(method, str) else None

        def commit() -> None:
            row = _Activity(
                id=str(uuid.uuid4()),
                workspace_id=target_id,
                activity_type="a2a_receive",
                status="ok" if status < 400 else "error",
                source_id=caller or None,
                method=method_str,
                summary=f"{method_str or ''} → {ws.name}",
                created_at=self._now(),
                request_body=normalized,
            )
            self._activity[target_id].append(row)
            self._emit_activity(row)

        return _Reply(
            status=status,
            body=payload,
            headers=dict(scripted.headers),
            delay=scripted.delay,
            commit=commit,
        )


def _refused_agent_url(url: str) -> str | None:
    """The real server's refusal of a push URL, or None: http(s) only, no loopback IP
    (``localhost`` by name is accepted)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f'url scheme must be http or https, got "{parts.scheme}"'
    host = parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return "url targets a blocked address: loopback address"
    return None


def _normalize_jsonrpc(body: dict[str, Any]) -> dict[str, Any]:
    """Wrap a bare A2A body into a JSON-RPC envelope and add a messageId (like the proxy)."""
    if "jsonrpc" in body:
        out = dict(body)
    else:
        out = {
            "jsonrpc": "2.0",
            "id": str(uuid.uuid4()),
            "method": body.get("method"),
            "params": body.get("params"),
        }
    params = out.get("params")
    if isinstance(params, dict):
        message = params.get("message")
        if isinstance(message, dict) and "messageId" not in message:
            out["params"] = {**params, "message": {**message, "messageId": str(uuid.uuid4())}}
    return out


def _visible(entry: _ActivityEntry) -> bool:
    return isinstance(entry, _Raw) or entry.committed


def _entry_json(entry: _ActivityEntry) -> object:
    return entry.value if isinstance(entry, _Raw) else entry.to_json()


def _stream(handler: _Handler, size: int, stop_event: threading.Event) -> None:
    chunk = b"0," * (_STREAM_CHUNK // 2)
    remaining = size
    if remaining > 0:
        handler.wfile.write(b"[")
        remaining -= 1
    while remaining > 0:
        if stop_event.is_set():
            handler.close_connection = True
            _shutdown_socket(handler.connection)
            return
        piece = chunk if remaining >= len(chunk) else chunk[:remaining]
        handler.wfile.write(piece)
        remaining -= len(piece)


class _Trickle(io.BufferedIOBase):
    """A response writer that sends one byte every ``gap`` seconds (a trickling server)."""

    def __init__(self, raw: io.BufferedIOBase, gap: float, stop_event: threading.Event) -> None:
        super().__init__()
        self._raw = raw
        self._gap = gap
        self._stop = stop_event

    def writable(self) -> bool:
        return True

    def write(self, buffer: Any) -> int:
        data = bytes(buffer)
        for i in range(len(data)):
            if self._stop.wait(self._gap):
                raise OSError("the platform is stopping")
            self._raw.write(data[i : i + 1])
            self._raw.flush()
        return len(data)

    def flush(self) -> None:
        self._raw.flush()


def _shutdown_socket(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
