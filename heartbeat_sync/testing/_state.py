"""Everything a FakePlatform remembers: workspaces, tokens, delegations, activity, the request log.

One re-entrant lock guards it all, so that tests and the server's handler threads can use it at
once; every change bumps a version and wakes :meth:`State.wait_for`. The admin operations
(pause, hibernate, delete) change statuses the way the real server's admin routes do; the
routes in ``_routes`` read and change this state with the lock held. How a message to a
workspace is logged (the proxy's rows and events, per generation) is here too, shared by the
A2A route and the set-up methods that stand for one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from typing import Any, Callable

from ._events import EventHub
from ._limits import RateLimiter
from ._model import (
    AUGUST,
    Activity,
    ActivityEntry,
    Delegation,
    DelegationEntry,
    RecordedRequest,
    Response,
    Workspace,
    format_ts,
    new_secret,
)

#: Server generations modelled: ``MAY`` (May 2026, the default), ``2026-08`` (August 2026) and
#: ``APR`` (an older server).
GENERATIONS = ("MAY", AUGUST, "APR")
#: Other names a generation may be given by; ``generation`` reports the canonical one.
ALIASES = {"2026-05": "MAY"}
#: The 2026-08 platform root, created with every fresh database.
ROOT_ID = "ea3cfcf1-cb9c-53b4-90fd-c53123569c4a"
ROOT_NAME = "Org Concierge"
#: The 202 of a message the proxy queued instead of delivering.
BUSY_QUEUED = "workspace agent busy — request queued, will dispatch when capacity available"


def canonical_generation(generation: object) -> str:
    """The generation's canonical name; ``ValueError`` for one not modelled."""
    name = ALIASES.get(generation, generation) if isinstance(generation, str) else None
    if name not in GENERATIONS:
        raise ValueError(
            f"generation must be 'MAY' (or '2026-05'), '2026-08' or 'APR', not {generation!r}"
        )
    assert isinstance(name, str)
    return name


