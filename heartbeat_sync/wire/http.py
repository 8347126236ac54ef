"""HTTP plumbing: a ``requests.Session`` whose retries are urllib3's, and a whole-request
deadline."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Callable

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from .. import __about__, _fork

#: Statuses a GET is retried on (inside one request, by urllib3).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: What urllib3 retries within a request: not a 429, whose wait every request of its key
#: shares (``ratelimit``), where a retry of each would only spend the limit again.
_WITHIN_REQUEST = frozenset({502, 503, 504})

SessionFactory = Callable[[], requests.Session]


class Deadline:
    """When the request in progress must be over (monotonic time), or None between requests.

    One per adapter: a session belongs to one thread, so it runs one request at a time.
    """

    def __init__(self) -> None:
        self.at: float | None = None

    def remaining(self) -> float | None:
        """Seconds left, or None when no request is bounded."""
        at = self.at
        return None if at is None else at - time.monotonic()


class _Watchdog:
    """One daemon thread per process that calls a callback when its deadline passes.

    A ``requests`` timeout bounds each socket read, not the request: a server that trickles
    one byte a second keeps a request alive for ever. The watchdog shuts the connection down
    at the deadline, as ``stop()`` does. It idles on a condition and ends after a quiet
    minute; the next request starts it again.
    """

    IDLE_EXIT = 60.0

    def __init__(self) -> None:
        self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, at: float, callback: Callable[[], None]) -> list[Any]:
        """Call ``callback`` at monotonic time ``at`` unless :meth:`disarm` comes first."""
        entry: list[Any] = [math.inf if math.isnan(at) else at, next(self._seq), callback]
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="heartbeat-sync-watchdog", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()
        return entry

    def disarm(self, entry: list[Any]) -> None:
        with self._cond:
            entry[2] = None  # popped lazily

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2] is None:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        if not self._cond.wait(self.IDLE_EXIT) and not self._heap:
                            self._thread = None
                            return
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        callback = heapq.heappop(self._heap)[2]
                        break
                    # A far deadline would overflow the wait and end the thread: look again later.
                    self._cond.wait(min(delay, self.IDLE_EXIT))
            with contextlib.suppress(Exception):  # a callback must not end the watchdog
                callback()


_watchdog = _Watchdog()
_fork.track(_watchdog)


# Records urllib3 logs while one of the library's requests runs on this thread.
_in_request = threading.local()
_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.response")


class _DemoteOwnWarnings(logging.Filter):
    """Turn urllib3's WARNINGs about the library's own requests into DEBUG records.

    urllib3 logs a ``Retrying (...)`` WARNING for every retried attempt, outside the
    library's rate limit: an outage would flood the log. Only records emitted on a thread
    while one of the library's requests runs there are touched; a user's own ``requests``
    traffic logs as before.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not getattr(_in_request, "active", False):
            return True
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        # The level check already let the WARNING through: check again for DEBUG.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_demote = _DemoteOwnWarnings()
_filter_lock = threading.Lock()


def _install_log_filter() -> None:
    with _filter_lock:
        for name in _URLLIB3_LOGGERS:
            target = logging.getLogger(name)
            if _demote not in target.filters:
                target.addFilter(_demote)


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
    #: The deadline of the request in progress (shared by the copies ``new()`` makes).
    deadline: Deadline | None = None

    def _is_aborted(self) -> bool:
        if self.aborted is not None and self.aborted.is_set():
            return True
        # Past the request's deadline nothing is retried either.
        remaining = self.deadline.remaining() if self.deadline is not None else None
        return remaining is not None and remaining <= 0

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        if self._is_aborted():
            return False  # the response in hand is the answer
        return super().is_retry(method, status_code, has_retry_after)

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
        remaining = self.deadline.remaining() if self.deadline is not None else None
        if remaining is not None and wait is not None:
            wait = min(wait, remaining)
        if wait and wait > 0:
            if self.aborted is not None:
                self.aborted.wait(wait)
            else:
                time.sleep(wait)
        if self._is_aborted():
            # urllib3 retries as soon as this returns: stop() (or the deadline) came during
            # the wait, so end the request here instead of sending it again.
            raise MaxRetryError(None, "", ResponseError("aborted during a retry wait"))  # type: ignore[arg-type]

    def new(self, **kw: Any) -> BoundedRetry:
        retry = super().new(**kw)
        retry.retry_after_cap = self.retry_after_cap
        retry.aborted = self.aborted
        retry.deadline = self.deadline
        return retry


def parse_retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks the client to wait, as urllib3 reads it.

    The header is delay-seconds (digits only) or an HTTP date (a date in the past is 0.0);
    the value is parsed by urllib3's ``Retry.parse_retry_after``, so a status the client
    reports waits exactly as a GET urllib3 retries would. ``None`` when the header is absent
    or malformed (a fraction, a sign, a word): the caller then uses its own delay.
    """
    if value is None:
        return None
    try:
        seconds = _RETRY_AFTER_PARSER.parse_retry_after(value)
    except (InvalidHeader, OverflowError, ValueError):
        return None
    # urllib3 2.6 caps a Retry-After at six hours; earlier 2.x releases return any integer,
    # which float() may not take: the same cap for every release.
    return float(min(seconds, _RETRY_AFTER_MAX))


# parse_retry_after is an instance method of Retry, though it reads nothing of the instance.
_RETRY_AFTER_PARSER = Retry(0)
_RETRY_AFTER_MAX = 6 * 3600


def make_retry(retry_after_cap: float) -> BoundedRetry:
    """The retry policy of every session the library makes.

    Connect errors are retried for every method (the request never reached the server).
    Read errors and 502, 503 and 504 are retried for GET only (a 429 is not: its wait is the
    whole key's, see ``ratelimit``): a POST
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
        status_forcelist=_WITHIN_REQUEST,
        backoff_factor=0.2,
        backoff_max=max(0.0, min(2.0, retry_after_cap)),
        backoff_jitter=0.25,
        raise_on_status=False,
        raise_on_redirect=False,
        respect_retry_after_header=True,
    )
    retry.retry_after_cap = max(0.0, retry_after_cap)
    retry.aborted = threading.Event()
    retry.deadline = Deadline()
    return retry


