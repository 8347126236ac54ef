"""The platform client: one method per route of the platform contract the loop uses.

Each method returns parsed, validated values or raises :class:`PlatformError`; transport errors
(refused connections, timeouts, dropped connections, oversized bodies) are wrapped in it too, so
callers handle exactly one exception type. Nothing here logs a header value.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
import urllib3.exceptions as u3

from .. import _config
from .auth import Credentials
from .body import BodyTooLarge, parse_json, read_body
from .http import SessionFactory, abort_session, parse_retry_after, request_scope
from .ratelimit import Budget, budget_for

#: The August 2026 platform's ``code`` for a request to a tenant that lacks its org id header.
TENANT_ORG_HEADER_REQUIRED = "TENANT_ORG_HEADER_REQUIRED"


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

    @property
    def tenant_required(self) -> bool:
        """True when a multi-tenant platform (August 2026 and later) refused the request for
        want of the ``X-Molecule-Org-Id`` header: only ``org_id`` / ``$MOLECULE_ORG_ID`` can
        help, no retry."""
        return (
            self.status == 400
            and isinstance(self.body, dict)
            and self.body.get("code") == TENANT_ORG_HEADER_REQUIRED
        )


class CursorGone(PlatformError):
    """The activity cursor (``since_id``) is unknown to the server (410): reset it."""


@dataclass(frozen=True)
class BeatReply:
    """A successful (2xx) heartbeat: the inbound secret, if the server sent one, and the
    workspace's desired ``generation`` (August 2026 and later; None when absent)."""

    inbound_secret: str | None
    generation: int | None = None


@dataclass(frozen=True)
class StreamOpening:
    """What opening the event stream takes (see :meth:`PlatformClient.event_stream_opening`)."""

    #: The stream's full URL.
    url: str
    #: Every request header but ``Host`` (the credentials', ``Accept``, ``Cache-Control``).
    headers: dict[str, str]
    #: The rate-limit budget of those headers: the answer's head is observed by it.
    budget: Budget


#: Exceptions whose text names the URL and the network's reason, never a header value.
_SAFE_TEXT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def describe_error(exc: BaseException) -> str:
    """An exception in words that can go to a log and ``status()``.

    Only transport errors keep their text. Anything else (an invalid header, a header value
    that cannot be encoded, a bug) is named by its type alone: its text or ``repr`` may quote
    a header, and so the bearer token.
    """
    if isinstance(exc, _SAFE_TEXT):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (details withheld: they may quote a request header)"


def _segment(value: str) -> str:
    """One path segment, quoted: nothing in an id can reach another route."""
    return quote(value, safe="")


def inbound_secret(body: Any) -> str | None:
    """``platform_inbound_secret`` from a heartbeat reply, when it is a non-empty string."""
    if not isinstance(body, dict):
        return None
    secret = body.get("platform_inbound_secret")
    if isinstance(secret, str) and secret and len(secret) <= 4096:
        return secret
    return None


#: The largest integer the platform stores (a Go ``int64``).
_INT64_MAX = (1 << 63) - 1


def generation(body: Any) -> int | None:
    """``generation`` from a heartbeat reply: a JSON integer in [0, 2**63), else None (a bool,
    a float, a string or an absent field is not one)."""
    if not isinstance(body, dict):
        return None
    value = body.get("generation")
    if type(value) is int and 0 <= value <= _INT64_MAX:
        return value
    return None


#: The platform's marker for a self-message that announces delegation results (one of its
#: self source types): the canvas files it as a system notice rather than a user's turn,
#: without the text prefix it otherwise has to recognise.
SELF_DELEGATION_RESULT = "self-delegation-result"


