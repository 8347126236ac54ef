"""Many event streams on one thread: a :class:`StreamReader` holds every workspace's stream open
and reads them all with one selector.

:class:`~heartbeat_sync.wire.events.EventStream` gives each stream a thread of its own and reads
it with ``requests``: simple, and right for one workspace. A process that runs a hundred
workspaces would hold a hundred threads, each asleep on a socket that says something once a
beat. Here each stream is a small state machine over a non-blocking socket (connect, TLS
handshake, request, the answer's head, the body), and one daemon thread waits on all of them at
once with :mod:`selectors`, never longer than the nearest deadline (an attempt's open deadline,
a stream's idle deadline, a reconnect time). What the stream means, how its attempts end and
how long to wait after each are exactly :class:`EventStream`'s: the same parser, the same
outcomes ("healthy", "no-route", "failed"), the same waits
(:func:`~heartbeat_sync.wire.events.reconnect_delay`), the same log lines and counters.

The request is built here from what the client gives
(:meth:`PlatformClient.event_stream_opening`): no ``requests`` session is held per stream, so
an idle stream costs a socket, its buffers (a few KiB while nothing arrives) and its parser.
A stream whose URL goes through a proxy is the exception: it falls back to a classic
:class:`EventStream` and its own thread, since speaking to proxies is ``requests``' work.

Every callback runs on the reader's thread and must be cheap (set a flag, wake a thread). One
that raises is logged and costs nothing else. Whatever a server does (a head that never ends, a
chunk cut in the middle, chunk sizes that are not numbers, an event that never ends, a body
that is not an event stream) costs only its own stream, which fails and backs off, in bounded
memory.

A host name is looked up on the reader's thread (``getaddrinfo`` cannot be made non-blocking):
once a minute per host, whatever the number of streams, as they all go to the same platform.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from .. import __about__, _logctx
from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from .._status import StreamStatus
from .body import parse_json
from .client import PlatformClient, PlatformError, describe_error
from .events import (
    _NO_ROUTE,
    HEALTHY_AFTER,
    EventStream,
    Outcome,
    backoff_delay,
    reconnect_delay,
)
from .sse import SSEParser, credentials_rotated, is_event_stream, state_change, wants_poll

logger = get_logger(__name__)

_T = TypeVar("_T")

#: An answer's status line and headers over this many bytes: the attempt failed.
MAX_HEAD_BYTES = 64 * 1024
#: The body of a refusal (anything but 200) is read up to this many bytes for its error; a
#: longer one is left unread (as :meth:`PlatformClient.event_stream` does).
MAX_REFUSAL_BODY = 64 * 1024
#: A chunk-size line (the size in hex and its extensions) over this many bytes is not HTTP.
MAX_CHUNK_LINE = 4096
#: Trailers after the last chunk, at most this many bytes together.
MAX_TRAILERS = 64 * 1024
#: The most read from a socket at once.
READ_SIZE = 65536
#: The most read from one stream before the others get their turn: a server that floods
#: its stream cannot hold the thread.
MAX_READ_PER_TURN = 4 * READ_SIZE
#: A host's addresses are looked up again after this many seconds...
RESOLVE_TTL = 60.0
#: ... and a failed lookup is not tried again for this long (every stream would block on it).
RESOLVE_FAILURE_TTL = 5.0
#: The longest the thread sleeps with nothing due (a safety net: every deadline wakes it).
MAX_WAIT = 30.0


class Stream(Protocol):
    """One workspace's event stream, as a run holds it (:class:`EventStream` is one too)."""

    @property
    def running(self) -> bool: ...

    @property
    def thread(self) -> threading.Thread | None: ...

    def start(self) -> None: ...

    def request_stop(self) -> None: ...

    def stop(self, timeout: float) -> bool: ...

    def status(self) -> StreamStatus: ...


class StreamFactory(Protocol):
    """What makes a run's stream: :class:`EventStream` itself, or :meth:`StreamReader.stream`."""

    def __call__(
        self,
        client_factory: Callable[[], PlatformClient],
        workspace_id: str,
        on_hint: Callable[[], None],
        *,
        idle_timeout: float,
        draw: Callable[[], float],
        on_state: Callable[[str], None] | None = None,
        on_connect: Callable[[int], None] | None = None,
        canvas: bool = False,
        name: str = ...,
    ) -> Stream: ...


class HTTPProtocolError(ValueError):
    """The server's answer is not HTTP/1.1 as the reader accepts it (said in words)."""


# --- the answer, parsed incrementally (pure) -------------------------------------------------


