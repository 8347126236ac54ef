"""The registration a Heartbeat owes the platform, tried on the beat thread between beats.

:func:`~heartbeat_sync.wire.register_with` is the one request (and keeping the token it may bring);
this module says when to try it, how often, and when to give up.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from .._logctx import get_logger
from .._ratelimit import RateLimitedLog
from ..wire import RETRY_STATUSES, Credentials, PlatformClient, RegistrationError, register_with

logger = get_logger(__name__)

#: The first wait before a registration is tried again (it doubles up to a cap).
REGISTER_RETRY_FIRST = 1.0
#: The longest wait between registration attempts.
REGISTER_RETRY_MAX = 60.0
#: Statuses that say the platform is overloaded or down: a registration is tried again for
#: as long as it takes (after ``Retry-After`` when the answer has one), like a beat.
BUSY_STATUSES = RETRY_STATUSES
#: Refusals worth a few more tries: a server error (the real server answers 500 to a card it
#: cannot store, and to a database that failed this once), and a token not (yet) the right
#: one (it is re-read before each try). Any other refusal is final at once.
RETRY_REFUSALS = frozenset({401, 500})
#: Refusals in a row after which a registration is given up (one ERROR line).
MAX_REFUSALS = 5

#: What a :class:`Registrar` has come to.
PENDING = "pending"
REGISTERED = "registered"
FAILED = "failed"
#: Not owed: the registration was wanted only if the workspace waited for its agent, and it
#: did not (:meth:`Registrar.stand_down`).
NOT_OWED = "not_owed"


class Registrar:
    """The registration a Heartbeat owes the platform, tried on the beat thread between beats.

    Beats never wait for it: the beat thread calls :meth:`attempt` when :meth:`due_at` comes,
    and beats meanwhile. A platform that is down or overloaded (no answer, 429, 502-504) is
    asked again for as long as it takes, after its ``Retry-After`` or a doubling wait; a
    refusal in :data:`RETRY_REFUSALS` is asked again up to :data:`MAX_REFUSALS` times in a
    row; any other refusal ends it at once. Giving up is one ERROR line. Only :meth:`renew`
    starts it again (after a resume, when the platform waits for the agent).

    Args:
        body: The register request body.
        credentials: The workspace's token (re-read before each try) and where a new one goes.
        first_delay: The first wait after a failed try.
        max_delay: The longest wait between tries (``Retry-After`` excepted).
        clock: The monotonic clock.
    """

    def __init__(
        self,
        body: dict[str, Any],
        credentials: Credentials,
        *,
        first_delay: float,
        max_delay: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._body = body
        self._credentials = credentials
        self._first_delay = first_delay
        self._max_delay = max(first_delay, max_delay)
        self._clock = clock
        #: :data:`PENDING`, :data:`REGISTERED` or :data:`FAILED`.
        self.state = PENDING
        #: Why the last try failed (or why the token was not saved), in words; None after a
        #: clean registration.
        self.error: str | None = None
        self.renew()

    @classmethod
    def for_interval(
        cls, body: dict[str, Any], credentials: Credentials, interval: float
    ) -> Registrar:
        """The registrar of a Heartbeat beating every ``interval`` seconds: its waits start at
        :data:`REGISTER_RETRY_FIRST` (or the interval if shorter) and double up to the
        interval, at most :data:`REGISTER_RETRY_MAX`."""
        first = min(REGISTER_RETRY_FIRST, interval)
        return cls(
            body,
            credentials,
            first_delay=first,
            max_delay=min(REGISTER_RETRY_MAX, max(first, interval)),
        )

    def renew(self) -> None:
        """Owe the platform a registration again, due now."""
        self.state = PENDING
        self._due = self._clock()
        self._delay = self._first_delay
        self._refusals = 0

    def stand_down(self) -> None:
        """Owe nothing until :meth:`renew`: the workspace does not wait for its agent, and the
        registration was wanted only then (an operator's registration is never changed)."""
        self.state = NOT_OWED
        self.error = None

    @property
    def poll_mode(self) -> bool:
        """Whether the registration puts the workspace in poll mode."""
        return self._body.get("delivery_mode") == "poll"

    @property
    def owed(self) -> bool:
        """Whether this run registers (or has registered) the workspace."""
        return self.state != NOT_OWED

    def due_at(self) -> float:
        """When the next try is due (monotonic); infinity when none is owed."""
        return self._due if self.state == PENDING else math.inf

    def attempt(
        self, client: PlatformClient, warn: RateLimitedLog, *, stopping: Callable[[], bool]
    ) -> str:
        """Try once; return the new :attr:`state`. A try cut short by ``stopping`` changes
        nothing."""
        self._credentials.refresh()  # a token placed meanwhile counts
        try:
            register_with(client, self._body, self._credentials)
        except RegistrationError as exc:
            if stopping():
                return self.state
            self.error = str(exc)
            if exc.registered:
                logger.error("%s", exc)  # registered: beats go on with the token in memory
                self.state = REGISTERED
                return self.state
            return self._failed(exc, warn)
        self.state = REGISTERED
        self.error = None
        warn.reset("register")
        return self.state

    def _failed(self, exc: RegistrationError, warn: RateLimitedLog) -> str:
        busy = exc.transport or exc.status in BUSY_STATUSES
        if not busy:
            self._refusals += 1
            if exc.status not in RETRY_REFUSALS or self._refusals >= MAX_REFUSALS:
                tries = f" ({self._refusals} tries)" if self._refusals > 1 else ""
                logger.error("registration refused%s, beating without it: %s", tries, exc)
                self.state = FAILED
                return self.state
        wait = self._delay if exc.retry_after is None else exc.retry_after
        self._due = self._clock() + wait
        self._delay = min(self._delay * 2, self._max_delay)
        warn.warning("register", "registration failed, retrying in %.1f s: %s", wait, exc)
        return self.state
