"""A FakePlatform in a process of its own, driven over a pipe.

The benchmarks measure the client's CPU, so the server must not share its process: the
platform runs in a child started with ``spawn`` and this module's :class:`RemotePlatform` sends
it one command at a time. ``time.monotonic()`` is ``CLOCK_MONOTONIC`` on Linux, shared by all
processes, so times the server records compare directly with the client's.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socketserver
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

__all__ = ["RemotePlatform"]


def _serve(conn: Connection, generation: str) -> None:
    # A fleet opens hundreds of connections at once; the standard library's listen backlog of
    # 5 would drop SYNs and delay beats by the kernel's 1 s SYN retry, an artefact of the fake.
    socketserver.TCPServer.request_queue_size = 1024

    from heartbeat_sync.testing import FakePlatform

    fp = FakePlatform(generation=generation)
    fp.start()

    def add_workspaces(count: int, **options: Any) -> list[tuple[str, str]]:
        out = []
        for _ in range(count):
            ws = fp.add_workspace(name="bench", **options)
            assert ws.token
            out.append((ws.id, ws.token))
        return out

    def complete(workspace_id: str, delegation_id: str) -> float:
        fp.set_delegation(workspace_id, delegation_id, status="completed", response_preview="ok")
        return time.monotonic()

    def times(route: str, workspace_id: str | None = None) -> list[float]:
        return [r.time for r in fp.requests_for(route, workspace_id)]

    def last_body(route: str, workspace_id: str | None = None) -> bytes:
        return fp.requests_for(route, workspace_id)[-1].body

    def bodies(route: str, workspace_id: str | None = None) -> list[tuple[float, bytes]]:
        return [(r.time, r.body) for r in fp.requests_for(route, workspace_id)]

    def first_times(route: str) -> dict[str, float]:
        first: dict[str, float] = {}
        for r in fp.requests_for(route):
            if r.workspace_id is not None:
                first.setdefault(r.workspace_id, r.time)
        return first

    def log(workspace_id: str) -> list[tuple[str, float]]:
        return [(r.route, r.time) for r in fp.requests if r.workspace_id == workspace_id]

    commands: dict[str, Callable[..., Any]] = {
        "url": lambda: fp.url,
        "add_workspaces": add_workspaces,
        "add_delegation": fp.add_delegation,
        "complete": complete,
        "add_activity": fp.add_activity,
        "queue_poll_message": fp.queue_poll_message,
        "fault": fp.fault,
        "times": times,
        "count": lambda route, ws=None: len(fp.requests_for(route, ws)),
        "last_body": last_body,
        "bodies": bodies,
        "clear_requests": fp.clear_requests,
        "first_times": first_times,
        "open_streams": fp.open_streams,
        "drop_streams": fp.drop_streams,
        "stall_streams": fp.stall_streams,
        "log": log,
        "event_bytes_sent": lambda: fp.event_bytes_sent,
        "cpu": time.process_time,
    }
    try:
        while True:
            try:
                name, args, kwargs = conn.recv()
            except EOFError:
                return
            if name == "stop":
                conn.send((True, None))
                return
            try:
                conn.send((True, commands[name](*args, **kwargs)))
            except Exception as exc:
                conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        fp.stop()


class RemotePlatform:
    """A :class:`heartbeat_sync.testing.FakePlatform` running in a child process."""

    def __init__(self, generation: str = "MAY") -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child, generation), name="fake-platform", daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent
        self._lock = threading.Lock()
        self.url: str = self.call("url")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((name, args, kwargs))
            ok, value = self._conn.recv()
        if not ok:
            raise RuntimeError(f"platform {name}: {value}")
        return value

    def add_workspaces(self, count: int, **options: Any) -> list[tuple[str, str]]:
        """``count`` new workspaces with a live token each: ``[(id, token), ...]``. ``options``
        go to ``FakePlatform.add_workspace`` (``delivery_mode="poll"``, say)."""
        return list(self.call("add_workspaces", count, **options))

    def add_workspace(self, **options: Any) -> tuple[str, str]:
        return self.add_workspaces(1, **options)[0]

    def add_delegation(self, workspace_id: str, **kwargs: Any) -> str:
        return str(self.call("add_delegation", workspace_id, **kwargs))

    def complete(self, workspace_id: str, delegation_id: str) -> float:
        """Turn a delegation completed; the server's monotonic time just after the change."""
        return float(self.call("complete", workspace_id, delegation_id))

    def add_activity(self, workspace_id: str, **kwargs: Any) -> str:
        return str(self.call("add_activity", workspace_id, **kwargs))

    def queue_poll_message(self, workspace_id: str, text: str, sender_id: str | None = None) -> str:
        """A message to a poll-mode workspace (a canvas user's, or ``sender_id``'s); its row
        id. Take the send time before the call: the client may have it before this returns."""
        return str(self.call("queue_poll_message", workspace_id, text, sender_id=sender_id))

    def fault(self, route: str, **kwargs: Any) -> None:
        self.call("fault", route, **kwargs)

    def times(self, route: str, workspace_id: str | None = None) -> list[float]:
        """Server-side arrival times (monotonic) of the logged requests of ``route``."""
        return list(self.call("times", route, workspace_id))

    def count(self, route: str, workspace_id: str | None = None) -> int:
        return int(self.call("count", route, workspace_id))

    def last_body(self, route: str, workspace_id: str | None = None) -> bytes:
        return bytes(self.call("last_body", route, workspace_id))

    def bodies(self, route: str, workspace_id: str | None = None) -> list[tuple[float, bytes]]:
        """Arrival time (monotonic) and body of every logged request of ``route``."""
        return [(float(t), bytes(b)) for t, b in self.call("bodies", route, workspace_id)]

    def clear_requests(self) -> None:
        self.call("clear_requests")

    def first_times(self, route: str) -> dict[str, float]:
        """Per workspace, the arrival time of its first logged request of ``route``."""
        return dict(self.call("first_times", route))

    def open_streams(self, workspace_id: str | None = None) -> int:
        return int(self.call("open_streams", workspace_id))

    def drop_streams(self, workspace_id: str | None = None) -> int:
        return int(self.call("drop_streams", workspace_id))

    def stall_streams(self, stalled: bool = True, workspace_id: str | None = None) -> None:
        """Make the open streams (of one workspace, or all and those opened from now on)
        silent: connected, carrying nothing, every event lost (``stalled=False`` ends it)."""
        self.call("stall_streams", stalled, workspace_id)

    def log(self, workspace_id: str) -> list[tuple[str, float]]:
        """Route and arrival time (monotonic) of every logged request about the workspace."""
        return [(str(r), float(t)) for r, t in self.call("log", workspace_id)]

    def cpu(self) -> float:
        """The server process's CPU seconds (user + sys)."""
        return float(self.call("cpu"))

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, EOFError):
                self.call("stop")
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5.0)
        self._conn.close()

    def __enter__(self) -> RemotePlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
