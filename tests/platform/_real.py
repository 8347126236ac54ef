"""The real platform server for the integration suite: a minimal subset of the shared interface.

Only what the event-stream test uses: ``RealPlatform`` (``url``, ``admin_token``,
``database_url``, ``create_workspace``, ``register``, ``delegate``, ``request``), the
``AgentServer`` a workspace registers as its URL, and ``write_token``.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

ENV_VAR = "HEARTBEAT_SYNC_PLATFORM"
TIMEOUT = 30.0


def write_token(configs_dir: str | os.PathLike[str], token: str) -> None:
    """Write ``configs_dir/.auth_token`` with mode 0600."""
    path = os.path.join(os.fspath(configs_dir), ".auth_token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode())
    finally:
        os.close(fd)


def _expect(resp: requests.Response, *statuses: int) -> Any:
    assert resp.status_code in statuses, (
        f"{resp.request.method} {resp.request.path_url} answered {resp.status_code}: "
        f"{resp.text[:2000]}"
    )
    return resp.json() if resp.content else None


class RealPlatform:
    """One running platform server and the calls a test needs to set a scene."""

    def __init__(self, url: str, admin_token: str, database_url: str) -> None:
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self.database_url = database_url
        self._session = requests.Session()
        self._session.trust_env = False

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        return self._session.request(
            method, self.url + path, json=json, headers=sent, timeout=TIMEOUT
        )

    def create_workspace(self, name: str, *, parent_id: str | None = None) -> tuple[str, str]:
        body: dict[str, Any] = {"name": name, "external": True, "runtime": "external"}
        if parent_id:
            body["parent_id"] = parent_id
        got = _expect(self.request("POST", "/workspaces", token=self.admin_token, json=body), 201)
        return got["id"], got["connection"]["auth_token"]

    def register(
        self,
        ws_id: str,
        token: str,
        *,
        url: str | None = None,
        delivery_mode: str | None = None,
        agent_card: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"id": ws_id, "agent_card": agent_card or {"name": ws_id[:8]}}
        if url is not None:
            body["url"] = url
        if delivery_mode is not None:
            body["delivery_mode"] = delivery_mode
        got: dict[str, Any] = _expect(
            self.request("POST", "/registry/register", token=token, json=body), 200
        )
        return got

    def delegate(self, src_id: str, src_token: str, target_id: str, task: str) -> str:
        got = _expect(
            self.request(
                "POST",
                f"/workspaces/{src_id}/delegate",
                token=src_token,
                json={"target_id": target_id, "task": task},
            ),
            202,
        )
        return str(got["delegation_id"])

    def close(self) -> None:
        self._session.close()


class AgentServer:
    """A JSON-RPC agent on 127.0.0.1 that answers every POST with ``reply_text``."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.reply_text = "done"
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                agent.received.append(body)
                req_id = body.get("id") if isinstance(body, dict) else None
                out = json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": req_id,
                        "result": {
                            "kind": "message",
                            "role": "agent",
                            "messageId": "m1",
                            "parts": [{"kind": "text", "text": agent.reply_text}],
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://localhost:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
