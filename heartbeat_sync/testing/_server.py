"""The HTTP side of a FakePlatform: the server, its handler, and what happens to each request.

A request is read (its body up to 1 MiB), logged, matched against the injected faults, routed
with the platform lock held, and answered: in one write, as a huge streamed body, as an event
stream, or not at all (a dropped connection). :meth:`Serving.close` is bounded: it interrupts
every delay and cuts every open connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import _events
from ._faults import FILLER_PIECE, FaultTable, Trickle, write_filler
from ._model import RecordedRequest, Reply, encode_body, error, loads
from ._routes import classify, route
from ._state import State

_MAX_BODY = 1 << 20  # request bodies are read up to 1 MiB; the excess is discarded
_MAX_DRAIN = 64 * _MAX_BODY  # a larger excess is not read; the connection is closed instead


class _BodyError(Exception):
    pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], serving: Serving) -> None:
        self.serving = serving
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Never print tracebacks to stderr."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server_version = "FakePlatform/1.0"
    timeout = 60.0
    server: _Server

    def setup(self) -> None:
        # The connection's thread says whose it is (a thread dump, a test counting threads);
        # socketserver leaves it "Thread-N".
        threading.current_thread().name = f"FakePlatform:{self.server.server_address[1]} connection"
        super().setup()
        self.server.serving.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.serving.untrack(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except Exception:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer protocol-level errors with a JSON body too."""
        try:
            reason = message or HTTPStatus(code).phrase
        except ValueError:
            reason = "error"
        body = encode_body({"error": reason})
        self.close_connection = True
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass

    def _dispatch(self) -> None:
        self.server.serving.handle(self)

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch
    do_OPTIONS = _dispatch


def _read_body(handler: _Handler) -> tuple[bytes, bool]:
    """Read the request body; returns (body capped at 1 MiB, fully_consumed)."""
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        # Nothing that talks to the platform sends one; its bytes cannot be skipped either.
        raise _BodyError("chunked request bodies are not supported")
    raw = handler.headers.get("Content-Length")
    if raw is None:
        return b"", True
    raw = raw.strip()
    if not raw.isdigit():
        raise _BodyError("invalid Content-Length")
    length = int(raw)
    body = _read_exact(handler, min(length, _MAX_BODY))
    excess = length - len(body)
    if excess > _MAX_DRAIN:
        return body, False  # the connection is closed after the answer
    while excess > 0:  # discard the rest so that the client can read our answer
        chunk = handler.rfile.read(min(excess, FILLER_PIECE))
        if not chunk:
            raise _BodyError("truncated body")
        excess -= len(chunk)
    return body, True


