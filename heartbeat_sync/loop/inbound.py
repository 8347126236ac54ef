"""The messages of one run: claimed from the inbox, handed to the handlers' pool, their end
recorded, their answers sent back the way they came.

Before each activity poll the beat thread asks :meth:`Inbound.ready` whether messages go to the
handlers (the first time, it makes sure the workspace is not in push mode, and offers again
what an ended run left unhandled), then :meth:`Inbound.capacity` how many it may claim, and
hands the ones it claimed to :meth:`Inbound.dispatch`. Each message carries its ``reply``,
which queues the answer on the side-effect thread: a notification for a canvas user, an A2A
message for a peer. (When a handler returns, the Heartbeat records the end in the inbox and
sends the answer it returned.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

from .._logctx import get_logger
from .._validate import redact_url
from ..delivery import CANVAS, InboundMessage, Inbox, MessageRow, Owner
from ..effects import HandlerPool, Reply
from ..wire import PlatformClient, PlatformError

logger = get_logger(__name__)


class Inbound:
    """One run's side of the message handlers.

    Args:
        inbox: Where messages are claimed and their end recorded.
        pool: The handlers' threads (they outlive the run; the run opens it).
        send: Queues a reply on the side-effect thread; False when it was refused.
        owner: This run, as the hand-off log knows it.
        backlog: Seconds of history a first start hands over (older messages are skipped).
    """

    def __init__(
        self,
        *,
        inbox: Inbox,
        pool: HandlerPool,
        send: Callable[[Reply], bool],
        owner: Owner,
        backlog: float,
    ) -> None:
        self._inbox = inbox
        self._pool = pool
        self._send = send
        self.owner = owner
        self._backlog = backlog
        # None until the first poll: True when messages go to the handlers this run, False
        # when the workspace is in push mode (its messages go to its URL).
        self._serving: bool | None = None
        self._waiting = False

    def ready(self, client: PlatformClient, *, registered_poll: bool) -> bool:
        """Whether this poll's messages go to the handlers. The first time: unless this run
        registered the workspace in poll mode, a workspace with a URL is in push mode, and
        its messages go there (a warning says so, once a run: the handlers get none); else
        the messages an ended run left unhandled are offered again. Later: what another
        process, ended, left unhandled."""
        if self._serving is None:
            url = None if registered_poll else self._push_url(client)
            if url:
                logger.warning(
                    "workspace %s is in push mode: the platform sends its messages to %s, not "
                    "to on_message; register it in poll mode to receive them here "
                    "(heartbeat-sync register --delivery-mode poll, or register=True)",
                    client.workspace_id,
                    redact_url(url),
                )
                self._serving = False
                return False
            self._serving = True
            self._pool.open()
            rows = self._inbox.messages_start(self.owner, self._backlog, self._pool.running_ids())
            self.dispatch(rows, redelivered=True)
        elif self._serving:
            self.dispatch(
                self._inbox.take_over(self.owner, self._pool.running_ids()), redelivered=True
            )
        return self._serving

    def _push_url(self, client: PlatformClient) -> str | None:
        try:
            body = client.workspace(client.workspace_id)
        except PlatformError as exc:
            logger.debug("could not tell the workspace's delivery mode: %s", exc)
            return None
        url = body.get("url")
        return url if isinstance(url, str) and url.strip() else None

    def stop(self, timeout: float) -> bool:
        """The run ends: no more messages start; wait up to ``timeout`` for the running
        handlers. True when none runs. The run's claim on the messages it holds ends either
        way: a later run offers again those that never started (and those whose handlers
        still run, once they are no longer running)."""
        try:
            return self._pool.stop(timeout)
        finally:
            self.owner.end()

    def capacity(self) -> int:
        """How many more messages a handler could start now."""
        return self._pool.free()

    def running(self) -> int:
        """Handlers running now (the beats count them as tasks in progress)."""
        return self._pool.running()

    @property
    def waiting(self) -> bool:
        """Whether the last poll left messages on the platform for want of a free handler
        (when one frees, the polls should run again)."""
        return self._waiting

    def dispatch(
        self, rows: Sequence[MessageRow], *, redelivered: bool = False, waiting: bool = False
    ) -> None:
        """Hand each claimed message to the pool; ``waiting``: more wait on the platform."""
        if not redelivered:
            self._waiting = waiting
        for row in rows:
            message = InboundMessage.of(row, redelivered=redelivered, reply=self._replier(row))
            if not self._pool.submit(message):
                # Stopping: it stays claimed by this run, and a later run offers it again.
                logger.debug("message %s left for a later run: the handlers are stopping", row.id)

    def _replier(self, row: MessageRow) -> Callable[[str], bool]:
        peer = None if row.source == CANVAS else row.source_id

        def reply(text: str) -> bool:
            return self._send(Reply(text, peer, row.message_id))

        return reply
