"""The side-effect worker: wake-up self-messages and notifications, off the beat thread.

A slow or hanging ``/a2a`` (up to 120 s) or ``/notify`` must never delay a heartbeat, so the
beat thread only hands batches of results to this worker through a bounded queue and moves on.
:class:`~heartbeat_sync._queueworker.Worker` is the thread and its queue, with nothing of the
platform in it;
:class:`SideEffectWorker` sends what the pure :class:`~heartbeat_sync._policy.SideEffectPolicy`
says is due, on its own session.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Callable

from .._ratelimit import RateLimitedLog
from ..delivery.rows import Result
from ..wire.client import PlatformClient, PlatformError
from ..wire.http import RETRY_STATUSES
from . import texts as _texts
from .policy import (
    DROP_QUEUE_FULL,
    DROP_STOPPED,
    NOTIFY_PAUSE_SECONDS,
    Notify,
    Refusal,
    SideEffectCounts,
    SideEffectPolicy,
    Wakeup,
)
from .queue import Worker

logger = logging.getLogger(__name__)


def _refusal(exc: PlatformError) -> Refusal:
    return Refusal.read(exc.status, exc.body, exc.retry_after, exc.connect_error)


class SideEffectWorker(Worker[list[Result]]):
    """Sends wake-ups and notifications for batches of results, on its own daemon thread.

    :meth:`submit` never blocks: when the queue is full the batch's side effects are dropped
    and counted (its results are already safe in the results file). When to send what is
    :class:`~heartbeat_sync._policy.SideEffectPolicy`'s rule: one wake-up per ``cooldown``
    for the results that arrived meanwhile, a busy agent's wake-up retried after
    ``Retry-After`` until ``retry_deadline``, one notification per result.
    """

    def __init__(
        self,
        client_factory: Callable[[], PlatformClient],
        *,
        cooldown: float = 60.0,
        max_queue: int = 256,
        max_notify_backlog: int = 1000,
        retry_deadline: float = 300.0,
        self_message_timeout: float = 120.0,
        name: str = "heartbeat-sync-side-effects",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_factory = client_factory
        self.self_message_timeout = self_message_timeout
        self._warn = RateLimitedLog(logger)
        # The policy's settings; each process gets a policy of its own from them, holding
        # nothing of its parent's (see _init_state).
        self._new_policy = functools.partial(
            SideEffectPolicy[Result],
            retry_statuses=RETRY_STATUSES,
            cooldown=cooldown,
            retry_deadline=retry_deadline,
            max_notify_backlog=max_notify_backlog,
            max_listed=_texts.TRIGGER_MAX_LINES,
            clock=clock,
        )
        super().__init__(max_queue=max_queue, name=name)

    def _init_state(self) -> None:
        super()._init_state()
        self._policy = self._new_policy()
        self._client: PlatformClient | None = None
        self._parent_name: str | None = None

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._warn.reinit_after_fork()

    # --- the beat thread's side -----------------------------------------------------------

    def submit(self, results: Sequence[Result]) -> bool:
        """Queue the side effects of one batch of new results. Never blocks.

        Returns False (and counts the drop) when the queue is full or the worker is stopped.
        """
        if not results:
            return True
        return super().submit(list(results))

    def snapshot(self) -> SideEffectCounts:
        """The counters and the queue depth, taken together under the worker's lock."""
        with self._cond:
            return self._policy.counts(queued=len(self._queue))

    def pending_summary(self) -> str:
        """What the worker still has to do, in words (for the exit hook's log line)."""
        with self._cond:
            return self._policy.describe(queued=len(self._queue), busy=self._busy)

    # --- hooks: the policy under the worker's lock ----------------------------------------

    def _accept(self, item: list[Result]) -> None:
        self._policy.add(item)

    def _rejected(self, item: list[Result], reason: str) -> None:
        self._policy.drop(reason, len(item))
        if reason == DROP_QUEUE_FULL:
            self._warn.warning(
                "queue_full", "side-effect queue full: dropped a batch of %d", len(item)
            )

    def _held(self) -> int:
        return self._policy.held()

    def _due_in(self) -> float | None:
        return self._policy.due_in()

    def _discard(self) -> None:
        self._policy.discard()

    # --- the worker thread ----------------------------------------------------------------

    def _open(self) -> None:
        self._client = self._client_factory()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _interrupt(self) -> None:
        client = self._client
        if client is not None:
            client.abort()  # shuts the connection down: the request in flight ends now

    def _step(self) -> None:
        client = self._client
        assert client is not None  # _open() ran first on this thread
        with self._cond:
            action = self._policy.next()
        if isinstance(action, Wakeup):
            self._send_wakeup(client, action)
        elif isinstance(action, Notify):
            self._send_notify(client, action.result)

    def _parent(self, client: PlatformClient) -> str:
        """The parent workspace's name ("" if none); cached only once the lookup succeeded."""
        if self._parent_name is not None:
            return self._parent_name
        try:
            own = client.workspace(client.workspace_id)
            parent_id = own.get("parent_id")
            name = ""
            if isinstance(parent_id, str) and parent_id:
                parent = client.workspace(parent_id)
                raw = parent.get("name")
                name = raw if isinstance(raw, str) else ""
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
            if self._stopping:
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

    def _send_notify(self, client: PlatformClient, result: Result) -> None:
        try:
            client.notify(_texts.notify_text(result))
        except PlatformError as exc:
            with self._cond:
                if self._stopping:
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
