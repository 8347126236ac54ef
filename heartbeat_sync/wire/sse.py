"""The event stream's format and meaning (pure): its Server-Sent Events parsed, and what each
event asks for.

The platform frames the stream as a ``: ping`` comment, then one
``data: {"type", "timestamp", "data"}`` line per event. :class:`SSEParser` reads that as it
arrives, in bounded memory; :func:`wants_poll` says which events may mean a new result, and
:func:`state_change` which announce a change of the workspace's state, and
:func:`credentials_rotated` which say its token was rotated.
:func:`is_event_stream` says whether an answer is a stream at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

#: Events that can mean a new result: a delegation that ended, an activity row written.
DELEGATION_EVENTS = frozenset({"DELEGATION_COMPLETE", "DELEGATION_FAILED"})
ACTIVITY_EVENT = "ACTIVITY_LOGGED"
#: Events that say the workspace's own state changed: it was paused, hibernated or removed, or
#: it is online again (a registration, or a beat that brought it back).
ONLINE_EVENT = "WORKSPACE_ONLINE"
STATE_EVENTS = frozenset(
    {"WORKSPACE_PAUSED", "WORKSPACE_HIBERNATED", "WORKSPACE_REMOVED", ONLINE_EVENT}
)
#: The workspace's token was rotated: the one the library holds is refused from now on.
CREDENTIALS_EVENT = "EXTERNAL_CREDENTIALS_ROTATED"

#: A line longer than this is not the platform's: it is skipped, never buffered whole.
MAX_LINE_BYTES = 1 << 20
#: An event whose ``data:`` lines add up to more than this (as received, field names included,
#: line endings not) is not the platform's either: it is dropped, and its further lines are read
#: past up to the blank line that ends it. The platform's events are one short line each.
MAX_EVENT_BYTES = 1 << 20
_NEWLINE = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its ``event:`` name (``message`` by default) and its data."""

    name: str
    data: str


class SSEParser:
    """Incremental Server-Sent Events parser (the WHATWG rules for what the client needs).

    Feed it bytes as they arrive; it returns the events completed so far. Lines end with
    ``\\n``, ``\\r\\n`` or ``\\r``; a line starting with ``:`` is a comment (the platform's
    ``: ping``); ``data:`` lines accumulate until a blank line dispatches the event. A line
    over ``max_line`` bytes is dropped (counted in :attr:`oversized`); an event whose ``data:``
    lines add up to more than ``max_event`` bytes is dropped whole (counted in
    :attr:`dropped_events`) and the rest of it, up to its blank line, is read past. So the
    parser never holds more than about ``max_line + max_event`` bytes, whatever it is fed.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES, max_event: int = MAX_EVENT_BYTES) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self.oversized = 0
        self.dropped_events = 0
        self.comments = 0
        self.events = 0
        self._buf = bytearray()
        self._skipping = False
        self._pending_cr = False
        self._data: list[str] = []
        self._size = 0  # the data lines' bytes held in _data
        self._dropping = False  # the pending event went over max_event
        self._name = ""

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        for line in self._lines(chunk):
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _lines(self, chunk: bytes) -> Iterator[bytes]:
        if self._pending_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the \n of a \r\n split across two chunks
        self._pending_cr = chunk[-1:] == b"\r"
        *complete, rest = _NEWLINE.split(chunk)
        for piece in complete:
            if self._skipping:
                self._skipping = False  # the end of an oversized line
            elif len(self._buf) + len(piece) <= self.max_line:
                yield bytes(self._buf) + piece if self._buf else piece
            else:
                self.oversized += 1
            self._buf.clear()
        if rest and not self._skipping:
            self._buf += rest
            if len(self._buf) > self.max_line:
                self.oversized += 1
                self._buf.clear()
                self._skipping = True

    def _line(self, raw: bytes) -> Event | None:
        if not raw:
            data, name = self._data, self._name
            self._data, self._name, self._size, self._dropping = [], "", 0, False
            if not data:
                return None
            self.events += 1
            return Event(name or "message", "\n".join(data))
        if raw[:1] == b":":
            self.comments += 1
            return None
        if self._dropping:
            return None  # the rest of an event over max_event: nothing of it is kept
        line = raw.decode("utf-8", "replace")
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._size += len(raw)
            if self._size > self.max_event:
                # Every line of it fits, but together they would grow without end.
                self.dropped_events += 1
                self._data, self._name, self._size, self._dropping = [], "", 0, True
                return None
            self._data.append(value)
        elif field == "event":
            self._name = value
        return None  # id and retry: the loop keeps its own backoff and never replays


def is_event_stream(content_type: str | None) -> bool:
    """True when a ``Content-Type`` names the media type ``text/event-stream``.

    Parameters (``; charset=utf-8``), case and surrounding spaces do not matter. Any other
    type, or none, is not a stream: a proxy's page or another route answering 200.
    """
    media_type = (content_type or "").split(";", 1)[0]
    return media_type.strip().lower() == "text/event-stream"


def wants_poll(event: Event, workspace_id: str, canvas: bool = False) -> bool:
    """True when the event may mean a new result (or message) for this workspace, so a poll
    is worth it.

    ``DELEGATION_COMPLETE`` and ``DELEGATION_FAILED`` always; ``ACTIVITY_LOGGED`` unless it is
    plainly a row the activity poll skips (another type, or from this workspace itself, or
    from the canvas unless ``canvas``: a message handler takes the canvas's messages too).
    Heartbeat, task and status events, and anything that is not a JSON object, never.
    """
    if "DELEGATION_" not in event.data and ACTIVITY_EVENT not in event.data:
        return False  # a beat's or a status event: most of what the stream carries
    try:
        payload = json.loads(event.data)
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict):
        return False
    kind = payload.get("type")
    if kind in DELEGATION_EVENTS:
        return True
    if kind != ACTIVITY_EVENT:
        return False
    data = payload.get("data")
    if not isinstance(data, dict):
        return True  # an unfamiliar shape: a poll costs little, a missed result much more
    activity_type = data.get("activity_type")
    if activity_type is not None and activity_type != "a2a_receive":
        return False
    if "source_id" in data:
        source = data.get("source_id")
        if source == workspace_id or (not source and not canvas):
            return False
    return True


def state_change(event: Event) -> str | None:
    """The event's type when it is one of :data:`STATE_EVENTS`, else None.

    The stream is the workspace's own, so the event is about this workspace. Beats' events
    (``WORKSPACE_HEARTBEAT``, most of what the stream carries) are passed over before any JSON
    is parsed.
    """
    if not any(kind in event.data for kind in STATE_EVENTS):
        return None
    try:
        payload = json.loads(event.data)
    except (ValueError, RecursionError):
        return None
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind if kind in STATE_EVENTS else None


def credentials_rotated(event: Event) -> bool:
    """True when the event says the workspace's token was rotated."""
    if CREDENTIALS_EVENT not in event.data:
        return False
    try:
        payload = json.loads(event.data)
    except (ValueError, RecursionError):
        return False
    return isinstance(payload, dict) and payload.get("type") == CREDENTIALS_EVENT
