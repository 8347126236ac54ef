"""Which route a request is, and the ``/workspaces/:id`` routes other than ``a2a``.

:func:`route` runs with the platform lock held and returns the answer as a :class:`Reply`;
the registry routes are in ``_registry``, the A2A proxy in ``_a2a``. The checks that come
before any route (CORS, the tenant guard) run first, as the real server's middleware does.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ._a2a import a2a
from ._auth import admin_auth, origin_allowed, registry_auth, tenant_guard, workspace_auth
from ._model import (
    Activity,
    ActivityEntry,
    Raw,
    RecordedRequest,
    Reply,
    entry_json,
    error,
    is_uuid,
    json_object,
    json_reply,
    text_reply,
    visible,
)
from ._registry import heartbeat, register
from ._state import State

_DELEGATIONS_CAP = 50
_ACTIVITY_DEFAULT_LIMIT = 100
_ACTIVITY_MAX_LIMIT = 500
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_TALK_TO_USER_HINT = (
    "talk_to_user is disabled for this workspace; enable it in the workspace settings "
    "to let the agent message the user"
)
_REMOVED_HINT = "this workspace was removed; pass ?include_removed=true to read it anyway"
_AUGUST_REMOVED_HINT = (
    "Create a replacement workspace in Canvas, then open Settings → Workspace Tokens → + New Token"
)
_CURSOR_GONE = "cursor not found — reset cursor"
_AUGUST_CURSOR_GONE = (
    "since_id cursor not found (row may have been pruned or belongs to a different workspace); "
    "omit since_id to reset"
)
_NOT_FOUND_PAGE = "404 page not found"
_INT64_MAX = (1 << 63) - 1


def classify(method: str, path: str) -> tuple[str, str | None]:
    """Map (method, path) to (route, workspace id from the path)."""
    if path == "/registry/heartbeat":
        return ("heartbeat" if method == "POST" else "unknown"), None
    if path == "/registry/register":
        return ("register" if method == "POST" else "unknown"), None
    segments = path.split("/")
    if len(segments) == 4 and segments[1] == "registry" and segments[3] == "peers":
        return ("peers" if method == "GET" else "unknown"), unquote(segments[2])
    if len(segments) < 3 or segments[0] != "" or segments[1] != "workspaces" or not segments[2]:
        return "unknown", None
    ws_id = unquote(segments[2])
    rest = segments[3:]
    if not rest:
        if method == "DELETE":
            return "delete", ws_id
        return ("workspace" if method == "GET" else "unknown"), ws_id
    if rest == ["activity", "ack"] and method == "POST":
        return "ack", ws_id
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


def route(state: State, entry: RecordedRequest) -> Reply:
    if not origin_allowed(entry.headers):
        # The real server's CORS middleware: 403 with an empty body, before any route.
        return Reply(status=403, headers={"Content-Type": "text/plain; charset=utf-8"})
    guarded = tenant_guard(state, entry)
    if guarded is not None:
        return guarded
    route = entry.route
    if route == "heartbeat":
        return heartbeat(state, entry)
    if route == "register":
        return register(state, entry)
    if route == "workspace":
        return _workspace(state, entry)
    if route == "a2a":
        return a2a(state, entry)
    if route == "peers":
        return _peers(state, entry)
    if route == "delete":
        return _delete(state, entry)
    if route == "ack" and not state.aug:
        return text_reply(404, _NOT_FOUND_PAGE)  # no such route before 2026-08
    if route in ("delegations", "activity", "notify", "state", "events", "ack"):
        ws_id = entry.workspace_id or ""
        denied = workspace_auth(state, entry, ws_id)
        if denied is not None:
            return denied
        if ws_id not in state.workspaces:
            if route == "ack":
                return error(500, "failed to record ack")  # the admin's ack of no workspace
            return error(404, "workspace not found")
        if route == "events":
            return Reply(status=200, events=state.hub.subscribe(ws_id))
        if route == "delegations":
            return _delegations(state, ws_id)
        if route == "activity":
            return _activity(state, entry, ws_id)
        if route == "state":
            return _workspace_state(state, entry, ws_id)
        if route == "ack":
            return _ack(state, entry, ws_id)
        return _notify(state, entry, ws_id)
    if state.aug:
        return text_reply(404, _NOT_FOUND_PAGE)
    return error(404, "not found")


def _workspace_state(state: State, entry: RecordedRequest, ws_id: str) -> Reply:
    ws = state.workspaces[ws_id]
    if ws.status == "removed":
        return json_reply(404, {"workspace_id": ws_id, "status": "removed", "deleted": True})
    return json_reply(
        200,
        {
            "workspace_id": ws_id,
            "status": ws.status,
            "paused": ws.status == "paused",
            "deleted": False,
        },
    )


def _workspace(state: State, entry: RecordedRequest) -> Reply:
    ws = state.workspaces.get(entry.workspace_id or "")
    if ws is None:
        return error(404, "workspace not found")
    include_removed = entry.query.get("include_removed", [""])[0] == "true"
    if state.modern and ws.status == "removed" and not include_removed:
        hint = _AUGUST_REMOVED_HINT if state.aug else _REMOVED_HINT
        return error(410, "workspace removed", id=ws.id, hint=hint, removed_at=None)
    root = ws.kind == "platform"
    out: dict[str, object] = {
        "id": ws.id,
        "name": ws.name,
        "role": ws.role,
        "tier": 0 if root else 1,
        "status": ws.status,
        "url": ws.url,
        "parent_id": ws.parent_id,
        "active_tasks": ws.active_tasks,
        "max_concurrent_tasks": 1,
        "last_error_rate": ws.error_rate,
        "uptime_seconds": ws.uptime_seconds,
        "runtime": "hermes" if root else "",
        "x": 0,
        "y": 0,
        "collapsed": False,
        "agent_card": ws.agent_card,
        "last_outbound_at": None,
    }
    if state.modern:
        out["broadcast_enabled"] = root
        out["talk_to_user_enabled"] = ws.talk_to_user_enabled
    if state.aug:
        last = ws.last_heartbeat or {}
        out.update(
            kind=ws.kind,
            last_heartbeat_at=ws.last_heartbeat_at,
            last_sample_error=ws.sample_error,
            wedged=last.get("runtime_state") == "wedged",
            compute={},
            mcp_surface=None,
            loaded_mcp_tools=[],
        )
    return json_reply(200, out)


def _peers(state: State, entry: RecordedRequest) -> Reply:
    """``GET /registry/:id/peers``: siblings, children, then the parent, never a removed one;
    ``?q=`` keeps those whose name holds it (any case)."""
    ws_id = entry.workspace_id or ""
    denied = registry_auth(state, entry, ws_id, admin_ok=state.aug)
    if denied is not None:
        return denied
    ws = state.workspaces.get(ws_id)
    if ws is None:
        return error(404, "workspace not found")
    # No "kind" here, the 2026-08 root included: it is listed as any parent is.
    live = [w for w in state.workspaces.values() if w.status != "removed"]
    peers = [w for w in live if w.parent_id == ws.parent_id and w.id != ws.id]
    peers += [w for w in live if w.parent_id == ws.id]
    peers += [w for w in live if ws.parent_id is not None and w.id == ws.parent_id]
    needle = entry.query.get("q", [""])[0].strip().lower()
    rows: list[object] = [
        {
            "id": w.id,
            "name": w.name,
            "role": w.role,
            "tier": 0 if w.kind == "platform" else 1,
            "status": w.status,
            "agent_card": w.agent_card,
            "url": w.url or "",
            "parent_id": w.parent_id,
            "active_tasks": w.active_tasks,
        }
        for w in peers
        if needle in w.name.lower()
    ]
    return json_reply(200, rows)


def _delegations(state: State, ws_id: str) -> Reply:
    entries = state.delegations[ws_id]
    rows: list[object] = []
    for e in reversed(entries):
        if len(rows) >= _DELEGATIONS_CAP:
            break
        if isinstance(e, Raw):
            rows.append(e.value)
        elif e.direction == "sent" or state.aug:
            # Only 2026-08 asks the ledger for the rows where the workspace is the callee.
            rows.append(e.to_json(state.generation))
    return json_reply(200, rows)


def _activity(state: State, entry: RecordedRequest, ws_id: str) -> Reply:
    def param(name: str) -> str:
        values = entry.query.get(name)
        return values[0] if values else ""

    source = param("source")
    if source not in ("", "canvas", "agent"):
        return error(400, "source must be 'canvas' or 'agent'")
    limit = _ACTIVITY_DEFAULT_LIMIT
    raw_limit = param("limit")
    if _INT_RE.match(raw_limit):
        n = int(raw_limit)
        if n > 0:
            limit = min(n, _ACTIVITY_MAX_LIMIT)
    activity_type = param("type")
    # In (created_at, seq) order; a row not yet committed is invisible.
    entries = sorted((e for e in state.activity[ws_id] if visible(e)), key=lambda e: e.key)
    since_id = param("since_id") if state.modern else ""
    if since_id:
        cursor = next(
            (e for e in entries if isinstance(e, Activity) and e.id == since_id),
            None,
        )
        if cursor is None:
            if not is_uuid(since_id):
                return error(500, "cursor lookup failed")
            return error(410, _AUGUST_CURSOR_GONE if state.aug else _CURSOR_GONE)
        # The rows after the cursor row, oldest first (as the real server): May compares
        # created_at alone (so rows of the cursor's instant are skipped), 2026-08 the pair
        # (created_at, seq). Either way a row that committed late with an older created_at
        # is never returned after a newer row's id, however long ago it became visible.
        if state.aug:
            entries = [e for e in entries if e.key > cursor.key]
        else:
            entries = [e for e in entries if e.key[0] > cursor.created_us]

    def keep(e: ActivityEntry) -> bool:
        if isinstance(e, Raw):
            return True
        if activity_type and e.activity_type != activity_type:
            return False
        if source == "canvas" and e.source_id is not None:
            return False
        return not (source == "agent" and e.source_id is None)

    selected = [e for e in entries if keep(e)]
    ordered = selected if since_id else selected[::-1]
    rows = [entry_json(e, state.generation) for e in ordered[:limit]]
    if state.aug and param("include") == "peer_info":
        rows = [_with_peer_info(state, entry, row) for row in rows]
    return json_reply(200, rows)


def _with_peer_info(state: State, entry: RecordedRequest, row: object) -> object:
    """2026-08's ``include=peer_info``: a row from a known workspace gets its ``peer_name``,
    ``peer_role`` and ``agent_card_url`` (May ignores the parameter)."""
    if not isinstance(row, dict) or not isinstance(row.get("source_id"), str):
        return row
    peer = state.workspaces.get(row["source_id"])
    if peer is None:
        return row
    base = f"http://{entry.headers.get('host', '127.0.0.1')}"
    return {
        **row,
        "peer_name": peer.name,
        "peer_role": peer.role,
        "agent_card_url": f"{base}/registry/discover/{peer.id}",
    }


def _ack(state: State, entry: RecordedRequest, ws_id: str) -> Reply:
    """2026-08's ``POST /workspaces/:id/activity/ack``: the largest ``acked_seq`` is kept
    (nothing checks that such a row exists; acked rows are still listed)."""
    body = json_object(entry.body)
    value = body.get("acked_seq") if body is not None else None
    if type(value) is not int or value > _INT64_MAX or value < -_INT64_MAX - 1:
        return error(400, "acked_seq is required")
    if value < 0:
        return error(400, "acked_seq must be >= 0")
    ws = state.workspaces[ws_id]
    ws.last_acked_seq = max(ws.last_acked_seq, value)
    return json_reply(200, {"last_acked_seq": ws.last_acked_seq})


def _delete(state: State, entry: RecordedRequest) -> Reply:
    """The admin's ``DELETE /workspaces/:id``; 2026-08 wants the name in ``X-Confirm-Name``."""
    denied = admin_auth(state, entry)
    if denied is not None:
        return denied
    ws = state.workspaces.get(entry.workspace_id or "")
    if ws is None:
        if state.aug:
            return error(404, "workspace not found")
        return json_reply(200, {"cascade_deleted": 0, "status": "removed"})
    if state.aug and ws.status == "removed":
        return error(410, "workspace removed", id=ws.id)
    children = state.children(ws.id)
    if state.aug and entry.headers.get("x-confirm-name") != ws.name:
        return error(
            400,
            "destructive_action_requires_confirmation",
            hint=f"Re-send the same request with header X-Confirm-Name: {ws.name}",
            workspace_name=ws.name,
            active_tasks=ws.active_tasks,
            child_count=len(children),
        )
    if children and entry.query.get("confirm", [""])[0] != "true":
        return json_reply(
            409,
            {
                "children": [{"id": c.id, "name": c.name} for c in children],
                "children_count": len(children),
                "message": (
                    "This workspace has sub-workspaces. Delete with ?confirm=true to cascade "
                    "delete."
                ),
                "status": "confirmation_required",
            },
        )
    cascaded = state.delete(ws.id, cascade=True)
    return json_reply(200, {"cascade_deleted": cascaded, "status": "removed"})