def self_message_body(text: str, message_id: str) -> dict[str, Any]:
    """The A2A ``message/send`` body of a wake-up: role user, one ``kind: text`` part, and
    ``params.metadata.source_type`` saying it is the workspace's own delegation-result
    notice."""
    return {
        "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "messageId": message_id,
                "parts": [{"kind": "text", "text": text}],
            },
            "metadata": {"source_type": SELF_DELEGATION_RESULT},
        },
    }


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
                bundles = (os.environ.get(name) for name in _config.ENV_CA_BUNDLES)
                bundle = next(filter(None, bundles), None)
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
        headers = self.credentials.headers(self.workspace_id if self_source else None, auth=auth)
        budget = self._held(method, path, headers)
        seconds = timeout or self.timeout
        session = self.session
        # The whole request, body included, ends within ``seconds`` whatever the server does.
        with request_scope(session, seconds) as scope:
            try:
                resp = session.request(
                    method,
                    self._url(path),
                    json=json_body,
                    params=params,
                    headers=headers,
                    timeout=seconds,
                    stream=True,
                    # A redirect is never followed: requests would turn a POST into a GET
                    # and take the redirected page's 200 for an answer.
                    allow_redirects=False,
                )
            except Exception as exc:
                if scope.expired:
                    raise self._expired(method, path, seconds) from None
                connect = isinstance(exc, requests.ConnectionError) and (
                    isinstance(exc, requests.exceptions.ConnectTimeout) or _is_connect_error(exc)
                )
                raise PlatformError(describe_error(exc), connect_error=connect) from None
            try:
                data = read_body(resp)
            except BodyTooLarge as exc:
                raise PlatformError(str(exc), status=resp.status_code) from exc
            except Exception as exc:
                if scope.expired:
                    raise self._expired(method, path, seconds) from None
                raise PlatformError(describe_error(exc), status=None) from None
            finally:
                resp.close()
        budget.observe(resp.status_code, resp.headers)
        return resp.status_code, parse_json(data), resp.headers

    def budget(self) -> Budget:
        """The process's view of the rate limit this client's requests fall under."""
        return budget_for(self.base_url, self.credentials.headers())

    def _held(self, method: str, path: str, headers: dict[str, str]) -> Budget:
        """The budget of these headers; ``PlatformError`` (429) without sending anything while
        a 429 holds every request of its key."""
        budget = budget_for(self.base_url, headers)
        left = budget.held_until() - time.monotonic()
        if left > 0:
            raise PlatformError(
                f"{method} {path}: not sent, the platform's rate limit holds every request "
                f"of {budget.describe} for {left:.0f} s more",
                status=429,
                retry_after=left,
            )
        return budget

    @staticmethod
    def _expired(method: str, path: str, seconds: float) -> PlatformError:
        return PlatformError(f"{method} {path}: no complete answer within {seconds:g} s")

    def _fail(
        self,
        what: str,
        status: int,
        body: Any,
        headers: requests.structures.CaseInsensitiveDict[str],
    ) -> PlatformError:
        error = body.get("error") if isinstance(body, dict) else None
        detail = f": {str(error)[:200]}" if isinstance(error, str) and error else ""
        if body is None and status in (403, 404):
            detail = _empty_refusal_hint(status, self.credentials)
        elif isinstance(body, dict) and body.get("code") == TENANT_ORG_HEADER_REQUIRED:
            detail = (
                ": the platform serves several tenants and needs this one's id in "
                "X-Molecule-Org-Id (set org_id or $MOLECULE_ORG_ID)"
            )
        elif 300 <= status < 400:
            detail = f": a redirect to {self._redirect_host(headers.get('Location'))}, not followed"
        return PlatformError(
            f"{what} answered {status}{detail}",
            status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
            body=body,
        )

    def _redirect_host(self, location: str | None) -> str:
        """The host a redirect points to (never its user info, path or query)."""
        if not location:
            return "nowhere (no Location)"
        try:
            split = urlsplit(urljoin(self.base_url + "/", location.strip()))
            host, port = split.hostname, split.port
        except ValueError:
            return "an unreadable Location"
        if not host:
            return "an unreadable Location"
        return f"{host}:{port}" if port else host

    # --- routes -----------------------------------------------------------------------------

    def heartbeat(self, body: dict[str, Any]) -> BeatReply:
        """POST /registry/heartbeat. A 401 re-reads the token and retries once, same body."""
        status, reply, headers = self._request("POST", "/registry/heartbeat", json_body=body)
        if status == 401:
            self.credentials.refresh()
            status, reply, headers = self._request("POST", "/registry/heartbeat", json_body=body)
        if not 200 <= status < 300:
            raise self._fail("heartbeat", status, reply, headers)
        return BeatReply(inbound_secret(reply), generation(reply))

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /registry/register; returns the 2xx answer's JSON object (secrets included:
        the caller stores them and must never log the object)."""
        status, reply, headers = self._request("POST", "/registry/register", json_body=body)
        if not 200 <= status < 300:
            raise self._fail("register", status, reply, headers)
        if not isinstance(reply, dict):
            raise PlatformError("register answered a non-object", status=status)
        return reply

    def state(self) -> dict[str, Any]:
        """GET /workspaces/:id/state: ``{workspace_id, status, paused, deleted}`` on 200."""
        path = f"/workspaces/{_segment(self.workspace_id)}/state"
        status, body, headers = self._request("GET", path)
        if status != 200:
            raise self._fail("state", status, body, headers)
        if not isinstance(body, dict):
            raise PlatformError("state answered a non-object", status=status)
        return body

    def delegations(self) -> list[Any]:
        """GET /workspaces/:id/delegations: the rows, unvalidated (the parser checks each)."""
        return self._rows("delegations")

    def activity(
        self, since_id: str | None, limit: int = 100, *, peers_only: bool = True
    ) -> list[Any]:
        """GET /workspaces/:id/activity?type=a2a_receive[&source=agent][&since_id=…]: the rows
        from other workspaces (``peers_only``), or every row (the canvas's too), then with
        ``include=peer_info`` (the August 2026 platform adds a peer's name and role; the May
        one ignores it).

        Raises :class:`CursorGone` on 410 (the server no longer knows ``since_id``).
        """
        params = {"type": "a2a_receive", "limit": str(limit)}
        if peers_only:
            params["source"] = "agent"
        else:
            params["include"] = "peer_info"
        if since_id:
            params["since_id"] = since_id
        return self._rows("activity", params, cursor=since_id)

    def _rows(
        self, route: str, params: dict[str, str] | None = None, *, cursor: str | None = None
    ) -> list[Any]:
        """GET /workspaces/:id/<route>: a JSON array, or :class:`PlatformError`."""
        path = f"/workspaces/{_segment(self.workspace_id)}/{route}"
        status, body, headers = self._request("GET", path, params=params)
        if status == 410 and cursor:
            raise CursorGone(f"{route} cursor is gone (410)", status=410, body=body)
        if status != 200:
            raise self._fail(route, status, body, headers)
        if not isinstance(body, list):
            raise PlatformError(
                f"{route} answered {type(body).__name__}, not a list", status=status
            )
        return body

    def ack_activity(self, acked_seq: int) -> int:
        """POST /workspaces/:id/activity/ack ``{"acked_seq": N}`` (August 2026 and later): the
        rows up to ``seq`` N are handled, and the platform may prune them after 7 days instead
        of 30. Returns the platform's ``last_acked_seq`` (the highest acknowledged so far). An
        older platform answers 404 (:class:`PlatformError`)."""
        path = f"/workspaces/{_segment(self.workspace_id)}/activity/ack"
        status, body, headers = self._request("POST", path, json_body={"acked_seq": acked_seq})
        if status != 200:
            raise self._fail("activity ack", status, body, headers)
        value = body.get("last_acked_seq") if isinstance(body, dict) else None
        return value if type(value) is int else acked_seq

    def event_stream(self, read_timeout: float) -> requests.Response:
        """GET /workspaces/:id/events/stream, left open: the caller reads it and closes it.

        ``read_timeout`` bounds each wait for the next bytes (the connect timeout is the
        client's). Any status but 200 raises :class:`PlatformError` with that status.
        """
        headers = self.credentials.headers()
        path = f"/workspaces/{_segment(self.workspace_id)}/events/stream"
        budget = self._held("GET", path, headers)
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        session = self.session
        # Opening it (connect, retries, headers) is bounded like any request; reading it
        # afterwards is bounded by ``read_timeout`` between bytes.
        with request_scope(session, self.timeout) as scope:
            try:
                resp = session.get(
                    self._url(path),
                    headers=headers,
                    timeout=(self.timeout, read_timeout),
                    stream=True,
                    allow_redirects=False,
                )
            except Exception as exc:
                if scope.expired:
                    raise self._expired("GET", path, self.timeout) from None
                connect = isinstance(exc, requests.ConnectionError) and (
                    isinstance(exc, requests.exceptions.ConnectTimeout) or _is_connect_error(exc)
                )
                raise PlatformError(describe_error(exc), connect_error=connect) from None
        budget.observe(resp.status_code, resp.headers)
        if resp.status_code == 200:
            return resp
        try:
            body = parse_json(read_body(resp, 65536))
        except (BodyTooLarge, requests.RequestException):
            body = None
        finally:
            resp.close()
        raise self._fail("event stream", resp.status_code, body, resp.headers)

    def event_stream_opening(self) -> StreamOpening:
        """What opening GET /workspaces/:id/events/stream takes, for a reader that sends the
        request itself on a socket of its own (``streams.StreamReader``): the full URL, the
        headers :meth:`event_stream` sends, and the rate-limit budget the answer's head goes to
        (``budget.observe(status, headers)``).

        Raises :class:`PlatformError` (429, ``retry_after`` the seconds left) without anything
        sent while a 429 holds every request of the key, as every route does.
        """
        headers = self.credentials.headers()
        path = f"/workspaces/{_segment(self.workspace_id)}/events/stream"
        budget = self._held("GET", path, headers)
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        return StreamOpening(self._url(path), headers, budget)

    def event_stream_refusal(
        self, status: int, body: Any, headers: requests.structures.CaseInsensitiveDict[str]
    ) -> PlatformError:
        """The error :meth:`event_stream` raises for an answer of ``status`` (not 200), its
        parsed body and its headers: the same words, ``tenant_required`` and ``retry_after``."""
        return self._fail("event stream", status, body, headers)

    def workspace(self, workspace_id: str) -> dict[str, Any]:
        """GET /workspaces/:id (an open route; sent without credentials)."""
        path = f"/workspaces/{_segment(workspace_id)}"
        status, body, headers = self._request("GET", path, auth=False)
        if status != 200:
            raise self._fail("workspace lookup", status, body, headers)
        if not isinstance(body, dict):
            raise PlatformError("workspace lookup answered a non-object", status=status)
        return body

    def peers(self) -> Any:
        """GET /registry/:id/peers: the workspace's siblings, children and parent (its bearer;
        the JSON as it came, unvalidated)."""
        path = f"/registry/{_segment(self.workspace_id)}/peers"
        status, body, headers = self._request("GET", path)
        if status != 200:
            raise self._fail("peers", status, body, headers)
        return body

    def _post_as_self(
        self, what: str, path: str, body: Any, *, self_source: bool, timeout: float | None = None
    ) -> int:
        """POST with this workspace's live bearer (and ``X-Workspace-ID``: itself, when
        ``self_source``); returns the 2xx status. A 401 re-reads the token and sends once more,
        as a beat does: the platform refused the request before acting on it."""
        status, reply, headers = self._request(
            "POST", path, json_body=body, self_source=self_source, timeout=timeout
        )
        if status == 401 and self.credentials.refresh():
            status, reply, headers = self._request(
                "POST", path, json_body=body, self_source=self_source, timeout=timeout
            )
        if not 200 <= status < 300:
            raise self._fail(what, status, reply, headers)
        return status

    def self_message(self, text: str, message_id: str, timeout: float = 120.0) -> int:
        """POST /workspaces/:self/a2a with the workspace's bearer and ``X-Workspace-ID: self``
        (the August 2026 platform refuses a self-message without both); returns the 2xx
        status."""
        return self._post_as_self(
            "self-message",
            f"/workspaces/{_segment(self.workspace_id)}/a2a",
            self_message_body(text, message_id),
            self_source=True,
            timeout=timeout,
        )

    def send_message(self, peer_id: str, text: str, *, in_reply_to: str | None = None) -> int:
        """POST /workspaces/:peer/a2a: an A2A ``message/send`` from this workspace (its bearer,
        ``X-Workspace-ID`` itself) to the peer ``peer_id``, one text part, role ``agent``;
        ``in_reply_to`` (a ``messageId``) goes in the message's metadata. Returns the 2xx
        status."""
        message: dict[str, Any] = {
            "role": "agent",
            "messageId": str(uuid.uuid4()),
            "parts": [{"kind": "text", "text": text}],
        }
        if in_reply_to:
            message["metadata"] = {"in_reply_to": in_reply_to}
        body = {
            "jsonrpc": "2.0",
            "id": str(uuid.uuid4()),
            "method": "message/send",
            "params": {"message": message},
        }
        return self._post_as_self(
            "reply", f"/workspaces/{_segment(peer_id)}/a2a", body, self_source=True
        )

    def notify(self, message: str) -> int:
        """POST /workspaces/:id/notify; returns the 2xx status."""
        return self._post_as_self(
            "notify",
            f"/workspaces/{_segment(self.workspace_id)}/notify",
            {"message": message},
            self_source=False,
        )


def _empty_refusal_hint(status: int, credentials: Credentials) -> str:
    """Why the platform answers 403 or 404 with an empty body: never a handler, always a guard."""
    if status == 403:
        origin = credentials.origin
        sent = f"the Origin {origin!r}" if origin else "the request's origin"
        return (
            f" with an empty body: the platform refuses {sent} (it accepts only its own "
            f"scheme://host or a configured canvas origin)"
        )
    if credentials.org_id:
        return f" with an empty body: no tenant answers for org id {credentials.org_id!r}"
    return (
        " with an empty body: a multi-tenant platform answers this without an org id "
        "(set org_id or $MOLECULE_ORG_ID, sent as X-Molecule-Org-Id)"
    )


def _is_connect_error(exc: requests.ConnectionError) -> bool:
    """True when the request surely never reached the server (refused, unreachable, DNS)."""
    reason: Any = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)
    return isinstance(inner, (u3.NewConnectionError, u3.ConnectTimeoutError))
