"""The real platform server for the integration suite (minimal: what these tests use)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import requests

T = 15.0


def write_token(configs_dir: Path, token: str) -> None:
    """Write ``.auth_token`` (0600) where a Heartbeat reads it."""
    path = Path(configs_dir) / ".auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)


class RealPlatform:
    """A running real server: its URL, admin token, database URL, and admin helpers."""

    def __init__(self, url: str, admin_token: str, database_url: str) -> None:
        self.url = url
        self.admin_token = admin_token
        self.database_url = database_url

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, json=json, headers=h, timeout=T)

    def _ok(self, r: requests.Response, *codes: int) -> Any:
        if r.status_code not in (codes or (200,)):
            raise AssertionError(f"{r.request.method} {r.url} answered {r.status_code}: {r.text}")
        return r.json()

    def create_workspace(self, name: str, *, parent_id: str | None = None) -> tuple[str, str]:
        body: dict[str, Any] = {"name": name, "external": True, "runtime": "external"}
        if parent_id:
            body["parent_id"] = parent_id
        out = self._ok(self.request("POST", "/workspaces", token=self.admin_token, json=body), 201)
        return out["id"], out["connection"]["auth_token"]

    def delete(self, ws_id: str) -> dict[str, Any]:
        r = self.request("DELETE", f"/workspaces/{ws_id}?confirm=true", token=self.admin_token)
        result: dict[str, Any] = self._ok(r)
        return result

    def pause(self, ws_id: str) -> dict[str, Any]:
        r = self.request("POST", f"/workspaces/{ws_id}/pause", token=self.admin_token)
        result: dict[str, Any] = self._ok(r)
        return result

    def row(self, ws_id: str) -> dict[str, Any]:
        out = subprocess.run(
            [
                "psql",
                self.database_url,
                "-Atc",
                f"SELECT status FROM workspaces WHERE id='{ws_id}'",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return {"status": out}