def parse_head(raw: bytes) -> tuple[int, CaseInsensitiveDict[str]]:
    """The status and headers of an answer's head (its bytes up to, not including, the blank
    line). Raises :class:`HTTPProtocolError` for anything else than an HTTP/1.x head.

    Repeated headers are joined with ``", "``; a folded line continues the header before it.
    """
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        raise HTTPProtocolError("the answer does not start with an HTTP/1.x status line")
    if not parts[1].isdigit():
        raise HTTPProtocolError("the answer's status is not a number")
    status = int(parts[1])
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    last: str | None = None
    for line in lines[1:]:
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and last is not None:
            headers[last] = f"{headers[last]} {text.strip()}"
            continue
        name, colon, value = text.partition(":")
        name = name.strip()
        if not colon or not name:
            raise HTTPProtocolError("the answer has a header line without a name")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    return status, headers


class ChunkedDecoder:
    """Incremental decoder of the chunked transfer coding, in bounded memory.

    :meth:`feed` takes bytes as they arrive and returns the data they complete (slices of
    what it was given: nothing is buffered but an unfinished size or trailer line, at most
    :data:`MAX_CHUNK_LINE` bytes). Chunk extensions are ignored, trailers read past.
    :attr:`done` turns True after the last chunk and its trailers. Anything else than the
    coding raises :class:`HTTPProtocolError`.
    """

    def __init__(self) -> None:
        self._state: Literal["size", "data", "crlf", "trailer"] = "size"
        self._line = bytearray()
        self._left = 0
        self._trailers = 0
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n and not self.done:
            if self._state == "data":
                take = min(self._left, n - i)
                out.append(data[i : i + take])
                i += take
                self._left -= take
                if self._left == 0:
                    self._state = "crlf"
                continue
            end = data.find(b"\n", i)
            piece = data[i:] if end < 0 else data[i:end]
            limit = MAX_TRAILERS if self._state == "trailer" else MAX_CHUNK_LINE
            if len(self._line) + len(piece) > limit:
                raise HTTPProtocolError("a chunk-size or trailer line is too long")
            self._line += piece
            if end < 0:
                break
            i = end + 1
            line = bytes(self._line)
            self._line.clear()
            if line.endswith(b"\r"):
                line = line[:-1]
            self._line_done(line)
        return out

    def _line_done(self, line: bytes) -> None:
        if self._state == "crlf":
            if line:
                raise HTTPProtocolError("a chunk is longer than its size says")
            self._state = "size"
        elif self._state == "size":
            digits = line.split(b";", 1)[0].strip()
            if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
                raise HTTPProtocolError("a chunk size is not a hexadecimal number")
            size = int(digits, 16)
            if size == 0:
                self._state = "trailer"
            else:
                self._left = size
                self._state = "data"
        else:  # trailer
            if not line:
                self.done = True
            else:
                self._trailers += len(line)
                if self._trailers > MAX_TRAILERS:
                    raise HTTPProtocolError("the trailers are too long")


class BodyFraming:
    """The body of one answer as its headers frame it: chunked, ``Content-Length`` bytes, or
    everything up to the connection's close (:attr:`done` never turns True then)."""

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        self._chunked: ChunkedDecoder | None = None
        self._left: int | None = None
        self.done = False
        coding = (headers.get("Transfer-Encoding") or "").strip().lower()
        if coding:
            if coding.split(",")[-1].strip() == "chunked":
                self._chunked = ChunkedDecoder()
            return  # another coding last: the body ends with the connection
        if status in (204, 304):
            self._left = 0
        length = headers.get("Content-Length")
        if length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise HTTPProtocolError("the answer's Content-Length is not one number")
            self._left = int(next(iter(values)))
        self.done = self._left == 0

    def feed(self, data: bytes) -> list[bytes]:
        """The body's bytes in ``data`` (what follows the body, if anything, is dropped)."""
        if self.done:
            return []
        if self._chunked is not None:
            pieces = self._chunked.feed(data)
            self.done = self._chunked.done
            return pieces
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
            self.done = self._left == 0
        return [data] if data else []


