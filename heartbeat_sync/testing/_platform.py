"""FakePlatform itself: its life cycle, faults, request log and event streams over the parts.

The parts: :class:`State` (what the platform remembers), :class:`FaultTable` (injected
failures), :class:`Serving` (the HTTP server of one run); the set-up methods come from
:class:`WorkspaceSetup`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

from ._faults import FaultTable, make_fault
from ._model import MISSING, RecordedRequest
from ._server import Serving
from ._setup import WorkspaceSetup
from ._state import State


class FakePlatform(WorkspaceSetup):
    """An in-process fake of the platform server on a real loopback socket.

    Args:
        generation: ``"MAY"`` (the May 2026 server, the default; ``"2026-05"`` is another
            name for it), ``"2026-08"`` (the August 2026 server) or ``"APR"`` (an older
            server).  :attr:`generation` reports ``"MAY"`` for ``"2026-05"``.
        host: Interface to bind (default ``127.0.0.1``).
        port: Port to bind; 0 picks an ephemeral port.
        max_request_log: Number of requests kept in the log (oldest are dropped).
        org_id: The server's ``MOLECULE_ORG_ID``: when given, the SaaS tenant guard is on
            and every route but ``/registry/register`` and ``/registry/heartbeat`` wants
            ``X-Molecule-Org-Id: <org_id>`` (see the :mod:`heartbeat_sync.testing` docs).

    Use it as a context manager (``with FakePlatform() as fp:``) or call
    :meth:`start` and :meth:`stop`.  After :meth:`stop`, :meth:`start` serves again on
    the same port with the same state, which simulates a server outage.

    All state lives behind one re-entrant lock (the event streams behind their own), so
    test code and the server's handler threads may use the object concurrently.  What it
    models, and where it differs from the real server on purpose, is listed in the
    :mod:`heartbeat_sync.testing` docs.
    """

    def __init__(
        self,
        *,
        generation: str = "MAY",
        host: str = "127.0.0.1",
        port: int = 0,
        max_request_log: int = 100_000,
        org_id: str | None = None,
    ) -> None:
        self._state = State(generation, max_request_log, org_id)
        self._faults = FaultTable(self._state.lock, self._state.changed)
        self._host = host
        self._port = port
        self._serving: Serving | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def generation(self) -> str:
        """The server generation being emulated: ``"MAY"`` (also for ``"2026-05"``),
        ``"2026-08"`` or ``"APR"``."""
        return self._state.generation

    @property
    def admin_token(self) -> str:
        """The server's ``ADMIN_TOKEN``: the bearer of ``DELETE /workspaces/:id`` and of a
        canvas message on 2026-08; the workspace routes accept it too."""
        return self._state.admin_token

    @property
    def org_id(self) -> str | None:
        """The ``MOLECULE_ORG_ID`` the tenant guard checks, or ``None`` (no guard)."""
        return self._state.org_id

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (available once started)."""
        with self._state.lock:
            if self._port == 0:
                raise RuntimeError("FakePlatform has not been started")
            host = f"[{self._host}]" if ":" in self._host else self._host
            return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """True while the server is serving."""
        with self._state.lock:
            return self._serving is not None

    def start(self) -> FakePlatform:
        """Start serving in a daemon thread (no-op when already running); returns self."""
        with self._state.lock:
            if self._serving is None:
                self._serving = Serving(self._host, self._port, self._state, self._faults)
                self._port = self._serving.port
                self._state.changed()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket and all open connections.

        Idempotent and bounded: in-progress fault/response delays are interrupted and
        their connections are closed without an answer.  State and the request log are
        kept; :meth:`start` serves again on the same port.
        """
        with self._state.lock:
            serving = self._serving
            self._serving = None
        if serving is not None:
            serving.close()

    def __enter__(self) -> FakePlatform:
        """Start the server (see :meth:`start`)."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server (see :meth:`stop`)."""
        self.stop()

    # ------------------------------------------------------------------ faults

    def fault(
        self,
        route: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        body: object = MISSING,
        body_size: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int | None = None,
        workspace_id: str | None = None,
        trickle: float = 0.0,
    ) -> None:
        """Inject a failure into the next ``times`` requests of ``route``.

        Args:
            route: One of :data:`ROUTES`.
            status: Answer with this status (body defaults to
                ``{"error": "injected fault"}``).
            headers: Extra response headers.  On their own (no status/body/body_size)
                they are added to the normal answer; on the event stream they replace its
                own (its ``Content-Type``, say) but not its chunked framing.  A
                ``Content-Length`` given here is sent as is (and the connection is closed
                after the answer).
            body: Body to answer with: ``bytes``/``str`` verbatim, anything else
                JSON-encoded.  Without ``status`` the answer is 200.
            body_size: Stream a body of exactly this many bytes (``[`` followed by
                ``0,0,0,...``, an unterminated JSON array) in chunks, never buffered
                whole; 200 unless ``status`` is given.  ``body`` is then ignored.
            delay: Seconds to wait before answering; interrupted by :meth:`stop`.
                With nothing else set, the request is then handled normally.
            drop: Close the connection without sending any response bytes.
            times: Number of matching requests to affect; ``None`` = until cleared.
            workspace_id: Only match requests about this workspace (path ``:id`` or
                the body's ``workspace_id``/``id`` for registry routes).
            trickle: Send the answer (status line, headers and body: the fault's, or the
                normal one) one byte every ``trickle`` seconds, as a broken or hostile
                server may; interrupted by :meth:`stop` or by the client closing.

        Faults are checked in the order they were added; the first match applies.
        """
        self._faults.add(
            make_fault(
                route,
                status=status,
                headers=headers,
                body=body,
                body_size=body_size,
                delay=delay,
                drop=drop,
                times=times,
                workspace_id=workspace_id,
                trickle=trickle,
            )
        )

    def set_rate_limit(self, limit: int | None, window: float = 60.0) -> None:
        """Limit every key to ``limit`` requests a ``window`` (seconds), as the real server's
        ``RATE_LIMIT`` does (``None``: no limit, the default). The key is the
        ``X-Molecule-Org-Id`` header, else the bearer token, else the client's address; every
        answer then says ``X-Ratelimit-Limit``, ``-Remaining`` and ``-Reset``, and a request
        beyond the limit is answered 429 with ``Retry-After`` (never routed, never faulted)."""
        self._state.limiter.configure(limit, window)

    @property
    def rate_limited(self) -> int:
        """Requests answered 429 by the rate limit so far."""
        return self._state.limiter.refused

    def clear_faults(self, route: str | None = None) -> None:
        """Remove all faults, or only those of ``route``."""
        self._faults.clear(route)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first (entries are shared, see
        :class:`RecordedRequest`)."""
        with self._state.lock:
            return list(self._state.log)

    def requests_for(self, route: str, workspace_id: str | None = None) -> list[RecordedRequest]:
        """Logged requests of ``route`` (optionally only those about ``workspace_id``)."""
        with self._state.lock:
            return [
                r
                for r in self._state.log
                if r.route == route and (workspace_id is None or r.workspace_id == workspace_id)
            ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true or ``timeout`` seconds pass.

        The predicate runs without the platform lock held (so it may use the
        platform or even make HTTP calls to it).  It is re-evaluated on every request
        and state change, and at least every 50 ms.  Returns its last result.
        """
        return self._state.wait_for(predicate, timeout)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold every request while the block runs; events still reach the open streams.

        What the block adds is seen by the next request all at once, while the client has
        already been told of each addition: a burst of events around one slow poll.
        Do not wait for a request inside the block (it waits for the block's end).
        """
        with self._state.lock:
            yield

    def wait_for_requests(
        self,
        route: str,
        count: int,
        timeout: float = 5.0,
        workspace_id: str | None = None,
    ) -> bool:
        """Wait until at least ``count`` requests of ``route`` have been logged."""
        return self.wait_for(
            lambda: len(self.requests_for(route, workspace_id)) >= count, timeout=timeout
        )

    def _answered_bodies(self, route: str, workspace_id: str | None) -> list[dict[str, Any]]:
        """JSON-object bodies of the logged requests of ``route`` answered 2xx."""
        out: list[dict[str, Any]] = []
        for r in self.requests_for(route, workspace_id):
            if r.status is not None and 200 <= r.status < 300:
                body = r.json()
                if isinstance(body, dict):
                    out.append(body)
        return out

    def heartbeats(self, workspace_id: str | None = None) -> list[dict[str, object]]:
        """JSON bodies of heartbeats answered 2xx (from the request log)."""
        return list(self._answered_bodies("heartbeat", workspace_id))

    def notifications(self, workspace_id: str) -> list[str]:
        """Messages accepted (2xx) by ``POST /workspaces/:id/notify`` (from the log)."""
        bodies = self._answered_bodies("notify", workspace_id)
        return [b["message"] for b in bodies if isinstance(b.get("message"), str)]

    def a2a_messages(self, workspace_id: str) -> list[dict[str, object]]:
        """JSON bodies (as sent) of ``POST /workspaces/:id/a2a`` answered 2xx."""
        return list(self._answered_bodies("a2a", workspace_id))

    def clear_requests(self) -> None:
        """Empty the request log (and so :meth:`heartbeats`, :meth:`notifications`,
        :meth:`a2a_messages`)."""
        with self._state.lock:
            self._state.log.clear()
            self._state.changed()

    # ------------------------------------------------------------------ event stream

    def emit_event(self, workspace_id: str, kind: str, data: dict[str, Any]) -> None:
        """Send an event of type ``kind`` to the workspace's open streams."""
        self._state.hub.emit(workspace_id, kind, data)

    def emit_raw_event(self, workspace_id: str, frame: bytes) -> None:
        """Send bytes verbatim, as one chunk, to the workspace's open streams."""
        self._state.hub.emit_raw(workspace_id, frame)

    def open_streams(self, workspace_id: str | None = None) -> int:
        """How many event streams are open (for one workspace, or all)."""
        return self._state.hub.count(workspace_id)

    def drop_streams(self, workspace_id: str | None = None) -> int:
        """Cut the open event streams (of one workspace, or all); returns how many."""
        dropped = self._state.hub.drop(workspace_id)
        with self._state.lock:
            self._state.changed()
        return dropped

    def stall_streams(self, stalled: bool = True, workspace_id: str | None = None) -> None:
        """Make event streams silent (``stalled=False`` ends it): their connections stay open
        but carry nothing, not even the first ``: ping``. Without ``workspace_id`` it also
        applies to the streams opened from now on."""
        self._state.hub.stall(stalled, workspace_id)

    @property
    def event_bytes_sent(self) -> int:
        """Bytes of event-stream data (chunk payloads) sent so far, all streams together."""
        with self._state.hub.lock:
            return self._state.hub.bytes_sent