class State:
    """The platform's data, behind one lock (``RLock``: every method may be called with it held)."""

    def __init__(self, generation: str, max_request_log: int, org_id: str | None = None) -> None:
        generation = canonical_generation(generation)
        if max_request_log < 1:
            raise ValueError("max_request_log must be >= 1")
        if org_id is not None and (
            not isinstance(org_id, str) or not org_id or org_id != org_id.strip()
        ):
            raise ValueError("org_id must be a non-empty string without surrounding spaces")
        self.generation = generation
        #: The August 2026 generation.
        self.aug = generation == AUGUST
        #: MAY or 2026-08: the answers both newer generations share (APR has not them).
        self.modern = generation != "APR"
        #: The server's ADMIN_TOKEN.
        self.admin_token = new_secret()
        #: MOLECULE_ORG_ID: the tenant guard is on when set.
        self.org_id = org_id
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._version = 0
        self.workspaces: dict[str, Workspace] = {}
        self.activity: dict[str, list[ActivityEntry]] = {}
        self.delegations: dict[str, list[DelegationEntry]] = {}
        self.a2a_script: dict[str, deque[Response]] = {}
        self.log: deque[RecordedRequest] = deque(maxlen=max_request_log)
        # The stream has its own lock, as the real server's pub/sub is apart from its
        # database: events flow while requests wait (see FakePlatform.held).
        self.hub = EventHub(threading.RLock())
        self.limiter = RateLimiter()
        self._last_us = 0
        # One counter for the whole server, as activity_logs.seq on the real one.
        self._seq = 0
        # Messages the proxy queued (a2a_queue), by workspace: delivered by idle beats.
        self.a2a_queue: dict[str, deque[str]] = {}
        if self.aug:
            self.create_workspace(
                ROOT_ID, name=ROOT_NAME, status="offline", kind="platform", delivery_mode="push"
            )

    # ------------------------------------------------------------------ change tracking

    def changed(self) -> None:
        """Wake every :meth:`wait_for` (call with the lock held)."""
        self._version += 1
        self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (run without the lock) is true; its last result."""
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

    def record(self, entry: RecordedRequest) -> None:
        """Append a request to the log."""
        with self.lock:
            self.log.append(entry)
            self.changed()

    def answered(self, entry: RecordedRequest, status: int | None, *, faulted: bool) -> None:
        """Note how a logged request was answered (``None``: dropped without an answer)."""
        with self.lock:
            entry.status = status
            entry.faulted = entry.faulted or faulted
            self.changed()

    # ------------------------------------------------------------------ workspaces and tokens

    def ws(self, workspace_id: str) -> Workspace:
        """The workspace; ``KeyError`` naming it when unknown."""
        try:
            return self.workspaces[workspace_id]
        except KeyError:
            raise KeyError(f"unknown workspace {workspace_id!r}") from None

    def now_us(self) -> int:
        """Microseconds since the epoch, strictly later than every earlier value (lock held)."""
        micros = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = micros
        return micros

    def now(self) -> str:
        """A ``created_at`` timestamp, strictly later than every earlier one (lock held)."""
        return format_ts(self.now_us(), trim=self.aug)

    def next_seq(self) -> int:
        """The next value of the server-wide activity sequence (lock held)."""
        self._seq += 1
        return self._seq

    def create_workspace(self, workspace_id: str, **fields: Any) -> Workspace:
        """A new workspace with empty logs (lock held; the id is not checked)."""
        ws = Workspace(id=workspace_id, **fields)
        self.workspaces[workspace_id] = ws
        self.activity[workspace_id] = []
        self.delegations[workspace_id] = []
        self.a2a_script[workspace_id] = deque()
        self.a2a_queue[workspace_id] = deque()
        return ws

    def token_owner(self, token: str) -> Workspace | None:
        """The workspace holding ``token`` as a live token, if any."""
        for ws in self.workspaces.values():
            if token in ws.tokens:
                return ws
        return None

    def token_valid_for(self, token: str, ws_id: str) -> bool:
        """True when ``token`` is a live token of the (not removed) workspace."""
        ws = self.workspaces.get(ws_id)
        return ws is not None and ws.status != "removed" and token in ws.tokens

    def secret_for(self, ws: Workspace) -> str:
        """The workspace's inbound secret, minted on first use."""
        if not ws.inbound_secret:
            ws.inbound_secret = new_secret()
        return ws.inbound_secret

    def set_tokens(self, workspace_id: str, tokens: list[str]) -> None:
        """Replace the workspace's live tokens (the list object is replaced, never mutated)."""
        with self.lock:
            self.ws(workspace_id).tokens = tokens
            self.changed()

    def rotate_token(self, workspace_id: str) -> str:
        """Revoke every live token, mint one, announce it (as ``/external/rotate``)."""
        with self.lock:
            token = new_secret()
            self.set_tokens(workspace_id, [token])
            self.hub.emit(
                workspace_id, "EXTERNAL_CREDENTIALS_ROTATED", {"workspace_id": workspace_id}
            )
            return token

    # ------------------------------------------------------------------ admin states

    def pause(self, workspace_id: str) -> int:
        """Pause the workspace and its descendants; how many were paused."""
        with self.lock:
            ws = self.ws(workspace_id)
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
                self.hub.emit(current.id, "WORKSPACE_PAUSED", {"name": current.name})
                paused += 1
                todo.extend(w for w in self.workspaces.values() if w.parent_id == current.id)
            self.changed()
            return paused

    def hibernate(self, workspace_id: str) -> None:
        """Hibernate an online or degraded workspace."""
        with self.lock:
            ws = self.ws(workspace_id)
            if ws.status not in ("online", "degraded"):
                raise KeyError(f"workspace {workspace_id!r} is not online or degraded")
            ws.status = "hibernated"
            ws.url = ""
            # The real server adds the workspace's tier, which this fake does not model.
            self.hub.emit(ws.id, "WORKSPACE_HIBERNATED", {"name": ws.name})
            self.changed()

    def delete(self, workspace_id: str, *, cascade: bool = False) -> int:
        """Remove the workspace (and, with ``cascade``, its descendants) and revoke their
        tokens; how many descendants were removed."""
        with self.lock:
            ws = self.ws(workspace_id)
            descendants = self.descendants(ws.id) if cascade else []
            for child in descendants:
                self._remove(child, 0)
            self._remove(ws, len(descendants))
            self.changed()
            return len(descendants)

    def _remove(self, ws: Workspace, cascade_deleted: int) -> None:
        # An open stream stays open and hears of it; May announces every DELETE, even a repeat.
        again = ws.status == "removed"
        ws.status = "removed"
        ws.tokens = []
        if not (again and self.aug):
            self.hub.emit(ws.id, "WORKSPACE_REMOVED", {"cascade_deleted": cascade_deleted})

    def children(self, workspace_id: str) -> list[Workspace]:
        """The workspace's children that are not removed, in creation order."""
        return [
            w
            for w in self.workspaces.values()
            if w.parent_id == workspace_id and w.status != "removed"
        ]

    def descendants(self, workspace_id: str) -> list[Workspace]:
        """Every descendant that is not removed, parents before their children."""
        out: list[Workspace] = []
        todo = self.children(workspace_id)
        while todo:
            current = todo.pop(0)
            out.append(current)
            todo.extend(self.children(current.id))
        return out

    # ------------------------------------------------------------------ delegations

    def add_delegation(self, workspace_id: str, **fields: Any) -> str:
        """Store a delegation (``source_id`` defaults to the workspace); returns its id.

        A ``direction="received"`` row is the callee's view of another workspace's delegation:
        it needs the delegating ``source_id``, its ``target_id`` defaults to the workspace, and
        it sends no event (the real server tells only the delegating workspace)."""
        with self.lock:
            self.ws(workspace_id)
            now = self.now_us()
            source_id = fields.pop("source_id")
            delegation_id = fields.pop("delegation_id")
            direction = fields.get("direction", "sent")
            if direction not in ("sent", "received"):
                raise ValueError(f"direction must be 'sent' or 'received', not {direction!r}")
            if direction == "received":
                if source_id is None:
                    raise ValueError("a received delegation needs source_id: who delegated")
                if not fields.get("target_id"):
                    fields["target_id"] = workspace_id
            deleg = Delegation(
                delegation_id=delegation_id if delegation_id is not None else str(uuid.uuid4()),
                row_id=str(uuid.uuid4()),
                source_id=source_id if source_id is not None else workspace_id,
                created_us=now,
                updated_us=now,
                **fields,
            )
            self.delegations[workspace_id].append(deleg)
            self._emit_delegation(workspace_id, deleg, sent=True)
            self.changed()
            return deleg.delegation_id

    def set_delegation(self, workspace_id: str, delegation_id: str, **fields: Any) -> None:
        """Change the fields given (not ``None``) of a stored delegation; bump ``updated_at``."""
        with self.lock:
            self.ws(workspace_id)
            for entry in self.delegations[workspace_id]:
                if isinstance(entry, Delegation) and entry.delegation_id == delegation_id:
                    status = fields.get("status")
                    changed = status is not None and status != entry.status
                    for name, value in fields.items():
                        if value is not None:
                            setattr(entry, name, value)
                    entry.updated_us = self.now_us()
                    if changed:
                        self._emit_delegation(workspace_id, entry, sent=False)
                    self.changed()
                    return
            raise KeyError(f"unknown delegation {delegation_id!r}")

    def _emit_delegation(self, workspace_id: str, deleg: Delegation, *, sent: bool) -> None:
        # Lock held; the events the real server sends the delegating workspace.
        if deleg.direction != "sent":
            return
        ids = {"delegation_id": deleg.delegation_id, "target_id": deleg.target_id}
        if sent:
            self.hub.emit(workspace_id, "DELEGATION_SENT", {**ids, "task_preview": deleg.summary})
        if deleg.status == "completed":
            preview = {"response_preview": deleg.response_preview}
            self.hub.emit(workspace_id, "DELEGATION_COMPLETE", {**ids, **preview})
        elif deleg.status == "failed":
            self.hub.emit(workspace_id, "DELEGATION_FAILED", {**ids, "error": deleg.error})
        elif not sent:
            self.hub.emit(workspace_id, "DELEGATION_STATUS", {**ids, "status": deleg.status})

    # ------------------------------------------------------------------ activity

    def new_row(
        self, workspace_id: str, *, same_instant_as: str | None = None, **fields: Any
    ) -> Activity:
        """A row for the workspace's log, its time and ``seq`` drawn (not stored; lock held).

        ``same_instant_as`` gives it the ``created_at`` of that row of the workspace."""
        created_us = self.now_us()
        if same_instant_as is not None:
            created_us = self.find_row(workspace_id, same_instant_as).created_us
        if fields.get("id") is None:
            fields["id"] = str(uuid.uuid4())
        return Activity(
            workspace_id=workspace_id, created_us=created_us, seq=self.next_seq(), **fields
        )

    def find_row(self, workspace_id: str, activity_id: str) -> Activity:
        """The workspace's row with that id (committed or not); ``KeyError`` if none."""
        for entry in self.activity[workspace_id]:
            if isinstance(entry, Activity) and entry.id == activity_id:
                return entry
        raise KeyError(f"no activity row {activity_id!r} in {workspace_id!r}")

    def add_activity(
        self,
        workspace_id: str,
        activity_id: str | None,
        *,
        same_instant_as: str | None = None,
        **fields: Any,
    ) -> str:
        """Append a row to the workspace's log, announce it on the event stream; its id."""
        with self.lock:
            self.ws(workspace_id)
            row = self.new_row(
                workspace_id, same_instant_as=same_instant_as, id=activity_id, **fields
            )
            self.activity[workspace_id].append(row)
            if row.committed:
                self.emit_activity(row)  # a row committed late is announced at its commit
            self.changed()
            return row.id

    def emit_activity(self, row: Activity, summary: str | None = None) -> None:
        """``ACTIVITY_LOGGED`` for the row, as the real server sends it (lock held)."""
        self.hub.emit(row.workspace_id, "ACTIVITY_LOGGED", row.event_data(self.generation, summary))

    def commit_activity(self, workspace_id: str, activity_id: str) -> None:
        """Make a late row visible, with its original ``created_at``."""
        with self.lock:
            self.ws(workspace_id)
            row = self.find_row(workspace_id, activity_id)
            if isinstance(row, Activity) and not row.committed:
                row.committed = True
                # The real server announces a row after its insert returns: at its commit.
                self.emit_activity(row)
            self.changed()

    # ------------------------------------------------------------------ messages (the proxy's rows)

    def ingest(self, ws: Workspace, request: dict[str, Any], caller: str | None) -> Activity:
        """2026-08: the ``(ingest)`` row every message gets before it is delivered or queued,
        and its first ``ACTIVITY_LOGGED`` (with ``message_id``); lock held."""
        method = _method(request)
        row = self.new_row(
            ws.id,
            activity_type="a2a_receive",
            status="ok",
            source_id=caller,
            target_id=ws.id,
            method=method,
            summary=f"{method or ''} → {ws.name} (ingest)",
            request_body=request,
            message_id=_message_id(request),
        )
        self.activity[ws.id].append(row)
        self.emit_activity(row)
        if caller is None:
            # A canvas message: the chat view hears of it between the row's two events.
            self.hub.emit(
                ws.id,
                "USER_MESSAGE",
                {"content": _text(request), "message_id": row.message_id, "workspace_id": ws.id},
            )
        self.changed()
        return row

    def queue_for_poll(self, ws: Workspace, request: dict[str, Any], caller: str | None) -> str:
        """A message to a poll-mode workspace, logged as the real server logs it; the row id.

        MAY: one ``(queued for poll)`` row and its event. 2026-08: one ``(ingest)`` row and
        two events, ``(ingest)`` then ``(queued for poll)``, both with ``message_id`` (the
        upsert that sends the second draws a ``seq`` it throws away)."""
        method = _method(request)
        summary = f"{method or ''} → {ws.name} (queued for poll)"
        if self.aug:
            row = self.ingest(ws, request, caller)
            self.next_seq()
            self.emit_activity(row, summary=summary)
        else:
            row = self.new_row(
                ws.id,
                activity_type="a2a_receive",
                status="ok",
                source_id=caller,
                method=method,
                summary=summary,
                request_body=request,
            )
            self.activity[ws.id].append(row)
            self.emit_activity(row)
        self.changed()
        return row.id

    def queue_busy(
        self, ws: Workspace, request: dict[str, Any], caller: str | None, *, ingested: bool = False
    ) -> tuple[list[str], int]:
        """A message the proxy queued behind a busy (or not yet registered) agent: the ids of
        the rows written and the workspace's queue depth. Lock held.

        2026-08: the ``(ingest)`` row (unless ``ingested``: already written) and a
        ``(queued: target busy)`` row with the same ``request_body``, another id and ``seq``, a
        numeric ``duration_ms`` and no ``message_id``. MAY: one ``status: error`` row
        ``A2A request to <name> failed: …``, as when the agent call ends in EOF."""
        method = _method(request)
        ids: list[str] = []
        if self.aug:
            if not ingested:
                ids.append(self.ingest(ws, request, caller).id)
            row = self.new_row(
                ws.id,
                activity_type="a2a_receive",
                status="ok",
                source_id=caller,
                target_id=ws.id,
                method=method,
                summary=f"{method or ''} → {ws.name} (queued: target busy)",
                request_body=request,
                duration_ms=0,
            )
        else:
            detail = f'Post "{ws.url or "http://localhost"}": EOF'
            row = self.new_row(
                ws.id,
                activity_type="a2a_receive",
                status="error",
                source_id=caller,
                method=method,
                summary=f"A2A request to {ws.name} failed: {detail}",
                request_body=request,
            )
        self.activity[ws.id].append(row)
        self.emit_activity(row)
        ids.append(row.id)
        queue = self.a2a_queue[ws.id]
        queue.append(_message_id(request) or row.id)
        self.changed()
        return ids, len(queue)


