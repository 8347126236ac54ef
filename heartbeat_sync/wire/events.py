"""The event stream: a third thread that turns the platform's events into immediate polls.

The platform says the moment something happens on ``GET /workspaces/:id/events/stream``
(Server-Sent Events: a ``: ping`` comment, then one ``data: {"type", "timestamp", "data"}`` line
per event, nothing while idle). A delegation that completes or fails, or an activity row written
for the workspace, asks the beat thread for a poll at once; a pause, hibernation, removal or
registration of the workspace asks it to check the workspace's state. Events are hints, never
data: the server drops them for slow subscribers and an event exists only on the replica that
produced it, so the polls and the state checks stay the only source of truth and still run on
their schedule. A lost event, a dropped stream or a server without the route costs latency,
never a result.

The stream's format and what its events mean are in ``sse`` (pure); the waits between
attempts are pure too (:func:`reconnect_delay`). The thread (:class:`EventStream`) only
connects, reads, and waits.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Literal

from .. import _logctx
from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from .._status import StreamStatus
from .body import read_as_it_arrives
from .client import PlatformClient, PlatformError, describe_error
from .sse import SSEParser, credentials_rotated, is_event_stream, state_change, wants_poll

logger = get_logger(__name__)

#: Values of ``$HEARTBEAT_SYNC_EVENTS`` (``_config.ENV_EVENTS``) that turn the stream off.
_OFF = frozenset({"0", "false", "no", "off"})

#: Reconnect waits: exponential from BACKOFF_BASE, capped, with full jitter.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 60.0
#: A server without the route (404, 405, 501, or a 200 that is not ``text/event-stream``) is
#: asked again this rarely.
NO_ROUTE_RETRY = 300.0
_NO_ROUTE = frozenset({404, 405, 501})
#: A stream that said something and stayed up this long was healthy: after it drops, the
#: next attempt comes within RECONNECT_SPREAD. One that fails sooner backs off further each time.
HEALTHY_AFTER = 1.0
#: After a healthy stream drops, the next attempt comes at a moment drawn evenly from this many
#: seconds: a platform redeploy drops a whole fleet's streams at once, and they must not all come
#: back in the same half second. A few seconds without the stream cost no result (the polls keep
#: their schedule); an event in them is delivered with the next poll.
RECONNECT_SPREAD = 5.0


def events_enabled(argument: bool, environ_value: str | None) -> bool:
    """The stream is on when the argument says so and the environment does not turn it off."""
    if not argument:
        return False
    return (environ_value or "").strip().lower() not in _OFF


#: How an attempt at the stream ended: "healthy" (it said something and stayed up a while),
#: "no-route" (a server without the stream), or "failed" (anything else).
Outcome = Literal["healthy", "no-route", "failed"]


def backoff_delay(attempt: int, draw: float, cap: float = BACKOFF_CAP) -> float:
    """Seconds before reconnect attempt ``attempt`` (0 first): full jitter over an exponential.

    ``draw`` is a random number in [0, 1); a fleet whose streams dropped together (a platform
    redeploy) then comes back spread out instead of all at once.
    """
    ceiling = min(cap, BACKOFF_BASE * 2.0 ** min(max(attempt, 0), 30))
    return min(1.0, max(0.0, draw)) * ceiling


def reconnect_delay(outcome: Outcome, attempt: int, draw: float) -> float:
    """Seconds to wait before the next attempt at the stream, after one that ended so.

    ``attempt`` counts the failed attempts in a row before this one (0 after a healthy
    stream); ``draw`` is a random number in [0, 1). After a healthy stream the next attempt
    comes within :data:`RECONNECT_SPREAD`, uniformly spread; after a failed one, see
    :func:`backoff_delay`; a server without the stream is asked again after half to all of
    :data:`NO_ROUTE_RETRY`.
    """
    if outcome == "healthy":
        return min(1.0, max(0.0, draw)) * RECONNECT_SPREAD
    if outcome == "no-route":
        return NO_ROUTE_RETRY * (0.5 + 0.5 * min(1.0, max(0.0, draw)))
    return backoff_delay(attempt, draw)


class EventStream:
    """Holds the event stream open on its own daemon thread and its own session.

    ``on_hint`` is called (from this thread) for every event that :func:`wants_poll`,
    ``on_state`` with the type of every event that announces a :func:`state_change`, and
    ``on_connect`` with the count of streams opened so far each time one opens (the events
    sent meanwhile are lost); the caller coalesces. With ``canvas``, a row from the canvas
    asks for a poll too (a message handler takes it). ``idle_timeout`` is how long a connection
    may stay silent before it is replaced: the platform sends a ``WORKSPACE_HEARTBEAT`` for
    every beat, so a live stream is never silent for long, and a silent one may be a dead
    connection.
    """

    def __init__(
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
    ) -> None:
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
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client: PlatformClient | None = None
        self._thread: threading.Thread | None = None
        self._said_no_route = False
        self._said_unreachable = False
        #: Streams opened (status 200), events read, polls and state checks asked for.
        self.connects = 0
        self.events = 0
        self.hints = 0
        self.state_hints = 0
        #: Pieces of the streams read (each is what had arrived when it was read).
        self.reads = 0
        #: The status of the last refused attempt (404 for a server without the route, 200
        #: for an answer that is not an event stream).
        self.last_refusal: int | None = None
        self._connected = False

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            thread = _logctx.thread(self._run, self.name)
            self._thread = thread
            thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end and cut its connection; returns at once."""
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None:
            client.abort()

    def stop(self, timeout: float) -> bool:
        """End the thread; True when it ended within ``timeout`` seconds."""
        self.request_stop()
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
        return not thread.is_alive()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        """The stream's thread, alive or not; None before :meth:`start`."""
        return self._thread

    def status(self) -> StreamStatus:
        """The stream's counters, for ``Heartbeat.status()``."""
        return StreamStatus(
            connected=self._connected,
            connects=self.connects,
            events=self.events,
            polls_asked=self.hints,
            state_checks_asked=self.state_hints,
            last_refusal=self.last_refusal,
        )

    def _run(self) -> None:
        client = self._client_factory()
        with self._lock:
            self._client = client
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    # The session is made before the stop flag is read, so that a stop() that
                    # comes later finds it to abort. It is kept across reconnects: a stream's
                    # connection is closed unread, never pooled, so each attempt opens anew.
                    client.session  # noqa: B018
                    if self._stop.is_set():
                        return
                    outcome: Outcome = self._attempt(client)
                except Exception as exc:  # a bug must not end the thread: back off, go on
                    self._warn.warning("stream", "event stream failed: %s", describe_error(exc))
                    outcome = "failed"
                if self._stop.is_set():
                    return
                if outcome == "healthy":
                    attempt = 0
                delay = reconnect_delay(outcome, attempt, self._draw())
                if outcome == "failed":
                    attempt += 1
                self._stop.wait(delay)
        finally:
            client.close()

    def _attempt(self, client: PlatformClient) -> Outcome:
        """One connection: "healthy" (it stayed up a while), "no-route" (refused as by a server
        without the route, or answered with something else than an event stream), or
        "failed"."""
        try:
            try:
                resp = client.event_stream(self.idle_timeout)
            except PlatformError as exc:
                if exc.status != 401 or self._stop.is_set():
                    raise
                # The heartbeat's rule: re-read the token from disk and try once more.
                client.credentials.refresh()
                resp = client.event_stream(self.idle_timeout)
        except PlatformError as exc:
            if self._stop.is_set():
                return "failed"
            self.last_refusal = exc.status
            if exc.status in _NO_ROUTE:
                return self._no_route(str(exc))
            if exc.tenant_required:
                # The beat thread says it once, as an ERROR; only a setting can fix it, so the
                # stream asks again as rarely as a server without the route.
                logger.debug("event stream could not be opened: %s", exc)
                return "no-route"
            if exc.connect_error:
                # The platform cannot be reached: the beat thread warns about that outage
                # already, and the stream only costs latency. Said once, at INFO.
                level = logging.DEBUG if self._said_unreachable else logging.INFO
                self._said_unreachable = True
                logger.log(level, "event stream could not be opened: %s", exc)
                return "failed"
            self._warn.warning("stream", "event stream could not be opened: %s", exc)
            return "failed"
        if self._stop.is_set():
            resp.close()
            return "failed"
        content_type = resp.headers.get("Content-Type")
        if not is_event_stream(content_type):
            # A 200 that is not a stream (a proxy's page, a server that routes the path
            # elsewhere) would end at once every time: it is a server without the route.
            resp.close()
            self.last_refusal = resp.status_code
            shown = (content_type or "none")[:100]
            return self._no_route(f"it answered {resp.status_code} with Content-Type {shown!r}")
        self._said_no_route = False
        self._said_unreachable = False
        self.connects += 1
        return self._read(resp, client)

    def _no_route(self, reason: str) -> Outcome:
        # Not a fault: an older or trimmed server, or something in front of it that does not
        # pass the stream on. Said once, at INFO.
        level = logging.DEBUG if self._said_no_route else logging.INFO
        self._said_no_route = True
        logger.log(
            level, "the platform has no event stream (%s); results come on the schedule", reason
        )
        return "no-route"

    def _read(self, resp: Any, client: PlatformClient) -> Outcome:
        self._connected = True
        if self._on_connect is not None:
            # Events sent while no stream was open are lost: whoever relies on them looks now.
            self._on_connect(self.connects)
        try:
            return self._read_events(resp, client)
        finally:
            self._connected = False

    def _read_events(self, resp: Any, client: PlatformClient) -> Outcome:
        opened = time.monotonic()
        parser = SSEParser()
        dropped = 0
        try:
            for chunk in read_as_it_arrives(resp):
                self.reads += 1
                for event in parser.feed(chunk):
                    self.events += 1
                    if wants_poll(event, self.workspace_id, self._canvas):
                        self.hints += 1
                        self._on_hint()
                    elif credentials_rotated(event):
                        # Every thread's next request reads the token again, at once: the
                        # one held is refused from now on.
                        client.credentials.invalidate()
                    elif self._on_state is not None:
                        kind = state_change(event)
                        if kind is not None:
                            self.state_hints += 1
                            self._on_state(kind)
                if parser.oversized + parser.dropped_events != dropped:
                    dropped = parser.oversized + parser.dropped_events
                    self._warn.warning(
                        "oversized",
                        "event stream: a line or an event over %d bytes was dropped",
                        max(parser.max_line, parser.max_event),
                    )
                if self._stop.is_set():
                    return "failed"
            reason = "closed by the platform"
        except Exception as exc:  # a drop, a read timeout, an abort by stop()
            reason = f"{type(exc).__name__}"
        finally:
            resp.close()
        if self._stop.is_set():
            return "failed"
        spoke = parser.comments > 0 or parser.events > 0
        healthy = spoke and time.monotonic() - opened >= HEALTHY_AFTER
        if healthy:
            self._warn.reset("stream")
            logger.debug("event stream ended (%s); reconnecting", reason)
            return "healthy"
        self._warn.warning("stream", "event stream ended at once (%s)", reason)
        return "failed"
