"""``POST /workspaces/:id/a2a``: the A2A proxy, answering from a script instead of an agent.

Like the real proxy it wraps a bare body into JSON-RPC, adds a ``messageId``, checks the
caller's token, refuses paused and hibernated push-mode targets, queues messages for a
poll-mode target, and logs ``a2a_receive`` rows as the generation does (``_state`` writes
them): May logs a delivered message once its answer is decided; 2026-08 logs every message at
ingest, then completes that row, or adds a ``(queued: target busy)`` row for a message it
queued behind an agent that is not there yet.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus
from typing import Any

from ._auth import bearer
from ._model import (
    RecordedRequest,
    Reply,
    Response,
    encode_body,
    error,
    json_object,
    json_reply,
    loads,
)
from ._state import BUSY_QUEUED, State, canvas_marked

_BAD_CALLER_PREFIXES = ("webhook:", "system:", "test:", "channel:")
_PAUSED_STATUSES = ("paused", "hibernating", "hibernated")
_WAKING = "workspace is waking from hibernation — retry in ~15 seconds"
#: Statuses of a workspace still waiting for its agent: 2026-08 queues a message to it.
_SETTLING = ("awaiting_agent", "provisioning")


def a2a(state: State, entry: RecordedRequest) -> Reply:
    target_id = entry.workspace_id or ""
    body = json_object(entry.body)
    if body is None:
        return error(400, "invalid JSON")
    token = bearer(entry.headers)
    admin = False
    if state.aug:
        resolved = _august_caller(state, entry, token)
        if isinstance(resolved, Reply):
            return resolved
        caller, admin = resolved
    else:
        refused, caller = _may_caller(state, entry, token, target_id)
        if refused is not None:
            return refused
    ws = state.workspaces.get(target_id)
    if ws is None:
        return error(404, "workspace not found")
    # As on the real server, a removed workspace's messages still reach its old agent.
    if ws.delivery_mode != "poll" and ws.status == "hibernated":
        reply = error(503, _WAKING, retry_after=15, waking=True)
        reply.headers["Retry-After"] = "15"
        return reply
    if ws.delivery_mode != "poll" and ws.status in _PAUSED_STATUSES:
        return json_reply(503, {"error": "workspace has no URL", "status": ws.status})

    normalized = _normalize_jsonrpc(body)
    if admin:
        normalized = canvas_marked(normalized, target_id)
    source = caller or None
    if ws.delivery_mode == "poll" and state.modern:
        state.queue_for_poll(ws, normalized, source)
        return json_reply(
            200, {"status": "queued", "delivery_mode": "poll", "method": _method(normalized)}
        )
    if ws.delivery_mode != "poll" and not ws.url and state.modern:
        if state.aug and ws.status in _SETTLING:
            # No agent yet: the proxy queues the message (delivered by a later idle beat).
            _, depth = state.queue_busy(ws, normalized, source)
            return json_reply(
                202,
                {
                    "message": BUSY_QUEUED,
                    "queue_depth": depth,
                    "queue_id": str(uuid.uuid4()),
                    "queued": True,
                },
            )
        if state.aug or ws.status in _SETTLING:
            # This fake's May answers any other push target from the script, URL or not.
            return json_reply(503, {"error": "workspace has no URL", "status": ws.status})
    return _scripted(state, entry, ws.id, normalized, source, admin)


def _may_caller(
    state: State, entry: RecordedRequest, token: str | None, target_id: str
) -> tuple[Reply | None, str]:
    """May (and APR): the caller is ``X-Workspace-ID``, else (May) the bearer's workspace;
    a message to oneself is not checked at all."""
    caller = entry.headers.get("x-workspace-id", "").strip()
    if not caller and token is not None and state.generation == "MAY":
        owner = state.token_owner(token)
        if owner is not None and owner.status != "removed":
            caller = owner.id
    if caller.startswith(_BAD_CALLER_PREFIXES):
        return error(403, "invalid caller ID"), caller
    if caller and caller != target_id:
        caller_ws = state.workspaces.get(caller)
        if caller_ws is not None and caller_ws.tokens:
            if token is None:
                return error(401, "missing caller auth token"), caller
            if not state.token_valid_for(token, caller):
                return error(401, "invalid caller auth token"), caller
    return None, caller


def _august_caller(
    state: State, entry: RecordedRequest, token: str | None
) -> Reply | tuple[str, bool]:
    """2026-08: every caller proves itself, a message to oneself included: the caller
    (``X-Workspace-ID``, else the bearer's workspace) and whether the admin sent it (a canvas
    message, which may claim any caller), or the refusal."""
    claimed = entry.headers.get("x-workspace-id", "").strip()
    if claimed.startswith(_BAD_CALLER_PREFIXES):
        return error(403, "invalid caller ID")
    if token is None:
        return error(401, "missing caller auth token")
    if token == state.admin_token:
        return claimed, True
    owner = state.token_owner(token)
    if owner is None or owner.status == "removed":
        return error(401, "invalid caller auth token")
    if claimed and claimed != owner.id:
        return error(401, "caller ID does not match workspace auth token")
    return owner.id, False


def _scripted(
    state: State,
    entry: RecordedRequest,
    target_id: str,
    normalized: dict[str, Any],
    source: str | None,
    admin: bool,
) -> Reply:
    """A push target's answer, from the script; the row is written when it is decided."""
    ws = state.workspaces[target_id]
    script = state.a2a_script[target_id]
    scripted = script.popleft() if script else None
    if scripted is None:
        scripted = Response()
    status = scripted.status
    if scripted.body is not None:
        payload = encode_body(scripted.body)
    elif status < 400:
        payload = encode_body(
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
        payload = encode_body({"error": phrase})
    method_str = _method(normalized)
    summary = f"{method_str or ''} → {ws.name}"
    outcome = "ok" if status < 400 else "error"
    ingested = state.ingest(ws, normalized, source) if state.aug else None

    def commit() -> None:
        if ingested is not None:
            # 2026-08 completes the ingest row (its summary stays "(ingest)") and says so.
            ingested.status = outcome
            ingested.duration_ms = 1
            try:
                ingested.response_body = loads(payload)
            except ValueError:
                ingested.response_body = payload.decode("utf-8", "replace")
            state.emit_activity(ingested, summary=summary)
            if admin:
                state.hub.emit(
                    target_id,
                    "A2A_RESPONSE",
                    {
                        "duration_ms": ingested.duration_ms,
                        "message_id": ingested.message_id,
                        "method": method_str,
                        "response_body": ingested.response_body,
                    },
                )
            return
        row = state.new_row(
            target_id,
            activity_type="a2a_receive",
            status=outcome,
            source_id=source,
            method=method_str,
            summary=summary,
            request_body=normalized,
        )
        state.activity[target_id].append(row)
        state.emit_activity(row)

    return Reply(
        status=status,
        body=payload,
        headers=dict(scripted.headers),
        delay=scripted.delay,
        commit=commit,
    )


def _method(request: dict[str, Any]) -> str | None:
    method = request.get("method")
    return method if isinstance(method, str) else None


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
