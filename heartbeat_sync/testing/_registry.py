"""``POST /registry/heartbeat`` and ``POST /registry/register``, as the real server answers them.

A heartbeat body is validated the way Go decodes ``HeartbeatPayload``; an accepted beat drives
the workspace's status the way the real server does (``docs/platform.md`` §2.1).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable
from urllib.parse import urlsplit

from ._auth import registry_auth
from ._model import (
    RecordedRequest,
    Reply,
    Workspace,
    error,
    json_object,
    json_reply,
    loads,
    new_secret,
)
from ._state import State

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


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


def _valid_august_fields(body: dict[str, Any]) -> bool:
    """2026-08 decodes ``is_busy`` into a ``*bool`` and ``observed_generation`` into an
    ``*int64``: another type fails the whole beat (May has neither field and ignores them)."""
    busy = body.get("is_busy")
    observed = body.get("observed_generation")
    return (busy is None or isinstance(busy, bool)) and (observed is None or _is_int(observed))


def heartbeat(state: State, entry: RecordedRequest) -> Reply:
    try:
        body = loads(entry.body)
    except ValueError:
        return error(400, "invalid request body")
    if not _valid_heartbeat(body):
        return error(400, "invalid request body")
    assert isinstance(body, dict)
    if state.aug and not _valid_august_fields(body):
        return error(400, "invalid request body")
    ws_id: str = body["workspace_id"]
    denied = registry_auth(state, entry, ws_id)
    if denied is not None:
        return denied
    ws = state.workspaces.get(ws_id)
    if ws is None:
        if state.aug:
            return json_reply(
                200, {"status": "ok", "generation": 0, "platform_inbound_secret": new_secret()}
            )
        if state.generation == "MAY":
            return json_reply(200, {"status": "ok", "platform_inbound_secret": new_secret()})
        return json_reply(200, {"status": "ok"})
    if ws.status != "removed":
        _apply_heartbeat(state, ws, body)
    if state.aug:
        # The desired generation goes out on every beat, a removed workspace's included.
        secret = state.secret_for(ws)
        return json_reply(
            200,
            {
                "status": "ok",
                "generation": ws.desired_generation,
                "platform_inbound_secret": secret,
            },
        )
    if state.generation == "MAY":
        secret = state.secret_for(ws)
        return json_reply(200, {"status": "ok", "platform_inbound_secret": secret})
    return json_reply(200, {"status": "ok"})


def _apply_heartbeat(state: State, ws: Workspace, body: dict[str, Any]) -> None:
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
            state.hub.emit(ws.id, "WORKSPACE_ONLINE", {})
    elif ws.status == "offline":
        ws.status = "online"
        state.hub.emit(ws.id, "WORKSPACE_ONLINE", {})
    elif ws.status == "provisioning" or (ws.status == "awaiting_agent" and state.modern):
        state.hub.emit(ws.id, "WORKSPACE_ONLINE", {"recovered_from": ws.status})
        ws.status = "online"
    ws.last_heartbeat = body
    ws.last_heartbeat_at = state.now()
    ws.heartbeat_count += 1
    ws.error_rate = error_rate
    ws.active_tasks = body.get("active_tasks") or 0
    if state.aug:
        busy = body.get("is_busy")
        ws.is_busy = busy if isinstance(busy, bool) else ws.active_tasks > 0
        observed = body.get("observed_generation")
        if observed is not None:
            ws.observed_generation = max(ws.observed_generation, observed)
    ws.uptime_seconds = body.get("uptime_seconds") or 0
    ws.sample_error = body.get("sample_error") or ""
    task = body.get("current_task") or ""
    if task != ws.current_task:
        state.hub.emit(
            ws.id, "TASK_UPDATED", {"current_task": task, "active_tasks": ws.active_tasks}
        )
    ws.current_task = task
    state.hub.emit(
        ws.id,
        "WORKSPACE_HEARTBEAT",
        {"active_tasks": ws.active_tasks, "uptime_seconds": ws.uptime_seconds},
    )
    metadata = body.get("runtime_metadata")
    ws.runtime_metadata = metadata if isinstance(metadata, dict) else None
    # A beat with spare capacity (max_concurrent_tasks is 1) delivers one queued message;
    # delivery writes no row.
    queue = state.a2a_queue[ws.id]
    if queue and ws.active_tasks < 1:
        queue.popleft()


def register(state: State, entry: RecordedRequest) -> Reply:
    body = json_object(entry.body)
    if body is None:
        return error(400, "invalid request body")
    ws_id = body.get("id")
    url = body.get("url")
    card = body.get("agent_card")
    if not isinstance(ws_id, str) or not ws_id or card is None:
        return error(400, "invalid request body")
    if url is not None and not isinstance(url, str):
        return error(400, "invalid request body")
    url = url or ""
    known = state.workspaces.get(ws_id)
    # The real server keeps the mode a workspace has when the body names none.
    mode = known.delivery_mode if known is not None else "push"
    if state.generation == "APR":
        if not url:
            return error(400, "invalid request body")
    else:
        raw_mode = body.get("delivery_mode")
        if raw_mode is not None and not isinstance(raw_mode, str):
            return error(400, "invalid request body")
        if raw_mode:
            if raw_mode not in ("push", "poll"):
                return error(400, "delivery_mode must be 'push' or 'poll'")
            mode = raw_mode
        if mode == "push" and not url:
            return error(400, "url is required for push-mode workspaces")
        if mode == "push":
            refused = _refused_agent_url(url, loopback_ok=state.aug)
            if refused:
                return error(400, refused)
            if state.aug and _card_url_refused(card):
                return error(400, "workspace agent_card URL not allowed")
    denied = registry_auth(state, entry, ws_id)
    if denied is not None:
        return denied
    ws = state.workspaces.get(ws_id)
    if ws is None:
        # 2026-08 names it by its id, as the real server (this fake's May leaves it blank).
        ws = state.create_workspace(ws_id, name=ws_id if state.aug else "")
    if state.aug:
        if ws.status not in ("removed", "paused", "hibernated"):
            # Nothing is written for a paused or hibernated workspace (yet it is announced).
            ws.status = "online"
            ws.url = _august_url(ws.url, url)
            ws.agent_card = card
            ws.delivery_mode = mode
        elif ws.status == "removed":
            mode = "poll"
    else:
        if ws.status != "removed":
            ws.status = "online"
        ws.url = url
        ws.agent_card = card
        ws.delivery_mode = mode
    # Announced even when the workspace stays removed, as the real server does.
    state.hub.emit(
        ws.id, "WORKSPACE_ONLINE", {"url": url, "agent_card": card, "delivery_mode": mode}
    )
    out: dict[str, object] = {"status": "registered"}
    if state.modern:
        out["delivery_mode"] = mode
    if not ws.tokens:
        token = new_secret()
        ws.tokens = [token]
        out["auth_token"] = token
    if state.modern:
        out["platform_inbound_secret"] = state.secret_for(ws)
    return json_reply(200, out)


def _refused_agent_url(url: str, *, loopback_ok: bool) -> str | None:
    """The real server's refusal of a push URL, or None: http(s) only, no loopback IP
    (``localhost`` by name is accepted) unless ``loopback_ok`` (2026-08 in development mode,
    which also refuses the link-local cloud metadata range)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f'url scheme must be http or https, got "{parts.scheme}"'
    address = _ip(parts.hostname)
    if address is None:
        return None
    if loopback_ok:
        if address.is_link_local:
            return "url targets a blocked address: link-local address (cloud metadata endpoint)"
        return None
    if address.is_loopback:
        return "url targets a blocked address: loopback address"
    return None


def _ip(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host or "")
    except ValueError:
        return None


def _card_url_refused(card: object) -> bool:
    """2026-08: a push registration whose ``agent_card.url`` is a link-local (metadata) address."""
    url = card.get("url") if isinstance(card, dict) else None
    if not isinstance(url, str):
        return False
    address = _ip(urlsplit(url).hostname)
    return address is not None and address.is_link_local


def _august_url(stored: str, sent: str) -> str:
    """2026-08's upsert: a registration without a URL keeps the stored one, and a stored
    loopback URL (``127.0.0.1`` or ``localhost``) on a port other than 8000 is never replaced."""
    if not sent:
        return stored
    if stored:
        parts = urlsplit(stored)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.hostname in ("127.0.0.1", "localhost") and port != 8000:
            return stored
    return sent
