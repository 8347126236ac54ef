"""Helpers for the integration suite: the real platform server, driven over HTTP and psql.

:class:`RealPlatform` wraps one running server (started by ``conftest.py`` through the
``start`` script of ``$HEARTBEAT_SYNC_PLATFORM``) with the calls a test needs to set a scene:
create external workspaces, register them, delegate, send a peer message, rotate a token,
pause, delete, and read the ``workspaces`` row straight from Postgres (the HTTP API does not
show ``last_heartbeat_at``). Every helper raises ``AssertionError`` with the response body when
the server answers an unexpected status, so a broken scene fails loudly where it is set up.

:class:`AgentServer` is a minimal JSON-RPC agent on 127.0.0.1 that a workspace registers as its
URL (as ``http://localhost:PORT``: the server refuses loopback IP addresses).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import requests

from ..conftest import wait_until as _wait_until

#: Seconds for one helper request: the server answers in milliseconds when it is well.
TIMEOUT = 30.0
ENV_VAR = "HEARTBEAT_SYNC_PLATFORM"


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, step: float = 0.05) -> bool:
    """The suite's :func:`tests.conftest.wait_until`, with the longer waits a real server needs."""
    return _wait_until(predicate, timeout, step)


def write_token(configs_dir: str | os.PathLike[str], token: str) -> None:
    """Write ``token`` to ``configs_dir/.auth_token``, mode 0600, replacing it atomically.

    The replace matters: a Heartbeat re-reading the file after a 401 sees the old token or the
    new one, never an empty file.
    """
    path = Path(configs_dir, ".auth_token")
    tmp = path.with_name(".auth_token.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released: refused when connected to)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _expect(resp: requests.Response, *statuses: int) -> Any:
    assert resp.status_code in statuses, (
        f"{resp.request.method} {resp.request.path_url} answered {resp.status_code} "
        f"(expected {statuses}): {resp.text[:2000]}"
    )
    return resp.json() if resp.content else None


def _timestamp(value: str | None) -> dt.datetime | None:
    """A Postgres ``timestamptz`` as JSON text into an aware datetime (3.9's fromisoformat
    needs exactly 3 or 6 fraction digits and a ``+HH:MM`` offset)."""
    if value is None:
        return None
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?([+-]\d\d)(?::?(\d\d))?", value)
    assert match, f"unexpected timestamp {value!r}"
    head, fraction, hours, minutes = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    return dt.datetime.fromisoformat(f"{head}.{micro}{hours}:{minutes or '00'}")


class RealPlatform:
    """One running platform server: its URL, admin token and database, and scene helpers."""

    def __init__(
        self,
        url: str,
        admin_token: str,
        database_url: str,
        state_dir: Path,
        *,
        scripts: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self.database_url = database_url
        self.state_dir = state_dir
        self.scripts = scripts
        #: Sent as ``X-Molecule-Org-Id`` by the helpers, when set (a server with a tenant guard).
        self.org_id: str | None = None
        self._session = requests.Session()
        self._session.trust_env = False
        self._lock = threading.Lock()
        #: ``2026-08`` when the server's heartbeat answer carries ``generation``, else
        #: ``2026-05``: what the server is, asked of the server itself.
        self.generation = self._ask_generation()

    def _ask_generation(self) -> str:
        # A beat for an id the server does not know: answered 200, and nothing is written.
        beat = {"workspace_id": "00000000-0000-4000-8000-000000000000", "uptime_seconds": 0}
        reply = _expect(self.request("POST", "/registry/heartbeat", json=beat), 200)
        return "2026-08" if isinstance(reply, dict) and "generation" in reply else "2026-05"

    @property
    def august(self) -> bool:
        """True for the August 2026 generation."""
        return self.generation == "2026-08"

    def close(self) -> None:
        self._session.close()

    # --- plain requests ---------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """One request to the server; ``token`` becomes the bearer. No status check."""
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        if self.org_id:
            sent.setdefault("X-Molecule-Org-Id", self.org_id)
        with self._lock:  # one Session, used from the tests' threads too
            return self._session.request(
                method,
                self.url + path,
                json=json,
                headers=sent,
                params=params,
                timeout=TIMEOUT,
            )

    # --- scenes -----------------------------------------------------------------------------

    def create_workspace(self, name: str, *, parent_id: str | None = None) -> tuple[str, str]:
        """Create an external workspace (admin); returns its id and its token."""
        body: dict[str, Any] = {"name": name, "external": True, "runtime": "external"}
        if parent_id:
            body["parent_id"] = parent_id
        reply = _expect(
            self.request("POST", "/workspaces", token=self.admin_token, json=body), 200, 201
        )
        return reply["id"], reply["connection"]["auth_token"]

    def register(
        self,
        ws_id: str,
        token: str,
        *,
        url: str | None = None,
        delivery_mode: str | None = None,
        agent_card: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``POST /registry/register`` with the workspace's bearer."""
        body: dict[str, Any] = {"id": ws_id, "agent_card": agent_card or {"name": ws_id[:8]}}
        if url is not None:
            body["url"] = url
        if delivery_mode is not None:
            body["delivery_mode"] = delivery_mode
        result: dict[str, Any] = _expect(
            self.request("POST", "/registry/register", token=token, json=body), 200
        )
        return result

    def failing_target(self) -> tuple[str, str]:
        """A workspace whose delegations fail, and the platform's error for them.

        May fails a delegation to a workspace that never registered at once (``workspace has
        no URL``); August queues it instead ("target at capacity"), so there the target is
        registered in push mode at a closed port, which both fail after about 8 s (one
        retry): ``failed to reach workspace agent``.
        """
        if not self.august:
            target, _ = self.create_workspace("never-registered")
            return target, "workspace has no URL"
        target, token = self.create_workspace("unreachable")
        self.register(target, token, url=f"http://localhost:{closed_port()}")
        return target, "failed to reach workspace agent"

    def delete(self, ws_id: str) -> dict[str, Any]:
        """Delete a workspace (admin, ``?confirm=true``, and the ``X-Confirm-Name`` August
        asks for: the workspace's exact name, read first)."""
        about = _expect(self.request("GET", f"/workspaces/{ws_id}", token=self.admin_token), 200)
        result: dict[str, Any] = _expect(
            self.request(
                "DELETE",
                f"/workspaces/{ws_id}?confirm=true",
                token=self.admin_token,
                headers={"X-Confirm-Name": about["name"]},
            ),
            200,
        )
        return result

    def pause(self, ws_id: str) -> dict[str, Any]:
        """Pause a workspace (admin bearer)."""
        result: dict[str, Any] = _expect(
            self.request("POST", f"/workspaces/{ws_id}/pause", token=self.admin_token), 200
        )
        return result

    def abilities(self, ws_id: str, **flags: bool) -> None:
        """Set ability flags (admin), e.g. ``talk_to_user_enabled=False``."""
        _expect(
            self.request(
                "PATCH", f"/workspaces/{ws_id}/abilities", token=self.admin_token, json=flags
            ),
            200,
        )

    def rotate(self, ws_id: str) -> str:
        """Rotate the workspace's token (admin bearer); returns the new one."""
        reply = _expect(
            self.request("POST", f"/workspaces/{ws_id}/external/rotate", token=self.admin_token),
            200,
        )
        token: str = reply["connection"]["auth_token"]
        return token

    def delegate(self, src_id: str, src_token: str, target_id: str, task: str) -> str:
        """``src`` delegates ``task`` to ``target``; returns the delegation id."""
        reply = _expect(
            self.request(
                "POST",
                f"/workspaces/{src_id}/delegate",
                token=src_token,
                json={"target_id": target_id, "task": task},
            ),
            202,
        )
        delegation_id: str = reply["delegation_id"]
        return delegation_id

    def peer_message(
        self, target_id: str, sender_id: str, sender_token: str, text: str
    ) -> requests.Response:
        """``sender`` sends ``text`` to ``target`` (``POST /workspaces/target/a2a``)."""
        body = {
            "jsonrpc": "2.0",
            "id": "1",
            "method": "message/send",
            "params": {
                "message": {
                    "role": "user",
                    "messageId": f"m-{os.urandom(6).hex()}",
                    "parts": [{"kind": "text", "text": text}],
                }
            },
        }
        return self.request(
            "POST",
            f"/workspaces/{target_id}/a2a",
            token=sender_token,
            json=body,
            headers={"X-Workspace-ID": sender_id},
        )

    def activity(self, ws_id: str, token: str, **params: Any) -> list[dict[str, Any]]:
        """``GET /workspaces/:id/activity`` with the given query parameters."""
        rows: list[dict[str, Any]] = _expect(
            self.request(
                "GET",
                f"/workspaces/{ws_id}/activity",
                token=token,
                params={k: str(v) for k, v in params.items()},
            ),
            200,
        )
        return rows

    def sql(self, query: str) -> str:
        """One SQL query's result, as ``psql -A -t`` prints it (for what no route shows)."""
        out = subprocess.run(
            ["psql", self.database_url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert out.returncode == 0, f"psql failed: {out.stderr}"
        return out.stdout.strip()

    def row(self, ws_id: str) -> dict[str, Any]:
        """The workspace's row from Postgres: status, last_heartbeat_at (aware datetime or
        None), current_task, active_tasks, last_error_rate, last_sample_error."""
        assert re.fullmatch(r"[0-9a-fA-F-]{36}", ws_id), ws_id
        query = (
            "SELECT row_to_json(w) FROM (SELECT status, last_heartbeat_at, current_task, "
            "active_tasks, last_error_rate, last_sample_error FROM workspaces "
            f"WHERE id = '{ws_id}') w"
        )
        out = subprocess.run(
            ["psql", self.database_url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert out.returncode == 0, f"psql failed: {out.stderr}"
        assert out.stdout.strip(), f"no workspaces row for {ws_id}"
        row: dict[str, Any] = json.loads(out.stdout)
        row["last_heartbeat_at"] = _timestamp(row.get("last_heartbeat_at"))
        return row


class AgentServer:
    """A JSON-RPC agent on 127.0.0.1: records each request body and answers ``reply_text``.

    ``url`` is ``http://localhost:PORT``, the form the platform accepts for registering.
    """

    def __init__(self, reply_text: str = "done") -> None:
        self.reply_text = reply_text
        self.received: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    body = None
                with agent._cond:
                    agent.received.append(body)
                    agent._cond.notify_all()
                request_id = body.get("id") if isinstance(body, dict) else None
                reply = {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": {
                        "kind": "message",
                        "role": "agent",
                        "messageId": f"r-{os.urandom(6).hex()}",
                        "parts": [{"kind": "text", "text": agent.reply_text}],
                    },
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://localhost:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-agent", daemon=True
        )
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``count`` requests arrived."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= count, timeout)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
