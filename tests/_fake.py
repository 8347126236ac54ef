"""Requests the FakePlatform tests send, over real loopback sockets."""

from __future__ import annotations

from typing import Any

import requests

from heartbeat_sync.testing import FakePlatform, Workspace

T = 5.0  # client timeout for every request


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def beat(
    fp: FakePlatform, ws_id: str, token: str | None = None, **fields: Any
) -> requests.Response:
    body = {"workspace_id": ws_id, "error_rate": 0.0, "active_tasks": 0, "uptime_seconds": 1}
    body.update(fields)
    return requests.post(f"{fp.url}/registry/heartbeat", json=body, headers=auth(token), timeout=T)


def get(fp: FakePlatform, path: str, token: str | None = None, **params: Any) -> requests.Response:
    return requests.get(f"{fp.url}{path}", headers=auth(token), params=params, timeout=T)


def notify(fp: FakePlatform, ws: Workspace, body: Any, token: str | None = None) -> Any:
    return requests.post(
        f"{fp.url}/workspaces/{ws.id}/notify",
        json=body,
        headers=auth(token if token is not None else ws.token),
        timeout=T,
    )
