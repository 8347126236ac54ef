"""Pure: activity rows into the messages a handler receives.

A message to the workspace, from a user on the canvas or from a peer workspace, is an
``a2a_receive`` row of its activity: ``source_id`` null for the canvas, the peer's id for a
peer; the A2A request in ``request_body`` (``params.message.parts``: text parts with ``kind`` or
the legacy ``type`` of ``"text"``, file parts with metadata). The workspace's own rows are not
messages to it: its notifications (``method: "notify"``, ``source_id`` null) and its own
self-messages (``source_id`` itself). Nothing here does I/O or keeps state.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from .rows import created_ns, message_key, seq_of, valid_id

__all__ = [
    "CANVAS",
    "MAX_PARTS",
    "MAX_TEXT",
    "PEER",
    "InboundMessage",
    "MessageRow",
    "message_row",
    "skipped_row",
]

CANVAS = "canvas"
PEER = "peer"
#: The text a message carries at most (the rest is cut, and the message marked ``truncated``).
MAX_TEXT = 1 << 20
#: The parts a message carries at most, as sent (the rest is left out, and marked).
MAX_PARTS = 100
#: A part kept as sent is at most this big (measured as its text, or its repr): beyond, the
#: part is replaced by its kind alone and the message marked ``truncated``.
_MAX_PART = 64 * 1024


@dataclass(frozen=True)
class MessageRow:
    """What a handler is told of one message, read off its activity row (no reply yet)."""

    id: str
    seq: int | None
    source: str
    source_id: str | None
    peer_name: str | None
    peer_role: str | None
    text: str
    parts: tuple[Any, ...]
    attachments: tuple[Mapping[str, Any], ...]
    received_at: datetime.datetime | None
    message_id: str | None
    key: str | None
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON object that :meth:`from_json` turns back into the same row (for the hand-off
        log, which offers it again after a crash)."""
        return {
            "id": self.id,
            "seq": self.seq,
            "source": self.source,
            "source_id": self.source_id,
            "peer_name": self.peer_name,
            "peer_role": self.peer_role,
            "text": self.text,
            "parts": list(self.parts),
            "attachments": [dict(a) for a in self.attachments],
            "received_at": None if self.received_at is None else self.received_at.isoformat(),
            "message_id": self.message_id,
            "key": self.key,
            "truncated": self.truncated,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MessageRow | None:
        """The row :meth:`to_json` wrote, or None when ``data`` is not one."""
        try:
            row_id = data["id"]
            source = data["source"]
            if not valid_id(row_id) or source not in (CANVAS, PEER):
                return None
            received = data.get("received_at")
            return cls(
                id=row_id,
                seq=data.get("seq") if type(data.get("seq")) is int else None,
                source=source,
                source_id=_str_or_none(data.get("source_id")),
                peer_name=_str_or_none(data.get("peer_name")),
                peer_role=_str_or_none(data.get("peer_role")),
                text=str(data.get("text") or ""),
                parts=tuple(data.get("parts") or ()),
                attachments=tuple(a for a in data.get("attachments") or () if isinstance(a, dict)),
                received_at=(
                    datetime.datetime.fromisoformat(received) if isinstance(received, str) else None
                ),
                message_id=_str_or_none(data.get("message_id")),
                key=_str_or_none(data.get("key")),
                truncated=bool(data.get("truncated")),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class InboundMessage:
    """A message to the workspace, as its handler receives it.

    Attributes:
        id: The activity row's id (unique; the hand-off is recorded under it).
        seq: The row's ``seq`` where the platform sends one (August 2026 and later), else None.
        source: ``"canvas"`` (a user on the canvas) or ``"peer"`` (another workspace).
        source_id: The peer's workspace id; None for a canvas user.
        peer_name: The peer's name, where the platform gives it; else None.
        peer_role: The peer's role, where the platform gives it; else None.
        text: Every text part (``kind`` or the legacy ``type`` of ``"text"``), joined with a
            newline; ``""`` when there is none.
        parts: The parts as sent (at most :data:`MAX_PARTS`; see ``truncated``).
        attachments: The file parts' metadata (``name``, ``mimeType``, ``uri``, ``size`` where
            given); never their bytes.
        received_at: When the platform logged it (UTC), or None when the row did not say.
        redelivered: True when this message was handed to a handler before, by a process that
            ended before the handler returned: it may have been acted on in part.
        message_id: The A2A ``messageId``, where sent.
        truncated: True when the text or the parts were cut to the bounds.

    A handler may answer by returning a string, or by calling :meth:`reply` (once or more);
    either way the answer goes back the way the message came: a notification to the canvas, an
    A2A message to the peer. It is sent on the side-effect thread, never in the handler's time.
    """

    id: str
    seq: int | None
    source: str
    source_id: str | None
    peer_name: str | None
    peer_role: str | None
    text: str
    parts: tuple[Any, ...]
    attachments: tuple[Mapping[str, Any], ...]
    received_at: datetime.datetime | None
    redelivered: bool = False
    message_id: str | None = None
    truncated: bool = False
    _reply: Callable[[str], bool] = field(default=lambda text: False, repr=False, compare=False)

    def reply(self, text: str) -> bool:
        """Send ``text`` back to the sender (the canvas, or the peer). Never blocks.

        Returns False when the reply could not even be queued (the Heartbeat is stopping, or
        its queue is full: counted in ``status()``).
        """
        if not isinstance(text, str):
            raise TypeError(f"a reply is a str, not {type(text).__name__}")
        return self._reply(text)

    @classmethod
    def of(
        cls, row: MessageRow, *, redelivered: bool, reply: Callable[[str], bool]
    ) -> InboundMessage:
        """The message a handler receives for ``row``."""
        return cls(
            id=row.id,
            seq=row.seq,
            source=row.source,
            source_id=row.source_id,
            peer_name=row.peer_name,
            peer_role=row.peer_role,
            text=row.text,
            parts=row.parts,
            attachments=row.attachments,
            received_at=row.received_at,
            redelivered=redelivered,
            message_id=row.message_id,
            truncated=row.truncated,
            _reply=reply,
        )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def skipped_row(row: Any, workspace_id: str) -> bool:
    """True for a row that is no message to the workspace from a user or a peer: its own
    notifications (``method: "notify"``), its own self-messages (``source_id`` itself), and
    the platform's own probes (no ``source_id``, marked ``source: "platform"`` or with a
    ``self-…`` ``source_type``, such as the August 2026 stall probe)."""
    if not isinstance(row, dict):
        return False
    source = row.get("source_id")
    if source == workspace_id or (row.get("method") == "notify" and not source):
        return True
    return not source and _from_the_platform(row.get("request_body"))


def _from_the_platform(body: Any) -> bool:
    params = body.get("params") if isinstance(body, dict) else None
    message = params.get("message") if isinstance(params, dict) else None
    for holder in (message, params):
        metadata = holder.get("metadata") if isinstance(holder, dict) else None
        if not isinstance(metadata, dict):
            continue
        kind = metadata.get("source_type")
        if metadata.get("source") == "platform" or (
            isinstance(kind, str) and kind.startswith("self-")
        ):
            return True
    return False


def message_row(row: Any, workspace_id: str) -> MessageRow | None:
    """The message an ``a2a_receive`` row carries, or None when it is not one (not an object,
    no valid id, another type of row, or one of the workspace's own: :func:`skipped_row`).

    Whatever the request body holds, a row with an id is a message: a body that is not the
    JSON-RPC shape, or has no text, gives ``text`` empty and ``parts`` as far as they can be
    read; a huge one is cut (``truncated``).
    """
    if not isinstance(row, dict):
        return None
    row_id = row.get("id")
    if not isinstance(row_id, str) or not valid_id(row_id):
        return None
    kind = row.get("activity_type")
    if kind is not None and kind != "a2a_receive":
        return None
    if skipped_row(row, workspace_id):
        return None
    source_id = _str_or_none(row.get("source_id"))
    parts, truncated = _parts(row.get("request_body"))
    texts: list[str] = []
    attachments: list[Mapping[str, Any]] = []
    size = 0
    for part in parts:
        if not isinstance(part, dict):
            continue
        if (part.get("kind") == "text" or part.get("type") == "text") and isinstance(
            part.get("text"), str
        ):
            texts.append(part["text"])
            size += len(part["text"])
        elif part.get("kind") == "file" or part.get("type") == "file":
            attachments.append(_attachment(part))
    text = "\n".join(t for t in texts if t)
    if len(text) > MAX_TEXT:
        text, truncated = text[:MAX_TEXT], True
    body = row.get("request_body")
    params = body.get("params") if isinstance(body, dict) else None
    message = params.get("message") if isinstance(params, dict) else None
    message_id = message.get("messageId") if isinstance(message, dict) else None
    stamp = created_ns(row.get("created_at"))
    received = (
        None
        if stamp is None
        else datetime.datetime.fromtimestamp(stamp / 1e9, tz=datetime.timezone.utc)
    )
    return MessageRow(
        id=row_id,
        seq=seq_of(row),
        source=PEER if source_id else CANVAS,
        source_id=source_id,
        peer_name=_str_or_none(row.get("peer_name")),
        peer_role=_str_or_none(row.get("peer_role")),
        text=text,
        parts=tuple(parts),
        attachments=tuple(attachments),
        received_at=received,
        message_id=_str_or_none(message_id),
        key=message_key(row),
        truncated=truncated,
    )


def _parts(body: Any) -> tuple[list[Any], bool]:
    """The request's parts as sent (``params.message.parts``, else ``params.parts`` or the
    body's own ``parts``), each within its bound; and whether anything was cut."""
    candidates: list[Any] = []
    if isinstance(body, dict):
        params = body.get("params")
        message = params.get("message") if isinstance(params, dict) else None
        for holder in (message, params, body):
            if isinstance(holder, dict) and isinstance(holder.get("parts"), list):
                candidates = holder["parts"]
                break
    truncated = len(candidates) > MAX_PARTS
    kept: list[Any] = []
    for part in candidates[:MAX_PARTS]:
        if not _too_big(part):
            kept.append(part)
            continue
        truncated = True
        kind = part.get("kind") or part.get("type") if isinstance(part, dict) else None
        cut: dict[str, Any] = {"kind": kind if isinstance(kind, str) else "unknown"}
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            cut["text"] = part["text"][:MAX_TEXT]  # a huge text keeps its head
        cut["truncated"] = True
        kept.append(cut)
    return kept, truncated


def _too_big(part: Any) -> bool:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return len(part["text"]) > MAX_TEXT
    try:
        return len(repr(part)) > _MAX_PART
    except (RecursionError, ValueError):
        return True


_ATTACHMENT_FIELDS = ("name", "mimeType", "uri", "size")


def _attachment(part: Mapping[str, Any]) -> Mapping[str, Any]:
    file = part.get("file")
    source = file if isinstance(file, dict) else part
    return {
        name: source[name]
        for name in _ATTACHMENT_FIELDS
        if isinstance(source.get(name), (str, int)) and not isinstance(source.get(name), bool)
    }


def split_messages(rows: Sequence[Any], workspace_id: str) -> tuple[list[MessageRow], list[str]]:
    """The messages among ``rows`` (in order) and the ids of the rows that are not."""
    messages: list[MessageRow] = []
    others: list[str] = []
    for row in rows:
        message = message_row(row, workspace_id)
        if message is not None:
            messages.append(message)
        elif isinstance(row, dict) and isinstance(row.get("id"), str) and valid_id(row["id"]):
            others.append(row["id"])
    return messages, others
