"""The real server's request checks: CORS origins, the tenant guard and bearer tokens.

Each check returns ``None`` when the request may proceed, else the answer that refuses it.
"""

from __future__ import annotations

from ._model import RecordedRequest, Reply, error, json_reply
from ._state import State

_MISSING_TOKEN = "missing workspace auth token"
_INVALID_TOKEN = "invalid workspace auth token"


#: The real server's default ``CORS_ORIGINS``.
_CORS_ORIGINS = ("http://localhost:3000", "http://localhost:3001")

#: Paths the tenant guard lets through (and every ``/cp/`` path).
_TENANT_EXEMPT = ("/health", "/buildinfo", "/metrics", "/registry/register", "/registry/heartbeat")
#: 2026-08's answer to a guarded request that names no organisation.
TENANT_HEADER_REQUIRED = {
    "code": "TENANT_ORG_HEADER_REQUIRED",
    "detail": (
        "SaaS tenant API requests must include X-Molecule-Org-Id matching the organization UUID."
    ),
    "error": "missing tenant routing header",
    "required_header": "X-Molecule-Org-Id",
}


def origin_allowed(headers: dict[str, str]) -> bool:
    """The real server's CORS check: no ``Origin``, the request's own ``http(s)://`` + ``Host``
    (compared as strings: no trailing slash, no path, same case), or a listed origin."""
    origin = headers.get("origin")
    if not origin:
        return True
    host = headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}", *_CORS_ORIGINS)


def tenant_guard(state: State, entry: RecordedRequest) -> Reply | None:
    """``MOLECULE_ORG_ID``'s guard: every route but the exempt ones needs
    ``X-Molecule-Org-Id: <org id>`` (or a ``Fly-Replay-Src`` with ``state=<org id>``).

    Nothing at all: May answers 404 with an empty body (no ``Content-Type``), 2026-08 a JSON
    400. A wrong organisation: the empty 404 on both."""
    org = state.org_id
    if org is None or entry.path in _TENANT_EXEMPT or entry.path.startswith("/cp/"):
        return None
    header = entry.headers.get("x-molecule-org-id", "").strip()
    replay = entry.headers.get("fly-replay-src", "").strip()
    if header == org or f"state={org}" in (part.strip() for part in replay.split(";")):
        return None
    if state.aug and not header and not replay:
        return json_reply(400, TENANT_HEADER_REQUIRED)
    return Reply(status=404, bare=True)


def bearer(headers: dict[str, str]) -> str | None:
    """The bearer token, or None when there is none (wrong scheme counts as none)."""
    value = headers.get("authorization", "")
    if not value.startswith("Bearer "):
        return None
    token = value[len("Bearer ") :].strip()
    return token or None


def registry_auth(
    state: State, entry: RecordedRequest, ws_id: str, *, admin_ok: bool = False
) -> Reply | None:
    """The registry routes' check: a workspace without live tokens is grandfathered."""
    ws = state.workspaces.get(ws_id)
    if ws is None or not ws.tokens:
        return None  # grandfathered
    return workspace_auth(state, entry, ws_id, admin_ok=admin_ok)


def workspace_auth(
    state: State, entry: RecordedRequest, ws_id: str, *, admin_ok: bool = True
) -> Reply | None:
    """The ``/workspaces/:id/*`` check (WorkspaceAuth): a live token of that very workspace,
    always, or the server's admin token."""
    token = bearer(entry.headers)
    if token is None:
        return error(401, _MISSING_TOKEN)
    if admin_ok and token == state.admin_token:
        return None
    if not state.token_valid_for(token, ws_id):
        return error(401, _INVALID_TOKEN)
    return None


def admin_auth(state: State, entry: RecordedRequest) -> Reply | None:
    """The admin routes' check (AdminAuth): the server's admin token."""
    token = bearer(entry.headers)
    if token is None:
        return error(401, "admin auth required")
    if token != state.admin_token:
        return error(401, "invalid admin auth token")
    return None
