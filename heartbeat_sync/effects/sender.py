"""The side-effect thread's work: wake-up self-messages and notifications, off the beat thread.

A slow or hanging ``/a2a`` (up to 120 s) or ``/notify`` must never delay a heartbeat, so the
beat thread only hands batches of results to this thread through a bounded queue and moves on.
:class:`~.queue.QueueWorker` is the thread and its queue, with nothing of the platform in it;
it is handed :class:`SideEffects`, which sends what the pure :class:`~.policy.SideEffectPolicy`
says is due, on its own session (:func:`side_effect_worker` puts the two together).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable, Union

from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from ..delivery import Result
from ..wire import RETRY_STATUSES, PlatformClient, PlatformError
from . import texts as _texts
from .policy import (
    DROP_QUEUE_FULL,
    DROP_REPLY_FAILED,
    DROP_STOPPED,
    NOTIFY_PAUSE_SECONDS,
    Notify,
    Refusal,
    Reply,
    SendReply,
    SideEffectCounts,
    SideEffectPolicy,
    Wakeup,
)
from .queue import Pump, QueueWorker

logger = get_logger(__name__)

#: The ``kind`` of the platform's own root workspace (August 2026 and later).
PLATFORM_KIND = "platform"


def _refusal(exc: PlatformError) -> Refusal:
    return Refusal.read(exc.status, exc.body, exc.retry_after, exc.connect_error)


#: The side-effect thread: a queue worker over batches of results, doing :class:`SideEffects`.
SideEffectWorker = QueueWorker[Union[list[Result], Reply], "SideEffects"]


def side_effect_worker(
    client_factory: Callable[[], PlatformClient],
    *,
    cooldown: float = 60.0,
    max_queue: int = 256,
    max_notify_backlog: int = 1000,
    retry_deadline: float = 300.0,
    self_message_timeout: float = 120.0,
    name: str = "heartbeat-sync-side-effects",
    clock: Callable[[], float] = time.monotonic,
    pump: Pump | None = None,
) -> SideEffectWorker:
    """The side-effect thread: wake-ups and notifications for batches of results.

    :meth:`~.queue.QueueWorker.submit` never blocks: when the queue is full the batch's side
    effects are dropped and counted (its results are already safe in the results file). When to
    send what is :class:`~.policy.SideEffectPolicy`'s rule: one wake-up per ``cooldown`` for the
    results that arrived meanwhile, a busy agent's wake-up retried after ``Retry-After`` until
    ``retry_deadline``, one notification per result. With ``pump``, its steps are done on
    the pump's shared threads (a hub's workspaces) rather than on a thread of its own.
    """

    def make(cond: threading.Condition, stopping: threading.Event) -> SideEffects:
        policy = SideEffectPolicy[Result](
            retry_statuses=RETRY_STATUSES,
            cooldown=cooldown,
            retry_deadline=retry_deadline,
            max_notify_backlog=max_notify_backlog,
            max_listed=_texts.TRIGGER_MAX_LINES,
            clock=clock,
        )
        return SideEffects(
            cond,
            stopping,
            policy,
            client_factory=client_factory,
            self_message_timeout=self_message_timeout,
        )

    return QueueWorker(make, max_queue=max_queue, name=name, pump=pump)


class SideEffects:
    """What the side-effect thread does: send the wake-ups and notifications its policy says
    are due, on a session of its own (a :class:`~.queue.Work`).

    Args:
        cond: The worker's condition: it guards the policy.
        stopping: The worker's stop signal: a request it interrupts is counted as dropped, not
            failed.
        policy: What to send when.
        client_factory: Makes the thread's platform client.
        self_message_timeout: Seconds for the whole wake-up request.
    """

    def __init__(
        self,
        cond: threading.Condition,
        stopping: threading.Event,
        policy: SideEffectPolicy[Result],
        *,
        client_factory: Callable[[], PlatformClient],
        self_message_timeout: float,
    ) -> None:
        self._cond = cond
        self._stopping = stopping
        self._policy = policy
        self._client_factory = client_factory
        self.self_message_timeout = self_message_timeout
        self._warn = RateLimitedLog(logger)
        self._client: PlatformClient | None = None
        self._parent_name: str | None = None

    def counts(self, queued: int) -> SideEffectCounts:
        """The counters and the queue depth (called under the worker's condition)."""
        return self._policy.counts(queued=queued)

    # --- the worker's condition held ------------------------------------------------------

    def accept(self, item: list[Result] | Reply) -> None:
        if isinstance(item, Reply):
            self._policy.add_reply(item)
        else:
            self._policy.add(item)

    def rejected(self, item: list[Result] | Reply, reason: str) -> None:
        if isinstance(item, Reply):
            self._policy.drop(DROP_REPLY_FAILED if reason == DROP_STOPPED else reason, 1)
            self._warn.warning(
                "reply", "reply not sent: the side-effect queue refused it (%s)", reason
            )
            return
        self._policy.drop(reason, len(item))
        if reason == DROP_QUEUE_FULL:
            self._warn.warning(
                "queue_full", "side-effect queue full: dropped a batch of %d", len(item)
            )

    def held(self) -> int:
        return self._policy.held()

    def due_in(self) -> float | None:
        return self._policy.due_in()

    def discard(self) -> None:
        self._policy.discard()

    def describe(self, queued: int, busy: bool) -> str:
        return self._policy.describe(queued=queued, busy=busy)

    # --- the worker thread ----------------------------------------------------------------

    def open(self) -> None:
        self._client = self._client_factory()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def interrupt(self) -> None:
        client = self._client
        if client is not None:
            client.abort()  # shuts the connection down: the request in flight ends now

    def step(self) -> None:
        client = self._client
        assert client is not None  # open() ran first on this thread
        with self._cond:
            action = self._policy.next()
        if isinstance(action, SendReply):
            self._send_reply(client, action)
        elif isinstance(action, Wakeup):
            self._send_wakeup(client, action)
        elif isinstance(action, Notify):
            self._send_notify(client, action.result)

    def _parent(self, client: PlatformClient) -> str:
        """The parent workspace's name ("" if none); cached only once the lookup succeeded.

        The August 2026 platform gives every top-level workspace its root as the parent, a
        workspace of ``kind: "platform"`` with no agent: that is no parent to report to.
        """
        if self._parent_name is not None:
            return self._parent_name
        try:
            own = client.workspace(client.workspace_id)
            parent_id = own.get("parent_id")
            name = ""
            if isinstance(parent_id, str) and parent_id:
                parent = client.workspace(parent_id)
                raw = parent.get("name")
                if isinstance(raw, str) and parent.get("kind") != PLATFORM_KIND:
                    name = raw
        except PlatformError as exc:
            self._warn.warning("parent", "parent lookup failed, will retry: %s", exc)
            return ""
        self._warn.reset("parent")
        self._parent_name = name
        return name

    def _send_wakeup(self, client: PlatformClient, wakeup: Wakeup[Result]) -> None:
        text = _texts.trigger_text(wakeup.results, self._parent(client), wakeup.more)
        error: PlatformError | None = None
        try:
            client.self_message(text, str(uuid.uuid4()), timeout=self.self_message_timeout)
        except PlatformError as exc:
            if self._stopping.is_set():
                return  # interrupted by stop(); the wake-up is counted as dropped there
            error = exc
        with self._cond:
            outcome = self._policy.wakeup_done(wakeup, None if error is None else _refusal(error))
            delay = self._policy.wakeup_in()
        if outcome == "sent":
            logger.info("wake-up sent for %d result(s)", len(wakeup.results) + wakeup.more)
        elif outcome == "confirmed":
            logger.info("wake-up delivered; the agent's answer was lost (%s)", error)
        elif outcome == "retry":
            logger.info("wake-up not delivered (%s); retrying in %.1f s", error, delay or 0.0)
            return
        else:
            self._warn.warning("wakeup", "wake-up failed, dropped: %s", error)
            return
        self._warn.reset("wakeup")

    def _send_reply(self, client: PlatformClient, sent: SendReply) -> None:
        reply = sent.reply
        error: PlatformError | None = None
        try:
            if reply.peer_id is None:
                client.notify(reply.text)
            else:
                client.send_message(reply.peer_id, reply.text, in_reply_to=reply.in_reply_to)
        except PlatformError as exc:
            if self._stopping.is_set():
                with self._cond:
                    self._policy.reply_done(sent, _refusal(exc))  # counted as not sent
                return
            error = exc
        with self._cond:
            outcome = self._policy.reply_done(sent, None if error is None else _refusal(error))
        to = "the canvas" if reply.peer_id is None else f"peer {reply.peer_id[:8]}"
        if outcome == "sent":
            logger.debug("reply sent to %s", to)
            self._warn.reset("reply")
        elif outcome == "retry":
            logger.info("reply to %s not delivered (%s); retrying", to, error)
        else:
            self._warn.warning("reply", "reply to %s failed, dropped: %s", to, error)

    def _send_notify(self, client: PlatformClient, result: Result) -> None:
        try:
            client.notify(_texts.notify_text(result))
        except PlatformError as exc:
            with self._cond:
                if self._stopping.is_set():
                    self._policy.drop(DROP_STOPPED, 1)
                    return
                outcome = self._policy.notify_done(_refusal(exc))
            if outcome == "paused":
                logger.info(
                    "notifications are turned off for this workspace; pausing them for %.0f s",
                    NOTIFY_PAUSE_SECONDS,
                )
            else:
                self._warn.warning("notify", "notification failed, dropped: %s", exc)
            return
        self._warn.reset("notify")
        with self._cond:
            self._policy.notify_done(None)
