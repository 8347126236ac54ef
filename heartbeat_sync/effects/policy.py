"""What the side-effect worker sends when, and what a refusal means: pure, on an injected clock.

The worker hands this policy the results of each batch, asks it what to send next, and tells it
how the platform answered. The policy holds the wake-up cooldown, the coalescing of results
into one wake-up, the retry of a busy agent's wake-up until a deadline, the pause of
notifications a workspace has turned off, and the counts of what was sent or dropped. It starts
no thread, takes no lock and does no I/O: its owner serialises the calls, and a test drives it
with a fake clock.
"""

from __future__ import annotations

import collections
import time
import types
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Generic, Literal, TypeVar, Union

#: The platform's 503 error for a workspace whose agent has no URL: not a busy agent.
NO_AGENT_URL = "workspace has no URL"
#: The platform's 403 error for a workspace whose notifications are turned off.
NOTIFY_DISABLED = "talk_to_user_disabled"
#: Seconds before a refused wake-up is tried again when the platform sent no ``Retry-After``.
DEFAULT_RETRY_DELAY = 15.0
#: The shortest wait before a retry, whatever ``Retry-After`` says (no busy loop on ``0``).
MIN_RETRY_DELAY = 0.05
#: How long notifications stay paused after the platform said they are turned off (403).
NOTIFY_PAUSE_SECONDS = 600.0

DROP_QUEUE_FULL = "queue_full"
DROP_WAKEUP_FAILED = "wakeup_failed"
DROP_NOTIFY_FAILED = "notify_failed"
DROP_NOTIFY_DISABLED = "notify_disabled"
DROP_NOTIFY_BACKLOG = "notify_backlog"
DROP_STOPPED = "stopped"
DROP_REPLY_FAILED = "reply_failed"
DROP_REPLY_BACKLOG = "reply_backlog"
#: Replies held at most (waiting to be sent, or for a retry): a new one beyond is dropped and
#: counted.
MAX_REPLY_BACKLOG = 1000

R = TypeVar("R")


@dataclass(frozen=True)
class Refusal:
    """How the platform refused a request, in plain values read off the error."""

    #: The HTTP status, or None when no answer came.
    status: int | None
    #: The error body's ``error`` string, if any.
    error: str | None = None
    #: The server's ``Retry-After`` in seconds, if it sent one.
    retry_after: float | None = None
    #: True when no connection could be made (the request never reached the platform).
    connect_error: bool = False
    #: True when the platform says the agent received the message and only its answer was lost.
    delivery_confirmed: bool = False

    @classmethod
    def read(
        cls, status: int | None, body: Any, retry_after: float | None, connect_error: bool
    ) -> Refusal:
        """The refusal an error ``body`` (parsed JSON, any shape) and the rest describe."""
        fields = body if isinstance(body, dict) else {}
        error = fields.get("error")
        return cls(
            status=status,
            error=error if isinstance(error, str) else None,
            retry_after=retry_after,
            connect_error=connect_error,
            delivery_confirmed=fields.get("delivery_confirmed") is True,
        )


@dataclass(frozen=True)
class Wakeup(Generic[R]):
    """Send one wake-up self-message listing ``results`` and counting ``more`` beyond them."""

    results: tuple[R, ...]
    more: int


@dataclass(frozen=True)
class Notify(Generic[R]):
    """Send one notification for ``result``."""

    result: R


@dataclass(frozen=True)
class Reply:
    """An answer to a message: ``text`` for a canvas user (``peer_id`` None: a notification)
    or for the peer workspace ``peer_id`` (an A2A message). ``in_reply_to`` is the message's
    ``messageId``, where it had one."""

    text: str
    peer_id: str | None = None
    in_reply_to: str | None = None


@dataclass(frozen=True)
class SendReply:
    """Send ``reply`` (attempt number ``attempt``, from 1)."""

    reply: Reply
    attempt: int = 1


