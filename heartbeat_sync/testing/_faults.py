"""Injected failures: per-route statuses, headers, delays, garbage and huge bodies, drops, trickles.

A :class:`FaultTable` holds the faults in the order they were added; the server takes the first
that matches each request (see :meth:`FakePlatform.fault` for what each field does).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ._model import MISSING, ROUTES, Reply, encode_body

#: A huge body is written in pieces of this size, never buffered whole.
FILLER_PIECE = 64 * 1024


@dataclass
class Fault:
    """One injected failure (validated by :func:`make_fault`)."""

    route: str
    status: int | None
    headers: dict[str, str]
    body: object
    body_size: int | None
    delay: float
    drop: bool
    remaining: int | None
    workspace_id: str | None
    trickle: float = 0.0

    def answers(self) -> bool:
        """True when the fault replaces the answer (else it only delays, adds headers, drops)."""
        return self.status is not None or self.body is not MISSING or self.body_size is not None

    def reply(self) -> Reply:
        """The answer this fault gives instead of the route's."""
        status = self.status if self.status is not None else 200
        if self.body_size is not None:
            return Reply(status=status, headers=dict(self.headers), stream_size=self.body_size)
        body = {"error": "injected fault"} if self.body is MISSING else self.body
        return Reply(status=status, body=encode_body(body), headers=dict(self.headers))


def make_fault(
    route: str,
    *,
    status: int | None,
    headers: dict[str, str] | None,
    body: object,
    body_size: int | None,
    delay: float,
    drop: bool,
    times: int | None,
    workspace_id: str | None,
    trickle: float,
) -> Fault:
    """A :class:`Fault`; ``ValueError`` naming the first argument that is out of range."""
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
    if status is not None and not 100 <= status <= 599:
        raise ValueError("status must be in 100..599")
    if body_size is not None and body_size < 0:
        raise ValueError("body_size must be >= 0")
    if delay < 0:
        raise ValueError("delay must be >= 0")
    if trickle < 0:
        raise ValueError("trickle must be >= 0")
    if times is not None and times < 1:
        raise ValueError("times must be >= 1 or None")
    return Fault(
        route=route,
        status=status,
        headers=dict(headers or {}),
        body=body,
        body_size=body_size,
        delay=float(delay),
        drop=drop,
        remaining=times,
        workspace_id=workspace_id,
        trickle=float(trickle),
    )


class FaultTable:
    """The faults in force, in the order they were added; guarded by the platform's lock."""

    def __init__(self, lock: threading.RLock, changed: Callable[[], None]) -> None:
        self._lock = lock
        self._changed = changed
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Put ``fault`` after the ones already in force."""
        with self._lock:
            self._faults.append(fault)
            self._changed()

    def clear(self, route: str | None = None) -> None:
        """Remove all faults, or only those of ``route``."""
        with self._lock:
            if route is None:
                self._faults = []
            else:
                self._faults = [f for f in self._faults if f.route != route]
            self._changed()

    def take(self, route: str, workspace_id: str | None) -> Fault | None:
        """The first fault matching the request, counting it against its ``times``."""
        with self._lock:
            for fault in self._faults:
                if fault.route != route:
                    continue
                if fault.workspace_id is not None and fault.workspace_id != workspace_id:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
            return None


def write_filler(write: Callable[[bytes], object], size: int, stop_event: threading.Event) -> bool:
    """Write ``size`` bytes of ``[0,0,0,...`` (an unterminated JSON array) in pieces.

    Returns False when the platform began stopping before the last piece.
    """
    piece = b"0," * (FILLER_PIECE // 2)
    remaining = size
    if remaining > 0:
        write(b"[")
        remaining -= 1
    while remaining > 0:
        if stop_event.is_set():
            return False
        part = piece if remaining >= len(piece) else piece[:remaining]
        write(part)
        remaining -= len(part)
    return True


class Trickle(io.BufferedIOBase):
    """A response writer that sends one byte every ``gap`` seconds (a trickling server)."""

    def __init__(self, raw: io.BufferedIOBase, gap: float, stop_event: threading.Event) -> None:
        super().__init__()
        self._raw = raw
        self._gap = gap
        self._stop = stop_event

    def writable(self) -> bool:
        """Always: this is a writer."""
        return True

    def write(self, buffer: Any) -> int:
        """Send ``buffer`` a byte at a time; ``OSError`` once the platform stops."""
        data = bytes(buffer)
        for i in range(len(data)):
            if self._stop.wait(self._gap):
                raise OSError("the platform is stopping")
            self._raw.write(data[i : i + 1])
            self._raw.flush()
        return len(data)

    def flush(self) -> None:
        """Flush the connection's writer."""
        self._raw.flush()
