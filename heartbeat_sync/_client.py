"""The platform client: one method per route of the platform contract the loop uses.

Each method returns parsed, validated values or raises :class:`PlatformError`; transport errors
(refused connections, timeouts, dropped connections, oversized bodies) are wrapped in it too, so
callers handle exactly one exception type. Nothing here logs a header value.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions as u3

from . import _messages
from ._auth import Credentials
from ._http import BodyTooLarge, SessionFactory, abort_session, parse_json, read_body

logger = logging.getLogger(__name__)


class PlatformError(Exception):
    """A call to the platform did not succeed.

    ``status`` is the HTTP status, or None when no response arrived (``transport`` is then
    True and the request may be retried on another cycle). ``retry_after`` is the server's
    ``Retry-After`` in seconds when it sent one, and ``body`` the parsed JSON error body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: Any = None,
        connect_error: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.connect_error = connect_error

    @property
    def transport(self) -> bool:
        return self.status is None


class CursorGone(PlatformError):
    """The activity cursor (``since_id``) is unknown to the server (410): reset it."""


@dataclass(frozen=True)
class BeatReply:
    """A successful (2xx) heartbeat: its status and the inbound secret, if the server sent one."""

    status: int
    inbound_secret: str | None
    token_refreshed: bool = False


def _describe(exc: BaseException) -> str:
    # Exception text from requests names the URL, never a header, so it is safe to log.
    return f"{type(exc).__name__}: {exc}"


