"""``POST /workspaces/:id/a2a``: the A2A proxy, answering from a script instead of an agent.

Like the real proxy it wraps a bare body into JSON-RPC, adds a ``messageId``, checks the
caller's token, refuses paused and hibernated push-mode targets, queues messages for a
poll-mode target, and logs an ``a2a_receive`` row once the answer is decided.
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
)
from ._state import State

_BAD_CALLER_PREFIXES = ("webhook:", "system:", "test:", "channel:")
_PAUSED_STATUSES = ("paused", "hibernating", "hibernated")
_WAKING = "workspace is waking from hibernation — retry in ~15 seconds"


def a2a(state: State, entry: RecordedRequest) -> Reply:
    target_id = entry.workspace_id or ""
    body = json_object(entry.body)
    if body is None:
        return error(400, "invalid JSON")
    caller = entry.headers.get("x-workspace-id", "").strip()
    token = bearer(entry.headers)
    if not caller and token is not None and state.modern:
        owner = state.token_owner(token)
        if owner is not None and owner.status != "removed":
            caller = owner.id
    if caller.startswith(_BAD_CALLER_PREFIXES):
        return error(403, "invalid caller ID")
    if caller and caller != target_id:
        caller_ws = state.workspaces.get(caller)
        if caller_ws is not None and caller_ws.tokens:
            if token is None:
                return error(401, "missing caller auth token")
            if not state.token_valid_for(token, caller):
                return error(401, "invalid caller auth token")
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
    if ws.delivery_mode == "poll" and state.modern:
        queued_method = normalized.get("method")
        queued = queued_method if isinstance(queued_method, str) else None
        state.activity[target_id].append(
            state.new_row(
                target_id,
                activity_type="a2a_receive",
                status="ok",
                source_id=caller or None,
                method=queued,
                summary=f"{queued or ''} → {ws.name} (queued for poll)",
                request_body=normalized,
            )
        )
        return json_reply(200, {"status": "queued", "delivery_mode": "poll", "method": queued})
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
    method = normalized.get("method")
    method_str = method if isinstance(method, str) else None

    def commit() -> None:
        row = state.new_row(
            target_id,
            activity_type="a2a_receive",
            status="ok" if status < 400 else "error",
            source_id=caller or None,
            method=method_str,
            summary=f"{method_str or ''} → {ws.name}",
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
