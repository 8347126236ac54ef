"""The immutable status snapshot returned by ``Heartbeat.status()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: Not started, or stopped.
STOPPED = "stopped"
#: Started; no beat has been answered yet.
STARTING = "starting"
#: The last beat was answered 2xx.
HEALTHY = "healthy"
#: The last beat failed (``consecutive_failures`` > 0).
DEGRADED = "degraded"
#: The platform paused (or hibernated) the workspace: no beats, a state check every interval.
PAUSED = "paused"
#: The platform removed the workspace: both threads ended, nothing more is sent.
REMOVED = "removed"


@dataclass(frozen=True)
class StreamStatus:
    """The event stream's state, as :attr:`Status.stream` reports it."""

    #: True while a stream is open and being read.
    connected: bool
    #: Streams opened (answered 200) since the run began.
    connects: int
    #: Events read.
    events: int
    #: Polls the events asked for (each event that may mean a result).
    polls_asked: int
    #: State checks the events asked for (a pause, removal or return announced).
    state_checks_asked: int
    #: The status of the last refused attempt (404: a server without the stream), or None.
    last_refusal: int | None


@dataclass(frozen=True)
class Status:
    """A snapshot of one ``Heartbeat``; it never changes after it is taken.

    Counters count since the ``Heartbeat`` was constructed.
    """

    #: One of ``"stopped"``, ``"starting"``, ``"healthy"``, ``"degraded"``, ``"paused"``,
    #: ``"removed"`` (stays so after the threads ended).
    state: str
    #: True while the beat thread is alive.
    running: bool
    #: Beats the platform answered 2xx.
    beats_ok: int
    #: Beats that failed (an exception or a non-2xx status, after the 401 retry).
    beats_failed: int
    #: Failed beats since the last successful one.
    consecutive_failures: int
    #: ``time.time()`` of the last successful beat, or None.
    last_success: float | None
    #: The last failure, in words (never a secret), or None after a success.
    last_error: str | None
    #: Results written to the results file.
    results_delivered: int
    #: Wake-up self-messages the platform accepted.
    wakeups_sent: int
    #: Notifications the platform accepted.
    notifications_sent: int
    #: Side effects (wake-ups or notifications) dropped, all reasons together.
    side_effects_dropped: int
    #: The drops by reason: ``queue_full``, ``wakeup_failed``, ``notify_failed``,
    #: ``notify_disabled``, ``notify_backlog``, ``stopped``, and for the replies to messages
    #: ``reply_failed`` (refused, or not delivered within the retry deadline) and
    #: ``reply_backlog`` (too many waiting).
    drops: Mapping[str, int]
    #: Side effects waiting on the worker.
    queue_depth: int
    #: The workspace's status as the platform last gave it when asked (``online``,
    #: ``paused``, ``hibernated``, ``removed``, ...), or None before any state check.
    workspace_status: str | None = None
    #: With ``register=True``: ``"pending"`` (not yet registered: tried again later),
    #: ``"registered"``, or ``"failed"`` (given up; the Heartbeat beats without it). None
    #: when the Heartbeat does not register.
    registration: str | None = None
    #: Why the registration last failed, in words (never a secret); None once registered.
    registration_error: str | None = None
    #: The event stream of the current (or last) run; None when the stream is off or was
    #: never opened (it opens as a run begins, after the registration when there is one).
    stream: StreamStatus | None = None
    #: With ``on_message``: messages whose handler returned (its answer, if any, queued).
    messages_handled: int = 0
    #: With ``on_message``: messages whose handler raised (logged with the traceback).
    handler_errors: int = 0
    #: With ``on_message``: handlers running now (sent with the beats as tasks in progress).
    handlers_running: int = 0
    #: With ``on_message``: seconds the longest-running handler has run; None when none runs.
    #: A handler that never returns shows here (it holds one of ``max_concurrent`` slots).
    oldest_handler_seconds: float | None = None
    #: Replies to messages the platform accepted.
    replies_sent: int = 0
    #: With ``on_message``: activity rows skipped as no message to anyone (no id to record
    #: them under); a rate-limited warning says so too.
    messages_skipped: int = 0
