"""The real server's request checks: CORS origins and workspace bearer tokens.

Each check returns ``None`` when the request may proceed, else the answer that refuses it.
"""

from __future__ import annotations

from ._model import RecordedRequest, Reply, error
from ._state import State

_MISSING_TOKEN = "missing workspace auth token"
_INVALID_TOKEN = "invalid workspace auth token"


#: The real server's default ``CORS_ORIGINS``.
_CORS_ORIGINS = ("http://localhost:3000", "http://localhost:3001")


def origin_allowed(headers: dict[str, str]) -> bool:
    """The real server's CORS check: no ``Origin``, the request's own ``http(s)://`` + ``Host``
    (compared as strings: no trailing slash, no path, same case), or a listed origin."""
    origin = headers.get("origin")
    if not origin:
        return True
    host = headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}", *_CORS_ORIGINS)


def bearer(headers: dict[str, str]) -> str | None:
    """The bearer token, or None when there is none (wrong scheme counts as none)."""
    value = headers.get("authorization", "")
    if not value.startswith("Bearer "):
        return None
    token = value[len("Bearer ") :].strip()
    return token or None


def registry_auth(state: State, entry: RecordedRequest, ws_id: str) -> Reply | None:
    """The registry routes' check: a workspace without live tokens is grandfathered."""
    ws = state.workspaces.get(ws_id)
    if ws is None or not ws.tokens:
        return None  # grandfathered
    return workspace_auth(state, entry, ws_id)


def workspace_auth(state: State, entry: RecordedRequest, ws_id: str) -> Reply | None:
    """The ``/workspaces/:id/*`` check: a live token of that very workspace, always."""
    token = bearer(entry.headers)
    if token is None:
        return error(401, _MISSING_TOKEN)
    if not state.token_valid_for(token, ws_id):
        return error(401, _INVALID_TOKEN)
    return None