def _nothing() -> None:
    return None


class AbortableAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose open connections can be shut down from another thread.

    ``stop()`` must be bounded even while a request hangs (a self-message may wait 120 s for
    an agent). Shutting the socket down makes the blocked read fail at once, so the thread
    that made the request sees an error and ends.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        # Each connection with the socket it connected: http.client lets go of ``conn.sock``
        # as soon as an answer will close the connection (``Connection: close``, or a body
        # that ends with the connection, as a stream passed on by a proxy does), while the
        # response goes on reading from that socket. It must be shut down all the same.
        live: weakref.WeakKeyDictionary[HTTPConnection, Callable[[], Any]]
        live = weakref.WeakKeyDictionary()
        self._live = live
        deadline = self.deadline

        def bound_connect(conn: HTTPConnection) -> None:
            # A connecting socket cannot be shut down from outside: give the connect no more
            # time than the request has left.
            remaining = deadline.remaining()
            timeout = conn.timeout
            if remaining is not None and isinstance(timeout, (int, float)):
                conn.timeout = max(0.001, min(float(timeout), remaining))

        aborted = getattr(self.max_retries, "aborted", None)

        def connected(conn: HTTPConnection) -> None:
            try:
                live[conn] = weakref.ref(conn.sock)
            except TypeError:  # None, or a wrapper that cannot be referred to weakly
                live[conn] = _nothing
            # An abort (or the deadline) that came while this connection was being made shut
            # down the others and could not see this one: it goes the same way, now.
            remaining = deadline.remaining()
            late = remaining is not None and remaining <= 0
            if (aborted is not None and aborted.is_set()) or late:
                with contextlib.suppress(OSError, AttributeError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

        class _Conn(HTTPConnection):
            def connect(self) -> None:
                bound_connect(self)
                super().connect()
                connected(self)

        class _SConn(HTTPSConnection):
            def connect(self) -> None:
                bound_connect(self)
                super().connect()
                connected(self)

        class _Pool(HTTPConnectionPool):
            ConnectionCls = _Conn

        class _SPool(HTTPSConnectionPool):
            ConnectionCls = _SConn

        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _SPool}

    @property
    def deadline(self) -> Deadline:
        """The deadline of the request in progress, shared with this adapter's retries."""
        deadline = getattr(self.max_retries, "deadline", None)
        if not isinstance(deadline, Deadline):
            deadline = self.__dict__.get("_deadline")
            if deadline is None:
                deadline = self.__dict__["_deadline"] = Deadline()
        return deadline

    def abort(self) -> None:
        """Shut down every connection this adapter opened (in flight or idle); retry nothing."""
        aborted = getattr(self.max_retries, "aborted", None)
        if aborted is not None:
            aborted.set()
        self._shutdown()

    def _shutdown(self) -> None:
        for conn, connected in list(getattr(self, "_live", {}).items()):
            # A socket closed since is marked so by Python (never another file's number):
            # shutting it down fails harmlessly.
            for sock in {getattr(conn, "sock", None), connected()}:
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


class RequestScope:
    """What :func:`request_scope` knows about the request it bounds."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: True once the deadline passed and the request's connections were shut down.
        self.expired = False


@contextlib.contextmanager
def request_scope(session: requests.Session, seconds: float) -> Iterator[RequestScope]:
    """Bound one whole request on ``session`` (connect, retries, headers and body together).

    Past ``seconds`` the session's connections are shut down, so the request fails at once
    whatever the server does (a server that trickles a byte a second included), and nothing
    is retried. urllib3's WARNINGs about the request are demoted to DEBUG (see
    :class:`_DemoteOwnWarnings`). Only the library's own adapters can be bounded; a session
    from a custom factory without them runs unbounded, as ``requests`` would.
    """
    scope = RequestScope(seconds)
    adapters = [a for a in {id(a): a for a in session.adapters.values()}.values()]
    ours = [a for a in adapters if isinstance(a, AbortableAdapter)]
    at = time.monotonic() + seconds
    for adapter in ours:
        adapter.deadline.at = at

    def expire() -> None:
        scope.expired = True
        for adapter in ours:
            adapter._shutdown()

    entry = _watchdog.arm(at, expire) if ours else None
    outer = getattr(_in_request, "active", False)
    _in_request.active = True
    try:
        yield scope
    finally:
        _in_request.active = outer
        if entry is not None:
            _watchdog.disarm(entry)
        for adapter in ours:
            adapter.deadline.at = None


def abort_session(session: requests.Session) -> None:
    """Interrupt requests in flight on ``session`` (best effort: only our adapters can)."""
    for adapter in list(session.adapters.values()):
        if isinstance(adapter, AbortableAdapter):
            adapter.abort()


def make_session(retry_after_cap: float = 5.0) -> requests.Session:
    """A new session with :func:`make_retry` mounted for http and https."""
    _install_log_filter()
    session = requests.Session()
    adapter = AbortableAdapter(
        max_retries=make_retry(retry_after_cap), pool_connections=2, pool_maxsize=2
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"heartbeat-sync/{__about__.__version__}"
    return session