def _read_exact(handler: _Handler, n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        chunk = handler.rfile.read(remaining)
        if not chunk:
            raise _BodyError("truncated body")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def _entry(handler: _Handler, body: bytes) -> RecordedRequest:
    """The log entry of a request: route, workspace (from the path or the registry body)."""
    split = urlsplit(handler.path)
    path = split.path or "/"
    headers: dict[str, str] = {}
    for name, value in handler.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    route_name, ws_id = classify(handler.command, path)
    if route_name in ("heartbeat", "register"):
        try:
            parsed = loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            body_id = parsed.get("workspace_id" if route_name == "heartbeat" else "id")
            ws_id = body_id if isinstance(body_id, str) else None
    return RecordedRequest(
        method=handler.command,
        path=path,
        query=parse_qs(split.query, keep_blank_values=True),
        headers=headers,
        body=body,
        route=route_name,
        workspace_id=ws_id,
        time=time.monotonic(),
    )


def shutdown_socket(conn: socket.socket) -> None:
    """Cut a connection both ways (the handler thread then sees it closed)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class Serving:
    """One run of the server, from :meth:`FakePlatform.start` to :meth:`FakePlatform.stop`."""

    def __init__(self, host: str, port: int, state: State, faults: FaultTable) -> None:
        self._state = state
        self._faults = faults
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server = _Server((host, port), self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakePlatform:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving: interrupt delays, cut every connection, close the socket, join."""
        with self._state.lock:
            self._stop.set()
            conns = list(self._conns)
            self._state.hub.close_all()
            self._state.changed()
        for conn in conns:
            shutdown_socket(conn)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=1.0)

    def track(self, conn: socket.socket) -> None:
        """Remember an open connection (one accepted while stopping is cut at once)."""
        with self._state.lock:
            self._conns.add(conn)
            stopping = self._stop.is_set()
        if stopping:
            shutdown_socket(conn)

    def untrack(self, conn: socket.socket) -> None:
        """Forget a closed connection."""
        with self._state.lock:
            self._conns.discard(conn)

    def handle(self, handler: _Handler) -> None:
        """Read, log, fault, route and answer one request; never raises."""
        stop_event = self._stop
        entry: RecordedRequest | None = None
        try:
            try:
                body, consumed = _read_body(handler)
            except _BodyError as exc:
                self._send(handler, None, error(400, str(exc)), close=True)
                return
            if not consumed:
                handler.close_connection = True
            entry = _entry(handler, body)
            self._state.record(entry)
            if stop_event.is_set():
                self._drop(handler, entry)
                return
            limited, retry_after = self._state.limiter.take(
                entry.headers, str(handler.client_address[0])
            )
            if retry_after is not None:
                refused = error(429, "rate limit exceeded", retry_after=retry_after)
                refused.headers = {**refused.headers, **limited}
                self._send(handler, entry, refused)
                return
            fault = self._faults.take(entry.route, entry.workspace_id)
            extra_headers: dict[str, str] = dict(limited)
            if fault is not None and fault.trickle > 0:
                handler.wfile = Trickle(handler.wfile, fault.trickle, stop_event)
            if fault is not None:
                if fault.delay > 0 and stop_event.wait(fault.delay):
                    self._drop(handler, entry)
                    return
                if fault.drop:
                    self._drop(handler, entry, faulted=True)
                    return
                if fault.answers():
                    self._send(handler, entry, fault.reply(), faulted=True)
                    return
                extra_headers = {**extra_headers, **fault.headers}
            with self._state.lock:
                reply = route(self._state, entry)
            if reply.delay > 0 and stop_event.wait(reply.delay):
                self._drop(handler, entry)
                return
            reply.headers = {**reply.headers, **extra_headers}
            if reply.events is not None:
                self._serve_events(handler, entry, reply.events, reply.headers)
                return
            self._send(handler, entry, reply)
        except Exception:
            handler.close_connection = True
            if entry is not None and entry.status is None:
                with contextlib.suppress(Exception):
                    self._send(handler, entry, error(500, "internal error"))

    def _drop(self, handler: _Handler, entry: RecordedRequest, *, faulted: bool = False) -> None:
        self._state.answered(entry, None, faulted=faulted)
        handler.close_connection = True
        shutdown_socket(handler.connection)

    def _serve_events(
        self,
        handler: _Handler,
        entry: RecordedRequest,
        sub: _events.Subscriber,
        extra_headers: dict[str, str],
    ) -> None:
        state = self._state
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
        # A header fault replaces the stream's own headers; the chunked framing stays.
        for name, value in extra_headers.items():
            if name.lower() in ("transfer-encoding", "content-length"):
                continue
            for own in [k for k in headers if k.lower() == name.lower()]:
                del headers[own]
            headers[name] = value
        state.answered(entry, 200, faulted=False)
        handler.close_connection = True

        def write(data: bytes) -> None:
            handler.wfile.write(data)
            handler.wfile.flush()

        def sent(n: int) -> None:
            with state.hub.lock:
                state.hub.bytes_sent += n

        try:
            handler.send_response(200)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            handler.wfile.flush()
            _events.serve(write, sub, self._stop, state.hub.lock, sent)
        except OSError:
            pass
        finally:
            state.hub.unsubscribe(sub)
            with state.lock:
                state.changed()
            # Dropped or stopped: the connection ends without the closing chunk, as a cut
            # connection would.
            shutdown_socket(handler.connection)

    def _send(
        self,
        handler: _Handler,
        entry: RecordedRequest | None,
        reply: Reply,
        *,
        faulted: bool = False,
        close: bool = False,
    ) -> None:
        with self._state.lock:
            if reply.commit is not None:
                reply.commit()
            if entry is not None:
                self._state.answered(entry, reply.status, faulted=faulted)
            else:
                self._state.changed()
        lower = {k.lower() for k in reply.headers}
        size = reply.stream_size if reply.stream_size is not None else len(reply.body)
        if close:
            handler.close_connection = True
        try:
            handler.send_response(reply.status)
            if "content-type" not in lower and not reply.bare:
                handler.send_header("Content-Type", "application/json")
            if "content-length" not in lower:
                handler.send_header("Content-Length", str(size))
            else:
                handler.close_connection = True
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            if handler.close_connection and "connection" not in lower:
                handler.send_header("Connection", "close")
            handler.end_headers()
            if handler.command == "HEAD":
                return
            if reply.stream_size is None:
                handler.wfile.write(reply.body)
            elif not write_filler(handler.wfile.write, reply.stream_size, self._stop):
                handler.close_connection = True
                shutdown_socket(handler.connection)
                return
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True
