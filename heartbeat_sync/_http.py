"""HTTP plumbing: a ``requests.Session`` whose retries are urllib3's, and bounded bodies."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import weakref
from typing import Any, Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from . import __about__

#: Statuses a GET is retried on (inside one request, by urllib3).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: A GET response body larger than this is abandoned unread: the platform never sends one.
MAX_BODY_BYTES = 4 * 1024 * 1024

SessionFactory = Callable[[], requests.Session]


class BoundedRetry(Retry):
    """``Retry`` whose waits are capped and interruptible, and that an abort ends.

    urllib3 sleeps between attempts inside the request: the ``Retry-After`` wait is capped at
    ``retry_after_cap`` (``retry_after_max`` does that from urllib3 2.6 on; this works with
    every 2.x), and every wait ends early when ``aborted`` is set. Once it is set nothing is
    retried, so ``stop()`` is not held up by a retry that reconnects and hangs again.
    """

    retry_after_cap: float = 5.0
    #: Set by ``AbortableAdapter.abort()``.
    aborted: threading.Event | None = None

    def _is_aborted(self) -> bool:
        return self.aborted is not None and self.aborted.is_set()

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> BoundedRetry:
        if self._is_aborted():
            if error is not None:
                raise error
            # A status retry: urllib3 hands the caller the response it has (the request was
            # answered; the client reports its status).
            raise MaxRetryError(_pool, url or "", ResponseError("aborted by stop()"))
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        assert isinstance(retry, BoundedRetry)
        return retry

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), self.retry_after_cap)

    def get_retry_after(self, response: Any) -> float | None:
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None  # a malformed Retry-After: back off as if there were none

    def sleep(self, response: Any = None) -> None:
        wait = None
        if self.respect_retry_after_header and response is not None:
            wait = self.get_retry_after(response)
        if not wait:
            wait = self.get_backoff_time()
        if wait and wait > 0:
            if self.aborted is not None:
                self.aborted.wait(wait)
            else:
                time.sleep(wait)

    def new(self, **kw: Any) -> BoundedRetry:
        retry = super().new(**kw)
        retry.retry_after_cap = self.retry_after_cap
        retry.aborted = self.aborted
        return retry


def make_retry(retry_after_cap: float) -> BoundedRetry:
    """The retry policy of every session the library makes.

    Connect errors are retried for every method (the request never reached the server).
    Read errors and the statuses in :data:`RETRY_STATUSES` are retried for GET only: a POST
    is not idempotent (a heartbeat or a self-message must not be sent twice). Backoff and
    ``Retry-After`` waits are both capped at ``retry_after_cap``: they happen inside a request,
    where the schedule cannot see them (only ``stop()`` cuts them short).
    """
    retry = BoundedRetry(
        total=4,
        connect=2,
        read=1,
        status=2,
        other=0,
        redirect=3,
        allowed_methods=frozenset({"GET"}),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=0.2,
        backoff_max=max(0.0, min(2.0, retry_after_cap)),
        backoff_jitter=0.25,
        raise_on_status=False,
        raise_on_redirect=False,
        respect_retry_after_header=True,
    )
    retry.retry_after_cap = max(0.0, retry_after_cap)
    retry.aborted = threading.Event()
    return retry


class AbortableAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose open connections can be shut down from another thread.

    ``stop()`` must be bounded even while a request hangs (a self-message may wait 120 s for
    an agent). Shutting the socket down makes the blocked read fail at once, so the thread
    that made the request sees an error and ends.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        live: weakref.WeakSet[HTTPConnection] = weakref.WeakSet()
        self._live = live

        class _Conn(HTTPConnection):
            def connect(self) -> None:
                super().connect()
                live.add(self)

        class _SConn(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                live.add(self)

        class _Pool(HTTPConnectionPool):
            ConnectionCls = _Conn

        class _SPool(HTTPSConnectionPool):
            ConnectionCls = _SConn

        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _SPool}

    def abort(self) -> None:
        """Shut down every connection this adapter opened (in flight or idle); retry nothing."""
        aborted = getattr(self.max_retries, "aborted", None)
        if aborted is not None:
            aborted.set()
        for conn in list(getattr(self, "_live", ())):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def abort_session(session: requests.Session) -> None:
    """Interrupt requests in flight on ``session`` (best effort: only our adapters can)."""
    for adapter in list(session.adapters.values()):
        if isinstance(adapter, AbortableAdapter):
            adapter.abort()


def make_session(retry_after_cap: float = 5.0) -> requests.Session:
    """A new session with :func:`make_retry` mounted for http and https."""
    session = requests.Session()
    adapter = AbortableAdapter(
        max_retries=make_retry(retry_after_cap), pool_connections=2, pool_maxsize=2
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"heartbeat-sync/{__about__.__version__}"
    return session


class BodyTooLarge(ValueError):
    """The response body was larger than the library accepts."""


def read_body(resp: requests.Response, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read a streamed response body, giving up past ``limit`` bytes (memory stays bounded)."""
    try:
        length = int(resp.headers.get("Content-Length", "-1"))
    except ValueError:
        length = -1
    if length > limit:
        resp.close()
        raise BodyTooLarge(f"response body of {length} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > limit:
            resp.close()
            raise BodyTooLarge(f"response body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(data: bytes) -> Any:
    """Parse JSON, returning None for an empty or malformed body (never raises)."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None
