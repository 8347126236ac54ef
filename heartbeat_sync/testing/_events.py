"""The event stream of :class:`heartbeat_sync.testing.FakePlatform` (standard library only).

``GET /workspaces/:id/events/stream`` is served the way the real server frames it: a chunked
``text/event-stream`` that starts with the comment ``: ping`` and then carries one
``data: {"type", "timestamp", "data"}`` line per event, nothing while idle, no replay. The hub
below keeps the open streams per workspace; tests can drop them, stall them, or (through the
platform's ``fault("events", ...)``) refuse or hang the request.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import Any, Callable

#: Events a subscriber may hold before it is dropped (the real server drops slow subscribers).
MAX_BACKLOG = 256


class Subscriber:
    """One open stream: a bounded queue of frames and the flags the hub sets."""

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self.frames: collections.deque[bytes] = collections.deque()
        self.ready = threading.Event()
        self.closed = False
        self.stalled = False

    def push(self, frame: bytes) -> None:
        if self.stalled or self.closed:
            return
        if len(self.frames) >= MAX_BACKLOG:
            self.closed = True  # too slow: dropped, as the real server does
        else:
            self.frames.append(frame)
        self.ready.set()


class EventHub:
    """The open streams of a FakePlatform, and what tests can do to them.

    ``lock`` is the hub's own: it guards the subscribers and ``bytes_sent``, and is never held
    while the platform's lock is taken (the platform may hold its lock and then take this one).
    """

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self._subs: list[Subscriber] = []
        self._stall_new = False
        self.bytes_sent = 0

    def subscribe(self, workspace_id: str) -> Subscriber:
        with self.lock:
            sub = Subscriber(workspace_id)
            sub.stalled = self._stall_new
            self._subs.append(sub)
            return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self.lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def emit(self, workspace_id: str, kind: str, data: dict[str, Any]) -> None:
        frame = encode_event(kind, data)
        self.emit_raw(workspace_id, frame)

    def emit_raw(self, workspace_id: str, frame: bytes) -> None:
        with self.lock:
            for sub in self._subs:
                if sub.workspace_id == workspace_id:
                    sub.push(frame)

    def count(self, workspace_id: str | None = None) -> int:
        with self.lock:
            return sum(
                1
                for s in self._subs
                if not s.closed and (workspace_id is None or s.workspace_id == workspace_id)
            )

    def drop(self, workspace_id: str | None = None) -> int:
        with self.lock:
            hit = [s for s in self._subs if workspace_id is None or s.workspace_id == workspace_id]
            for sub in hit:
                sub.closed = True
                sub.ready.set()
            return len(hit)

    def stall(self, stalled: bool, workspace_id: str | None = None) -> None:
        with self.lock:
            if workspace_id is None:
                self._stall_new = stalled
            for sub in self._subs:
                if workspace_id is None or sub.workspace_id == workspace_id:
                    sub.stalled = stalled
                    if stalled:
                        sub.frames.clear()

    def close_all(self) -> None:
        self.drop(None)


def encode_event(kind: str, data: dict[str, Any]) -> bytes:
    """One event as the real server frames it (``timestamp`` in Unix milliseconds)."""
    payload = {"type": kind, "timestamp": int(time.time() * 1000), "data": data}
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {body}\n\n".encode()


def serve(
    write: Callable[[bytes], None],
    sub: Subscriber,
    stop_event: threading.Event,
    lock: threading.RLock,
    sent: Callable[[int], None],
) -> None:
    """Write the stream's chunks until the subscriber is dropped or the platform stops.

    ``write`` sends raw bytes on the connection; each frame goes out as one HTTP chunk.
    """

    def chunk(data: bytes) -> None:
        write(b"%x\r\n%s\r\n" % (len(data), data))
        sent(len(data))

    if not sub.stalled:
        chunk(b": ping\n\n")
    while not stop_event.is_set():
        sub.ready.wait(0.05)
        with lock:
            sub.ready.clear()
            if sub.closed:
                return
            frames = list(sub.frames)
            sub.frames.clear()
        for frame in frames:
            chunk(frame)