@dataclass(eq=False)
class _HeldReply:
    """A reply waiting: how many attempts so far, the first one's time, the next one's."""

    reply: Reply
    attempts: int = 0
    first: float | None = None
    due: float = float("-inf")


@dataclass(frozen=True)
class SideEffectCounts:
    """What was sent and dropped, and what waits, all read at one instant."""

    #: Wake-up self-messages the platform accepted.
    wakeups_sent: int
    #: Notifications the platform accepted.
    notifications_sent: int
    #: Side effects dropped, by reason (read-only).
    drops: Mapping[str, int]
    #: Batches queued plus the wake-up and notifications not yet sent.
    queue_depth: int
    #: Replies the platform accepted.
    replies_sent: int = 0


#: What to send next: a reply, a wake-up, a notification, or nothing yet.
Action = Union[SendReply, Wakeup[R], Notify[R], None]
#: How a reply ended: accepted, to be retried, or dropped.
ReplyOutcome = Literal["sent", "retry", "dropped"]
#: How a wake-up ended: accepted, received without an answer, to be retried, or dropped.
WakeupOutcome = Literal["sent", "confirmed", "retry", "dropped"]
#: How a notification ended: accepted, refused as turned off (pause begins), or dropped.
NotifyOutcome = Literal["sent", "paused", "dropped"]