def canvas_marked(request: dict[str, Any], workspace_id: str) -> dict[str, Any]:
    """2026-08: the request as the proxy stores a canvas-class message (the admin's): with
    ``params.metadata`` marking the user and ``params.message.contextId``."""
    params = request.get("params")
    if not isinstance(params, dict):
        return request
    out = dict(params)
    metadata = out.get("metadata")
    out["metadata"] = {
        **(metadata if isinstance(metadata, dict) else {}),
        "source": "canvas_user",
        "user_identity_status": "UNAUTHENTICATED",
    }
    message = out.get("message")
    if isinstance(message, dict) and "contextId" not in message:
        out["message"] = {**message, "contextId": f"canvas-{workspace_id}"}
    return {**request, "params": out}


def _method(request: dict[str, Any]) -> str | None:
    method = request.get("method")
    return method if isinstance(method, str) else None


def _message(request: dict[str, Any]) -> dict[str, Any]:
    params = request.get("params")
    message = params.get("message") if isinstance(params, dict) else None
    return message if isinstance(message, dict) else {}


def _message_id(request: dict[str, Any]) -> str | None:
    value = _message(request).get("messageId")
    return value if isinstance(value, str) else None


def _text(request: dict[str, Any]) -> str:
    parts = _message(request).get("parts")
    if not isinstance(parts, list):
        return ""
    return "".join(
        p["text"]
        for p in parts
        if isinstance(p, dict)
        and (p.get("kind") == "text" or p.get("type") == "text")
        and isinstance(p.get("text"), str)
    )


def message_request(text: str, method: str, message_id: str | None = None) -> dict[str, Any]:
    """A JSON-RPC request carrying ``text`` as one ``kind: text`` part."""
    return {
        "jsonrpc": "2.0",
        "id": str(uuid.uuid4()),
        "method": method,
        "params": {
            "message": {
                "role": "user",
                "messageId": message_id if message_id is not None else str(uuid.uuid4()),
                "parts": [{"kind": "text", "text": text}],
            }
        },
    }