class PlatformClient:
    """Calls the platform's routes for one workspace with one ``requests.Session``.

    A client belongs to one thread (sessions are not shared across threads). :meth:`rebuild`
    replaces the session, which drops pooled connections after a run of failures.
    """

    def __init__(
        self,
        base_url: str,
        workspace_id: str,
        credentials: Credentials,
        session_factory: SessionFactory,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.workspace_id = workspace_id
        self.credentials = credentials
        self._session_factory = session_factory
        self._session: requests.Session | None = None
        self.timeout = timeout

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = self._session_factory()
            if session.trust_env:
                # requests would re-read the proxy variables, the CA bundle variables and
                # ~/.netrc on every request: a quarter of a cycle's CPU, and a netrc entry for
                # the platform's host would replace the Bearer header with Basic auth. The
                # environment is read once, here, for this session's one host.
                env_proxies = requests.utils.get_environ_proxies(self.base_url)
                session.proxies = {**env_proxies, **session.proxies}
                bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                if bundle and session.verify is True:
                    session.verify = bundle
                session.trust_env = False
            self._session = session
        return self._session

    def rebuild(self) -> None:
        """Close the session; the next call makes a new one."""
        session, self._session = self._session, None
        if session is not None:
            # Closing a broken pool must never fail the loop.
            with contextlib.suppress(Exception):
                session.close()

    close = rebuild

    def abort(self) -> None:
        """Interrupt a request in flight from another thread (it fails at once)."""
        session = self._session
        if session is not None:
            abort_session(session)

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        self_source: bool = False,
        timeout: float | None = None,
        auth: bool = True,
    ) -> tuple[int, Any, requests.structures.CaseInsensitiveDict[str]]:
        headers = (
            self.credentials.headers(self.workspace_id if self_source else None) if auth else {}
        )
        try:
            resp = self.session.request(
                method,
                self._url(path),
                json=json_body,
                params=params,
                headers=headers,
                timeout=timeout or self.timeout,
                stream=True,
            )
        except requests.ConnectionError as exc:
            connect = isinstance(exc, requests.exceptions.ConnectTimeout) or _is_connect_error(exc)
            raise PlatformError(_describe(exc), connect_error=connect) from exc
        except requests.RequestException as exc:
            raise PlatformError(_describe(exc)) from exc
        try:
            data = read_body(resp)
        except BodyTooLarge as exc:
            raise PlatformError(str(exc), status=resp.status_code) from exc
        except requests.RequestException as exc:
            raise PlatformError(_describe(exc), status=None) from exc
        finally:
            resp.close()
        return resp.status_code, parse_json(data), resp.headers

    def _fail(
        self,
        what: str,
        status: int,
        body: Any,
        headers: requests.structures.CaseInsensitiveDict[str],
    ) -> PlatformError:
        error = body.get("error") if isinstance(body, dict) else None
        detail = f": {str(error)[:200]}" if isinstance(error, str) and error else ""
        return PlatformError(
            f"{what} answered {status}{detail}",
            status=status,
            retry_after=_messages.parse_retry_after(headers.get("Retry-After")),
            body=body,
        )

    # --- routes -----------------------------------------------------------------------------

    def heartbeat(self, body: dict[str, Any]) -> BeatReply:
        """POST /registry/heartbeat. A 401 re-reads the token and retries once, same body."""
        status, reply, headers = self._request("POST", "/registry/heartbeat", json_body=body)
        refreshed = False
        if status == 401:
            self.credentials.refresh()
            refreshed = True
            status, reply, headers = self._request("POST", "/registry/heartbeat", json_body=body)
        if not 200 <= status < 300:
            raise self._fail("heartbeat", status, reply, headers)
        return BeatReply(status, _messages.inbound_secret(reply), refreshed)

    def delegations(self) -> list[Any]:
        """GET /workspaces/:id/delegations: the rows, unvalidated (the parser checks each)."""
        path = f"/workspaces/{self.workspace_id}/delegations"
        status, body, headers = self._request("GET", path)
        if status != 200:
            raise self._fail("delegations", status, body, headers)
        if not isinstance(body, list):
            raise PlatformError(
                f"delegations answered {type(body).__name__}, not a list", status=status
            )
        return body

    def activity(self, since_id: str | None, limit: int = 100) -> list[Any]:
        """GET /workspaces/:id/activity?type=a2a_receive&source=agent[&since_id=…].

        Raises :class:`CursorGone` on 410 (the server no longer knows ``since_id``).
        """
        params = {"type": "a2a_receive", "source": "agent", "limit": str(limit)}
        if since_id:
            params["since_id"] = since_id
        status, body, headers = self._request(
            "GET", f"/workspaces/{self.workspace_id}/activity", params=params
        )
        if status == 410 and since_id:
            raise CursorGone("activity cursor is gone (410)", status=410, body=body)
        if status != 200:
            raise self._fail("activity", status, body, headers)
        if not isinstance(body, list):
            raise PlatformError(
                f"activity answered {type(body).__name__}, not a list", status=status
            )
        return body

    def event_stream(self, read_timeout: float) -> requests.Response:
        """GET /workspaces/:id/events/stream, left open: the caller reads it and closes it.

        ``read_timeout`` bounds each wait for the next bytes (the connect timeout is the
        client's). Any status but 200 raises :class:`PlatformError` with that status.
        """
        headers = self.credentials.headers()
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        try:
            resp = self.session.get(
                self._url(f"/workspaces/{self.workspace_id}/events/stream"),
                headers=headers,
                timeout=(self.timeout, read_timeout),
                stream=True,
            )
        except requests.ConnectionError as exc:
            connect = isinstance(exc, requests.exceptions.ConnectTimeout) or _is_connect_error(exc)
            raise PlatformError(_describe(exc), connect_error=connect) from exc
        except requests.RequestException as exc:
            raise PlatformError(_describe(exc)) from exc
        if resp.status_code == 200:
            return resp
        try:
            body = parse_json(read_body(resp, 65536))
        except (BodyTooLarge, requests.RequestException):
            body = None
        finally:
            resp.close()
        raise self._fail("event stream", resp.status_code, body, resp.headers)

    def workspace(self, workspace_id: str) -> dict[str, Any]:
        """GET /workspaces/:id (an open route; sent without credentials)."""
        status, body, headers = self._request("GET", f"/workspaces/{workspace_id}", auth=False)
        if status != 200:
            raise self._fail("workspace lookup", status, body, headers)
        if not isinstance(body, dict):
            raise PlatformError("workspace lookup answered a non-object", status=status)
        return body

    def self_message(self, text: str, message_id: str, timeout: float = 120.0) -> int:
        """POST /workspaces/:self/a2a with ``X-Workspace-ID: self``; returns the 2xx status."""
        status, body, headers = self._request(
            "POST",
            f"/workspaces/{self.workspace_id}/a2a",
            json_body=_messages.self_message_body(text, message_id),
            self_source=True,
            timeout=timeout,
        )
        if not 200 <= status < 300:
            raise self._fail("self-message", status, body, headers)
        return status

    def notify(self, message: str) -> int:
        """POST /workspaces/:id/notify; returns the 2xx status."""
        status, body, headers = self._request(
            "POST", f"/workspaces/{self.workspace_id}/notify", json_body={"message": message}
        )
        if not 200 <= status < 300:
            raise self._fail("notify", status, body, headers)
        return status


def _is_connect_error(exc: requests.ConnectionError) -> bool:
    """True when the request surely never reached the server (refused, unreachable, DNS)."""
    reason: Any = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)
    return isinstance(inner, (u3.NewConnectionError, u3.ConnectTimeoutError))