class SideEffectPolicy(Generic[R]):
    """Decides which wake-up or notification goes out next, and when.

    At most one wake-up is sent per ``cooldown``; results that arrive meanwhile are announced
    together as soon as it ends (the first ``max_listed`` listed, the rest counted). A wake-up
    refused with a status in ``retry_statuses`` (or a failed connection) is retried after
    ``Retry-After`` until ``retry_deadline`` seconds after its first attempt; one refused 503
    ``workspace has no URL`` (no agent to wake) is dropped at once. Every result gets one
    notification; at most ``max_notify_backlog`` wait, the rest are dropped. A 403
    ``talk_to_user_disabled`` pauses notifications for :data:`NOTIFY_PAUSE_SECONDS`. After a
    wake-up, a waiting notification goes before the next wake-up.

    Replies to messages go first, in order, each retried as a wake-up is (a busy peer's 503
    after its ``Retry-After``, until ``retry_deadline`` after its first attempt); one refused
    for good is dropped and counted (``reply_failed``). A reply to the canvas is a
    notification: a pause of notifications drops it too.
    """

    def __init__(
        self,
        *,
        retry_statuses: Collection[int],
        cooldown: float = 60.0,
        retry_deadline: float = 300.0,
        max_notify_backlog: int = 1000,
        max_listed: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry_statuses = frozenset(retry_statuses)
        self.cooldown = cooldown
        self.retry_deadline = retry_deadline
        self.max_notify_backlog = max_notify_backlog
        self.max_listed = max_listed
        self._clock = clock
        self._wake: list[R] = []
        # Results beyond the listed ones are only counted: memory stays bounded.
        self._wake_more = 0
        self._notify: collections.deque[R] = collections.deque()
        self._next_wake_at = float("-inf")
        self._first_attempt_at: float | None = None
        self._last_was_wakeup = False
        self._notify_paused_until = float("-inf")
        self._drops: dict[str, int] = {}
        # Replies waiting, in order.
        self._replies: collections.deque[_HeldReply] = collections.deque()
        #: Replies the platform accepted.
        self.replies_sent = 0
        #: Wake-ups the platform accepted (or confirmed delivered).
        self.wakeups_sent = 0
        #: Notifications the platform accepted.
        self.notifications_sent = 0

    # --- what is held -------------------------------------------------------------------

    def add(self, results: Sequence[R]) -> None:
        """Hold one batch of new results for the next wake-up and for one notification each."""
        listed = max(0, self.max_listed - len(self._wake))
        self._wake.extend(results[:listed])
        self._wake_more += max(0, len(results) - listed)
        room = max(0, self.max_notify_backlog - len(self._notify))
        self._notify.extend(results[:room])
        if len(results) > room:
            self.drop(DROP_NOTIFY_BACKLOG, len(results) - room)

    def add_reply(self, reply: Reply) -> None:
        """Hold ``reply`` until it is sent (or given up)."""
        if len(self._replies) >= MAX_REPLY_BACKLOG:
            self.drop(DROP_REPLY_BACKLOG, 1)
            return
        self._replies.append(_HeldReply(reply))

    def drop(self, reason: str, count: int) -> None:
        """Count ``count`` side effects dropped for ``reason``."""
        self._drops[reason] = self._drops.get(reason, 0) + count

    def counts(self, queued: int) -> SideEffectCounts:
        """The counters, with ``queued`` batches not yet added counted in the queue depth."""
        return SideEffectCounts(
            wakeups_sent=self.wakeups_sent,
            notifications_sent=self.notifications_sent,
            drops=types.MappingProxyType(dict(self._drops)),
            queue_depth=queued + self.held(),
            replies_sent=self.replies_sent,
        )

    def held(self) -> int:
        """Side effects waiting: the pending wake-up (one, for any number of results) and
        the notifications."""
        return (1 if self._wake_held() else 0) + len(self._notify) + len(self._replies)

    def describe(self, queued: int, busy: bool) -> str:
        """What is left to do, in words, with ``queued`` batches not yet added."""
        parts = []
        if queued:
            parts.append(f"{queued} queued batch(es)")
        if self._wake_held():
            parts.append(f"a wake-up for {len(self._wake) + self._wake_more} result(s)")
        if self._notify:
            parts.append(f"{len(self._notify)} notification(s)")
        if self._replies:
            parts.append(f"{len(self._replies)} reply(ies)")
        if busy and not parts:
            parts.append("a request in flight")
        return ", ".join(parts) or "nothing"

    def due_in(self) -> float | None:
        """Seconds until something held is due (0 when now), or None when nothing is held."""
        if self._notify:
            return 0.0
        waits = [w for w in (self.wakeup_in(), self._reply_in()) if w is not None]
        return min(waits) if waits else None

    def _reply_in(self) -> float | None:
        if not self._replies:
            return None
        now = self._clock()
        return max(0.0, min(held.due for held in self._replies) - now)

    def wakeup_in(self) -> float | None:
        """Seconds until the held wake-up may go out (0 when now), or None when none is held."""
        return max(0.0, self._next_wake_at - self._clock()) if self._wake_held() else None

    def discard(self) -> None:
        """Drop everything held, counted as ``stopped``: nothing more is sent."""
        count = self.held()
        if count:
            self.drop(DROP_STOPPED, count)
        self._wake = []
        self._wake_more = 0
        self._first_attempt_at = None  # a later wake-up gets its own retry deadline
        self._notify.clear()
        self._replies.clear()

    # --- what to send -------------------------------------------------------------------

    def next(self) -> Action[R]:
        """The side effect to send now, or None. A notification handed out is no longer held;
        a reply is, until :meth:`reply_done` says how it went."""
        now = self._clock()
        for held in self._replies:
            if held.due <= now:
                held.attempts += 1
                if held.first is None:
                    held.first = now
                held.due = float("inf")  # in flight
                return SendReply(held.reply, held.attempts)
        wake_due = self._wake_held() and now >= self._next_wake_at
        # After a wake-up, one notification goes first: with a short cooldown and results
        # arriving steadily, wake-ups would otherwise starve the notifications.
        if wake_due and self._last_was_wakeup and self._notify:
            wake_due = False
        self._last_was_wakeup = wake_due
        if wake_due:
            if self._first_attempt_at is None:
                self._first_attempt_at = now
            return Wakeup(tuple(self._wake), self._wake_more)
        while self._notify:
            result = self._notify.popleft()
            if now < self._notify_paused_until:
                self.drop(DROP_NOTIFY_DISABLED, 1)
                continue
            return Notify(result)
        return None

    def wakeup_done(self, wakeup: Wakeup[R], refusal: Refusal | None) -> WakeupOutcome:
        """Record how ``wakeup`` ended (``refusal`` None: accepted) and what follows.

        ``"retry"``: it stays held and is due again after ``Retry-After`` (see :meth:`wakeup_in`).
        Otherwise the results it announced are no longer held (those that arrived meanwhile
        are) and the next wake-up waits for the cooldown.
        """
        now = self._clock()
        if refusal is None or refusal.delivery_confirmed:
            # Confirmed: the agent received it and only its answer was lost; sending it again
            # would wake the agent twice.
            self.wakeups_sent += 1
            self._finish_wakeup(wakeup, now)
            return "sent" if refusal is None else "confirmed"
        # No agent URL: the platform cannot deliver this however often it is asked; the next
        # results try again.
        no_agent = refusal.status == 503 and refusal.error == NO_AGENT_URL
        busy = refusal.status in self.retry_statuses or refusal.connect_error
        retryable = busy and not no_agent
        first = now if self._first_attempt_at is None else self._first_attempt_at
        deadline = first + self.retry_deadline
        if retryable and now < deadline:
            delay = DEFAULT_RETRY_DELAY if refusal.retry_after is None else refusal.retry_after
            self._next_wake_at = now + min(max(delay, MIN_RETRY_DELAY), deadline - now)
            return "retry"
        self.drop(DROP_WAKEUP_FAILED, 1)
        self._finish_wakeup(wakeup, now)
        return "dropped"

    def reply_done(self, sent: SendReply, refusal: Refusal | None) -> ReplyOutcome:
        """Record how ``sent`` ended (``refusal`` None: accepted) and what follows: ``"retry"``
        keeps it held, due again after ``Retry-After``."""
        now = self._clock()
        held = next((h for h in self._replies if h.reply is sent.reply), None)
        if held is None:
            return "dropped"  # discarded meanwhile (a stop)
        if refusal is None or refusal.delivery_confirmed:
            self._replies.remove(held)
            self.replies_sent += 1
            return "sent"
        busy = refusal.status in self.retry_statuses or refusal.connect_error
        deadline = (held.first if held.first is not None else now) + self.retry_deadline
        if busy and now < deadline:
            delay = DEFAULT_RETRY_DELAY if refusal.retry_after is None else refusal.retry_after
            held.due = now + min(max(delay, MIN_RETRY_DELAY), deadline - now)
            return "retry"
        self._replies.remove(held)
        self.drop(DROP_REPLY_FAILED, 1)
        return "dropped"

    def notify_done(self, refusal: Refusal | None) -> NotifyOutcome:
        """Record how a notification ended (``refusal`` None: accepted)."""
        if refusal is None:
            self.notifications_sent += 1
            return "sent"
        if refusal.status == 403 and refusal.error == NOTIFY_DISABLED:
            self._notify_paused_until = self._clock() + NOTIFY_PAUSE_SECONDS
            self.drop(DROP_NOTIFY_DISABLED, 1)
            return "paused"
        self.drop(DROP_NOTIFY_FAILED, 1)
        return "dropped"

    def _wake_held(self) -> bool:
        # Counted results need a wake-up too: they arrived while the listed slots were full.
        return bool(self._wake or self._wake_more)

    def _finish_wakeup(self, wakeup: Wakeup[R], now: float) -> None:
        # Results that arrived while this wake-up was in flight stay held for the next one.
        sent = {id(r) for r in wakeup.results}
        self._wake = [r for r in self._wake if id(r) not in sent]
        self._wake_more = max(0, self._wake_more - wakeup.more)
        self._next_wake_at = now + self.cooldown
        self._first_attempt_at = None