def _notify(state: State, entry: RecordedRequest, ws_id: str) -> Reply:
    body = json_object(entry.body)
    if body is None:
        return error(400, "message is required")
    message = body.get("message")
    if not isinstance(message, str) or not message:
        return error(400, "message is required")
    attachments = body.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            return error(400, "message is required")
        for i, att in enumerate(attachments):
            if not (
                isinstance(att, dict)
                and isinstance(att.get("uri"), str)
                and att["uri"]
                and isinstance(att.get("name"), str)
                and att["name"]
            ):
                return error(400, f"attachment[{i}]: uri and name are required")
    ws = state.workspaces[ws_id]
    if ws.status == "removed":
        return error(404, "workspace not found")
    if state.modern and not ws.talk_to_user_enabled:
        return error(403, "talk_to_user_disabled", hint=_TALK_TO_USER_HINT)
    preview = message if len(message) <= 80 else message[:80] + "…"
    row = state.new_row(
        ws_id,
        activity_type="a2a_receive",
        status="ok",
        source_id=None,
        method="notify",
        summary=f"Agent message: {preview}",
        response_body={"result": message},
    )
    state.activity[ws_id].append(row)
    # The agent's message to its user: the chat hears of it, no ACTIVITY_LOGGED is sent.
    state.hub.emit(
        ws_id, "AGENT_MESSAGE", {"message": message, "name": ws.name, "workspace_id": ws_id}
    )
    return json_reply(200, {"status": "sent"})