def _find_head_end(buf: bytearray, start: int) -> tuple[int, int] | None:
    """Where the head in ``buf`` ends (the blank line's start, and the body's start), looking
    from ``start`` on; None while it has not."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    ends = [(at, at + 4) for at in (crlf,) if at >= 0] + [(at, at + 2) for at in (lf,) if at >= 0]
    return min(ends) if ends else None


def _header_lines(headers: Mapping[str, str]) -> str:
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or not name or ":" in name:
            raise ValueError("a request header cannot be sent")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


# --- one stream -------------------------------------------------------------------------------

_State = Literal["idle", "wait", "connect", "tls", "send", "head", "refused", "open", "done"]
#: The states in which the stream holds a socket.
_WITH_SOCKET = frozenset({"connect", "tls", "send", "head", "refused", "open"})


class _Target:
    """Where the stream is, parsed once from its URL."""

    def __init__(self, url: str) -> None:
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError("the platform URL is not an http or https URL")
        self.tls = split.scheme == "https"
        self.host = split.hostname
        self.port = split.port or (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        self.request_target = (split.path or "/") + (f"?{split.query}" if split.query else "")


class ReaderStream:
    """One workspace's event stream, held by a :class:`StreamReader` (see
    :meth:`StreamReader.stream`); it satisfies :class:`Stream`.

    Its callbacks and counters are :class:`EventStream`'s. :attr:`thread` is None: the reader's
    thread is shared, and a run joins only the threads its streams own; a stream that fell back
    to :class:`EventStream` (its URL goes through a proxy) gives that stream's own thread.
    """

    def __init__(
        self,
        reader: StreamReader,
        client_factory: Callable[[], PlatformClient],
        workspace_id: str,
        on_hint: Callable[[], None],
        *,
        idle_timeout: float,
        draw: Callable[[], float],
        on_state: Callable[[str], None] | None = None,
        on_connect: Callable[[int], None] | None = None,
        canvas: bool = False,
        name: str = "heartbeat-sync-events",
    ) -> None:
        self._reader = reader
        self._client_factory = client_factory
        self.workspace_id = workspace_id
        self._on_hint = on_hint
        self._on_state = on_state
        self._on_connect = on_connect
        self._canvas = canvas
        self.idle_timeout = idle_timeout
        self._draw = draw
        self.name = name
        self._warn = RateLimitedLog(logger)
        #: Set from start() to the end: held by the reader (or by the fallback).
        self._held = False
        self._stopping = False
        self._done = threading.Event()
        self._done.set()
        self._fallback: EventStream | None = None
        self._client: PlatformClient | None = None
        self._verify: bool | str = True
        self._said_no_route = False
        self._said_unreachable = False
        self.connects = 0
        self.events = 0
        self.hints = 0
        self.state_hints = 0
        self.reads = 0
        self.last_refusal: int | None = None
        self._connected = False
        # The attempt in progress (reader's thread only).
        self._state: _State = "idle"
        self._failures = 0  # failed attempts in a row
        self._next_at = 0.0
        self._deadline = 0.0  # the open deadline, or the idle deadline once open
        self._retried_401 = False
        self._sock: socket.socket | None = None
        self._mask = 0
        self._target: _Target | None = None
        self._addresses: list[tuple[int, tuple[str, int]]] = []
        self._out = b""
        self._head = bytearray()
        self._searched = 0
        self._status = 0
        self._headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        self._framing: BodyFraming | None = None
        self._body = bytearray()
        self._body_over = False
        self._parser: SSEParser | None = None
        self._opened = 0.0
        self._dropped = 0
        self._budget_observe: Callable[[int, Mapping[str, str]], None] | None = None

    # --- the Stream protocol (any thread) -------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the stream is held: from :meth:`start` until it is stopped."""
        fallback = self._fallback
        if fallback is not None:
            return fallback.running
        return self._held

    @property
    def thread(self) -> threading.Thread | None:
        """None (the reader's thread is not this stream's), or the fallback's own thread."""
        fallback = self._fallback
        return fallback.thread if fallback is not None else None

    def start(self) -> None:
        """Hold the stream: the reader connects it soon, on its thread. Idempotent.

        The client is made here (it makes no request): a URL that goes through a proxy, as the
        client's session would send it, makes this stream an :class:`EventStream` instead.
        """
        with self._reader._lock:
            if self._held or (self._fallback is not None and self._fallback.running):
                return
        client = self._client_factory()
        with _logctx.workspace(self.workspace_id):
            proxied, verify = _transport(client)
        if proxied:
            client.close()
            logger.debug("event stream goes through a proxy: read on a thread of its own")
            fallback = EventStream(
                self._client_factory,
                self.workspace_id,
                self._on_hint,
                idle_timeout=self.idle_timeout,
                draw=self._draw,
                on_state=self._on_state,
                on_connect=self._on_connect,
                canvas=self._canvas,
                name=self.name,
            )
            self._fallback = fallback
            fallback.start()
            return
        with self._reader._lock:
            if self._held:
                client.close()
                return
            self._fallback = None
            self._client = client
            self._verify = verify
            self._held = True
            self._stopping = False
            self._done.clear()
            self._reader._changed.append(self)
            self._reader._wake()

    def request_stop(self) -> None:
        """Ask the stream to end; returns at once (the reader closes it soon)."""
        fallback = self._fallback
        if fallback is not None:
            fallback.request_stop()
            return
        reader = self._reader
        with reader._lock:
            if not self._held or self._stopping:
                return
            self._stopping = True
            if reader._thread is threading.current_thread() or not reader._alive:
                # The reader's own thread (a callback), or no reader thread at all: nothing
                # else touches the stream, so it ends here.
                self._finish()
                return
            reader._changed.append(self)
            reader._wake()

    def stop(self, timeout: float) -> bool:
        """End the stream; True once its socket is closed and no callback comes any more,
        within ``timeout`` seconds."""
        fallback = self._fallback
        if fallback is not None:
            return fallback.stop(timeout)
        self.request_stop()
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            with self._reader._lock:
                if not self._reader._alive and self._held:
                    self._finish()  # the reader ended meanwhile: nothing else will
                    break
            if time.monotonic() >= deadline:
                break
        return self._done.is_set()

    def status(self) -> StreamStatus:
        """The stream's counters, as :meth:`EventStream.status` gives them."""
        fallback = self._fallback
        if fallback is not None:
            return fallback.status()
        return StreamStatus(
            connected=self._connected,
            connects=self.connects,
            events=self.events,
            polls_asked=self.hints,
            state_checks_asked=self.state_hints,
            last_refusal=self.last_refusal,
        )

    # --- the reader's side (its thread, or under its lock when it has none) ---------------------

    def _finish(self) -> None:
        """Close everything and let stop() return. Caller holds the reader's lock or is its
        thread."""
        self._close_socket()
        self._state = "done"
        self._connected = False
        self._reader._active.discard(self)
        client, self._client = self._client, None
        self._parser = None
        self._body = bytearray()
        self._head = bytearray()
        self._held = False
        if client is not None:
            try:
                client.close()
            except Exception:  # closing must never fail the reader
                logger.debug("closing the stream's client failed", exc_info=True)
        self._done.set()

    def _apply(self, now: float) -> None:
        """Take what start() or request_stop() asked for."""
        with self._reader._lock:
            stopping, held = self._stopping, self._held
        if stopping and held:
            with self._reader._lock:
                self._finish()
        elif held and self not in self._reader._active:
            self._reader._active.add(self)
            self._state = "wait"
            self._failures = 0
            self._next_at = now

    def _due(self) -> float:
        """When the stream must be looked at even if its socket says nothing."""
        if self._state == "wait":
            return self._next_at
        if self._state in _WITH_SOCKET:
            return self._deadline
        return float("inf")

    def _tick(self, now: float) -> None:
        """What is due at ``now``: an attempt, or a deadline passed."""
        if self._stopping or now < self._due():
            return
        if self._state == "wait":
            self._attempt(now)
        elif self._state == "connect":
            # The open deadline covers every address: a host that does not answer in time is
            # unreachable, whichever address was tried.
            self._unreachable(f"{self._where()}: no connection within {self._timeout():g} s")
        elif self._state in ("tls", "send", "head"):
            path = self._target.request_target if self._target else ""
            self._opening_failed(f"GET {path}: no complete answer within {self._timeout():g} s")
        elif self._state == "refused":
            self._refusal_read()  # what arrived is all there is
        elif self._state == "open":
            self._stream_ended(f"silent for {self.idle_timeout:g} s")

    def _timeout(self) -> float:
        client = self._client
        return client.timeout if client is not None else 10.0

    # --- an attempt -----------------------------------------------------------------------------

    def _attempt(self, now: float) -> None:
        client = self._client
        assert client is not None
        self._retried_401 = False
        self._open(client, now)

    def _open(self, client: PlatformClient, now: float) -> None:
        try:
            opening = client.event_stream_opening()
        except PlatformError as exc:
            # A 429 holds every request of the key: the attempt waits for its end, and the
            # thread goes on with the others.
            logger.debug("event stream not opened: %s", exc)
            held = exc.retry_after or 0.0
            self._schedule("failed", at_least=held)
            return
        target = _Target(opening.url)
        headers = {
            "Host": target.host_header,
            "User-Agent": f"heartbeat-sync/{__about__.__version__}",
            "Accept-Encoding": "identity",
            **opening.headers,
            "Connection": "close",
        }
        self._out = (
            f"GET {target.request_target} HTTP/1.1\r\n{_header_lines(headers)}\r\n"
        ).encode("latin-1")
        self._target = target
        self._budget_observe = opening.budget.observe
        try:
            self._addresses = self._reader._resolve(target.host, target.port)
        except OSError as exc:
            self._addresses = []
            self._unreachable(f"{target.host} could not be resolved: {exc}")
            return
        self._deadline = now + client.timeout
        self._connect_next(now)

    def _connect_next(self, now: float) -> None:
        """Connect to the next address of the host (non-blocking)."""
        while self._addresses:
            family, address = self._addresses.pop(0)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(address)
            if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                self._sock = sock
                self._state = "connect"
                self._watch(selectors.EVENT_WRITE)
                return
            sock.close()
            if not self._addresses:
                self._unreachable(f"{self._where()}: {os.strerror(err)}")
                return
        self._unreachable(f"{self._where()}: no address to connect to")

    def _where(self) -> str:
        target = self._target
        return f"{target.host}:{target.port}" if target is not None else "the platform"

    def _ready(self, mask: int) -> None:
        """The socket can be read or written: go on from where the attempt is."""
        if self._stopping or self._sock is None:
            return
        state = self._state
        if state == "connect":
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._close_socket()
                if self._addresses:
                    self._connect_next(time.monotonic())
                else:
                    self._unreachable(f"{self._where()}: {os.strerror(err)}")
                return
            if self._target is not None and self._target.tls:
                context = self._reader._context(self._verify)
                self._sock = context.wrap_socket(
                    self._sock, server_hostname=self._target.host, do_handshake_on_connect=False
                )
                self._state = "tls"
            else:
                self._state = "send"
            state = self._state
        if state == "tls":
            self._handshake()
        elif state == "send":
            self._send()
        elif state in ("head", "refused", "open"):
            self._receive()

    def _handshake(self) -> None:
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            self._opening_failed(f"TLS handshake failed: {exc}")
            return
        self._state = "send"
        self._send()

    def _send(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while self._out:
                sent = sock.send(self._out)
                self._out = self._out[sent:]
        except (BlockingIOError, ssl.SSLWantWriteError):
            self._watch(selectors.EVENT_WRITE)
            return
        except ssl.SSLWantReadError:
            self._watch(selectors.EVENT_READ)
            return
        except OSError as exc:
            self._opening_failed(f"the request could not be sent: {type(exc).__name__}")
            return
        self._state = "head"
        self._head.clear()
        self._searched = 0
        self._watch(selectors.EVENT_READ)

    def _receive(self) -> None:
        """Read what has arrived (up to :data:`MAX_READ_PER_TURN`) and act on it."""
        sock = self._sock
        budget = MAX_READ_PER_TURN
        while budget > 0 and self._sock is sock and sock is not None:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except ssl.SSLWantWriteError:
                self._watch(selectors.EVENT_READ | selectors.EVENT_WRITE)
                return
            except OSError as exc:
                self._connection_lost(type(exc).__name__)
                return
            if not data:
                self._connection_lost("closed by the platform")
                return
            budget -= len(data)
            self._bytes(data)
        if self._sock is sock and isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._reader._again.add(self)  # decrypted already: the selector will not say so

    def _bytes(self, data: bytes) -> None:
        if self._state == "head":
            self._head_bytes(data)
        elif self._state == "refused":
            self._refusal_bytes(data)
        elif self._state == "open":
            self._stream_bytes(data)

    def _connection_lost(self, reason: str) -> None:
        if self._state == "open":
            self._stream_ended(reason)
        elif self._state == "refused":
            self._refusal_read()
        else:
            self._opening_failed(f"the connection ended before the answer: {reason}")

    # --- the answer's head ------------------------------------------------------------------------

    def _head_bytes(self, data: bytes) -> None:
        self._head += data
        end = _find_head_end(self._head, max(0, self._searched - 3))
        if end is None:
            self._searched = len(self._head)
            if len(self._head) > MAX_HEAD_BYTES:
                self._opening_failed(f"the answer's head is over {MAX_HEAD_BYTES} bytes")
            return
        if end[0] > MAX_HEAD_BYTES:
            self._opening_failed(f"the answer's head is over {MAX_HEAD_BYTES} bytes")
            return
        raw, rest = bytes(self._head[: end[0]]), bytes(self._head[end[1] :])
        self._head.clear()
        self._searched = 0
        try:
            status, headers = parse_head(raw)
        except HTTPProtocolError as exc:
            self._opening_failed(str(exc))
            return
        if 100 <= status < 200 and status != 101:
            if rest:
                self._head_bytes(rest)  # an interim answer: the real one follows
            return
        self._status, self._headers = status, headers
        if self._budget_observe is not None:
            self._budget_observe(status, headers)
        try:
            self._framing = BodyFraming(status, headers)
        except HTTPProtocolError as exc:
            self._opening_failed(str(exc))
            return
        if status != 200:
            self._state = "refused"
            self._body = bytearray()
            self._body_over = False
            self._deadline = time.monotonic() + self._timeout()
            if self._framing.done:
                self._refusal_read()
            elif rest:
                self._refusal_bytes(rest)
            return
        content_type = headers.get("Content-Type")
        if not is_event_stream(content_type):
            # A 200 that is not a stream (a proxy's page, a server that routes the path
            # elsewhere) would end at once every time: it is a server without the route.
            self._close_socket()
            self.last_refusal = status
            shown = (content_type or "none")[:100]
            self._schedule(self._no_route(f"it answered {status} with Content-Type {shown!r}"))
            return
        coding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if coding != "identity":
            self._opening_failed(f"the stream came with Content-Encoding {coding[:40]!r}")
            return
        self._opened_stream(rest)

    # --- a refusal ------------------------------------------------------------------------------

    def _refusal_bytes(self, data: bytes) -> None:
        framing = self._framing
        assert framing is not None
        try:
            pieces = framing.feed(data)
        except HTTPProtocolError:
            self._body_over = True  # unreadable: the refusal is judged by its status
            pieces = []
        for piece in pieces:
            if len(self._body) + len(piece) > MAX_REFUSAL_BODY:
                self._body_over = True
                break
            self._body += piece
        if framing.done or self._body_over:
            self._refusal_read()

    def _refusal_read(self) -> None:
        """The refusal's body is read (or as much as will be): judge it as EventStream does."""
        client = self._client
        assert client is not None
        self._close_socket()
        status = self._status
        body = None if self._body_over else parse_json(bytes(self._body))
        self._body = bytearray()
        exc = client.event_stream_refusal(status, body, self._headers)
        if status == 401 and not self._retried_401:
            # The heartbeat's rule: re-read the token from disk and try once more.
            self._retried_401 = True
            client.credentials.refresh()
            self._open(client, time.monotonic())
            return
        self.last_refusal = exc.status
        if status in _NO_ROUTE:
            self._schedule(self._no_route(str(exc)))
        elif exc.tenant_required:
            # The beat thread says it once, as an ERROR; only a setting can fix it, so the
            # stream asks again as rarely as a server without the route.
            logger.debug("event stream could not be opened: %s", exc)
            self._schedule("no-route")
        else:
            self._warn.warning("stream", "event stream could not be opened: %s", exc)
            self._schedule("failed")

    # --- an open stream -------------------------------------------------------------------------

    def _opened_stream(self, rest: bytes) -> None:
        self._state = "open"
        self._said_no_route = False
        self._said_unreachable = False
        self.connects += 1
        self._parser = SSEParser()
        self._dropped = 0
        self._opened = time.monotonic()
        self._deadline = self._opened + self.idle_timeout
        self._connected = True
        if self._on_connect is not None:
            # Events sent while no stream was open are lost: whoever relies on them looks now.
            self._call("on_connect", self._on_connect, self.connects)
        if self._state != "open":
            return  # stopped by the callback
        if rest:
            self._stream_bytes(rest)
        elif self._framing is not None and self._framing.done:
            self._stream_ended("closed by the platform")  # an empty body: nothing to read

    def _stream_bytes(self, data: bytes) -> None:
        framing, parser = self._framing, self._parser
        assert framing is not None and parser is not None
        self.reads += 1
        self._deadline = time.monotonic() + self.idle_timeout
        try:
            pieces = framing.feed(data)
        except HTTPProtocolError as exc:
            self._stream_ended(str(exc))
            return
        client = self._client
        for piece in pieces:
            for event in parser.feed(piece):
                if self._stopping:
                    return
                self.events += 1
                if wants_poll(event, self.workspace_id, self._canvas):
                    self.hints += 1
                    self._call("on_hint", self._on_hint)
                elif credentials_rotated(event):
                    # Every thread's next request reads the token again, at once: the one
                    # held is refused from now on.
                    if client is not None:
                        client.credentials.invalidate()
                elif self._on_state is not None:
                    kind = state_change(event)
                    if kind is not None:
                        self.state_hints += 1
                        self._call("on_state", self._on_state, kind)
        if parser.oversized + parser.dropped_events != self._dropped:
            self._dropped = parser.oversized + parser.dropped_events
            self._warn.warning(
                "oversized",
                "event stream: a line or an event over %d bytes was dropped",
                max(parser.max_line, parser.max_event),
            )
        if framing.done and self._state == "open" and not self._stopping:
            self._stream_ended("closed by the platform")

    def _stream_ended(self, reason: str) -> None:
        parser = self._parser
        self._close_socket()
        self._connected = False
        self._parser = None
        if self._stopping:
            return
        spoke = parser is not None and (parser.comments > 0 or parser.events > 0)
        if spoke and time.monotonic() - self._opened >= HEALTHY_AFTER:
            self._warn.reset("stream")
            logger.debug("event stream ended (%s); reconnecting", reason)
            self._schedule("healthy")
            return
        self._warn.warning("stream", "event stream ended at once (%s)", reason)
        self._schedule("failed")

    def _call(self, what: str, callback: Callable[..., None], *args: object) -> None:
        if self._stopping:
            return
        try:
            callback(*args)
        except Exception as exc:  # the caller's bug: said, and the stream goes on
            self._warn.warning("callback", "event stream: %s raised %s", what, describe_error(exc))
            logger.debug("event stream: %s raised", what, exc_info=True)

    # --- how attempts end -----------------------------------------------------------------------

    def _unreachable(self, reason: str) -> None:
        # The platform cannot be reached: the beat thread warns about that outage already,
        # and the stream only costs latency. Said once, at INFO.
        self._close_socket()
        level = logging.DEBUG if self._said_unreachable else logging.INFO
        self._said_unreachable = True
        logger.log(level, "event stream could not be opened: %s", reason)
        self._schedule("failed")

    def _opening_failed(self, reason: str) -> None:
        self._close_socket()
        self._warn.warning("stream", "event stream could not be opened: %s", reason)
        self._schedule("failed")

    def _no_route(self, reason: str) -> Outcome:
        # Not a fault: an older or trimmed server, or something in front of it that does not
        # pass the stream on. Said once, at INFO.
        level = logging.DEBUG if self._said_no_route else logging.INFO
        self._said_no_route = True
        logger.log(
            level, "the platform has no event stream (%s); results come on the schedule", reason
        )
        return "no-route"

    def _schedule(self, outcome: Outcome, at_least: float = 0.0) -> None:
        """Wait before the next attempt, as EventStream waits after one that ended so."""
        self._close_socket()
        if outcome == "healthy":
            self._failures = 0
        try:
            draw = float(self._draw())
        except Exception:
            draw = 1.0
        delay = reconnect_delay(outcome, self._failures, draw)
        if outcome == "failed":
            self._failures += 1
        self._state = "wait"
        self._next_at = time.monotonic() + max(delay, at_least)

    def _crashed(self, exc: BaseException) -> None:
        """A bug (or a callback's surprise) in this stream's handling: it backs off, the
        reader goes on."""
        self._warn.warning("stream", "event stream failed: %s", describe_error(exc))
        self._connected = False
        self._parser = None
        self._close_socket()
        if self._held and not self._stopping and self._state != "done":
            self._state = "wait"
            self._next_at = time.monotonic() + backoff_delay(self._failures, 1.0)
            self._failures += 1

    # --- the socket -----------------------------------------------------------------------------

    def _watch(self, mask: int) -> None:
        sock = self._sock
        if sock is None or mask == self._mask:
            return
        selector = self._reader._selector
        if selector is not None:
            if self._mask:
                selector.modify(sock, mask, self)
            else:
                selector.register(sock, mask, self)
        self._mask = mask

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        self._reader._again.discard(self)
        if sock is None:
            return
        selector = self._reader._selector
        if self._mask and selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(sock)
        self._mask = 0
        with contextlib.suppress(OSError):
            sock.close()


def _transport(client: PlatformClient) -> tuple[bool, bool | str]:
    """Whether the client's session would send the stream through a proxy, and how it
    verifies TLS (True, a CA bundle's path, or False).

    The session is made for this (it reads the environment, as every request's does) and
    closed at once: the reader sends the request itself.
    """
    opening_url = f"{client.base_url}/"
    try:
        session = client.session
        environ = requests.utils.get_environ_proxies(opening_url)
        proxied = any(key != "no" for key in environ) or (
            requests.utils.select_proxy(opening_url, session.proxies) is not None
        )
        verify = session.verify
    finally:
        client.rebuild()
    return proxied, verify if isinstance(verify, (bool, str)) else True


# --- the reader -------------------------------------------------------------------------------


class StreamReader:
    """Holds many workspaces' event streams open and reads them all on one daemon thread.

    :meth:`stream` has the signature of :class:`EventStream` (a :class:`StreamFactory`): a
    run given ``streams=reader.stream`` holds its stream here. :meth:`start` starts the thread
    (streams started before wait for it); :meth:`stop` closes every stream and ends it.
    Each stream connects with a non-blocking socket (TLS for https, verified against
    ``requests``' CA bundle, or the one the client's session names), sends its request, and
    reads its answer incrementally; every wait is bounded by the nearest deadline, and
    :meth:`stop` or a stream's :meth:`~ReaderStream.request_stop` wakes the thread at once.
    A stream whose URL goes through a proxy is an :class:`EventStream` on its own thread.
    """

    def __init__(self, name: str = "heartbeat-sync-streams") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._alive = False
        self._stopping = False
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        #: Streams whose start() or request_stop() the thread has yet to take.
        self._changed: list[ReaderStream] = []
        #: Streams held by the thread (reader's thread only, or under the lock without it).
        self._active: set[ReaderStream] = set()
        #: Streams with bytes already decrypted that the selector cannot see.
        self._again: set[ReaderStream] = set()
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple[int, tuple[str, int]]]]]
        self._addresses = {}
        self._contexts: dict[bool | str, ssl.SSLContext] = {}
        self._warn = RateLimitedLog(logger)
        #: Set by stop(): cuts short the pause after a failed turn.
        self._halt = threading.Event()

    @property
    def thread(self) -> threading.Thread | None:
        """The reader's thread, alive or not; None before :meth:`start`."""
        return self._thread

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def stream(
        self,
        client_factory: Callable[[], PlatformClient],
        workspace_id: str,
        on_hint: Callable[[], None],
        *,
        idle_timeout: float,
        draw: Callable[[], float],
        on_state: Callable[[str], None] | None = None,
        on_connect: Callable[[int], None] | None = None,
        canvas: bool = False,
        name: str = "heartbeat-sync-events",
    ) -> ReaderStream:
        """A workspace's stream held by this reader (not started): :class:`EventStream`'s
        arguments, the same meaning."""
        return ReaderStream(
            self,
            client_factory,
            workspace_id,
            on_hint,
            idle_timeout=idle_timeout,
            draw=draw,
            on_state=on_state,
            on_connect=on_connect,
            canvas=canvas,
            name=name,
        )

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._selector = selectors.DefaultSelector()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            self._stopping = False
            self._halt.clear()
            self._alive = True
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Close every stream and end the thread; True when it ended within ``timeout``."""
        with self._lock:
            thread = self._thread
            self._stopping = True
            self._halt.set()
            self._wake()
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        return not thread.is_alive()

    def _wake(self) -> None:
        """Have the thread look at its streams now. Caller holds the lock."""
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):  # full: it is awake already
                wake.send(b"\0")

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    changed, self._changed = self._changed, []
                now = time.monotonic()
                for stream in changed:
                    self._guarded(stream, stream._apply, now)
                try:
                    self._turn(selector)
                except Exception as exc:  # a bug of the reader itself: said, never fatal
                    self._warn.warning("reader", "event streams: %s", describe_error(exc))
                    logger.debug("event streams failed", exc_info=True)
                    self._halt.wait(0.1)
        finally:
            with self._lock:
                for stream in [*self._active, *self._changed]:
                    if stream._held:
                        stream._stopping = True
                        stream._finish()
                self._changed = []
                self._again.clear()
                for wake in (self._wake_r, self._wake_w):
                    if wake is not None:
                        wake.close()
                self._wake_r = self._wake_w = None
                selector.close()
                self._selector = None
                self._alive = False

    def _turn(self, selector: selectors.BaseSelector) -> None:
        """One wait on every socket, and what it brought."""
        now = time.monotonic()
        nearest = min((s._due() for s in self._active), default=now + MAX_WAIT)
        wait = 0.0 if self._again else min(MAX_WAIT, max(0.0, nearest - now))
        ready = selector.select(wait)
        again, self._again = self._again, set()
        for key, mask in ready:
            stream = key.data
            if stream is None:
                self._drain()
            elif isinstance(stream, ReaderStream):
                again.discard(stream)
                self._guarded(stream, stream._ready, mask)
        for stream in again:
            self._guarded(stream, stream._ready, selectors.EVENT_READ)
        now = time.monotonic()
        for stream in list(self._active):
            if stream._due() <= now:
                self._guarded(stream, stream._tick, now)

    def _drain(self) -> None:
        wake = self._wake_r
        if wake is None:
            return
        try:
            while wake.recv(4096):
                pass
        except OSError:
            pass

    def _guarded(self, stream: ReaderStream, work: Callable[[_T], None], argument: _T) -> None:
        """Run one stream's work in its workspace's log context; a failure costs that stream
        only."""
        with _logctx.workspace(stream.workspace_id):
            try:
                work(argument)
            except Exception as exc:
                stream._crashed(exc)

    def _resolve(self, host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
        """The host's addresses (family, address), cached: see the module's docstring."""
        now = time.monotonic()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            if not cached[1]:
                raise OSError("the lookup failed a moment ago")
            return list(cached[1])
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            self._addresses[(host, port)] = (now + RESOLVE_FAILURE_TTL, [])
            raise
        found = [(int(info[0]), (str(info[4][0]), int(info[4][1]))) for info in infos]
        if len(self._addresses) > 256:
            self._addresses.clear()
        self._addresses[(host, port)] = (now + RESOLVE_TTL, found)
        return list(found)

    def _context(self, verify: bool | str) -> ssl.SSLContext:
        """The TLS context of a ``verify`` setting, made once (loading a CA bundle is slow)."""
        context = self._contexts.get(verify)
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                # What a request would verify against: requests' own bundle (its
                # ``requests.certs.where()``) or the one the session names, not the system's.
                default = requests.utils.DEFAULT_CA_BUNDLE_PATH
                bundle = verify if isinstance(verify, str) else default
                if os.path.isdir(bundle):
                    context = ssl.create_default_context(capath=bundle)
                else:
                    context = ssl.create_default_context(cafile=bundle)
            self._contexts[verify] = context
        return context


if TYPE_CHECKING:
    # Both ways of holding a stream fit what a run asks for (checked by mypy, never run).
    _classic: StreamFactory = EventStream
    _shared: StreamFactory = StreamReader().stream
