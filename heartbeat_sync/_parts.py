"""The parts of one Heartbeat that the objects of its beat thread share, as one value."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from ._callbacks import Callbacks
from ._lifecycle import Tracker
from ._ratelimit import RateLimitedLog
from ._settings import Settings
from ._tally import Tally
from ._wakeups import Wakeups
from ._worker import SideEffectWorker

__all__ = ["Parts"]


@dataclass(frozen=True, eq=False, repr=False)
class Parts:
    """What a Heartbeat hands the cycle, the polls, the runs and the run loop: made once, and
    anew in a forked child (whose copy starts afresh).

    Attributes:
        settings: The Heartbeat's checked arguments.
        lock: The Heartbeat's lock: guards its counters and which run is current.
        tally: The counters.
        life: The workspace's lifecycle as last learned.
        worker: The side-effect thread: results go to it.
        callbacks: The thread the state changes are announced on.
        warn: The Heartbeat's rate-limited log.
        wakeups: The beat thread's sleep and the asks that wake it.
        stopping: True once ``stop()`` was called: a request it interrupts is no failure.
    """

    settings: Settings
    lock: threading.Lock
    tally: Tally
    life: Tracker
    worker: SideEffectWorker
    callbacks: Callbacks
    warn: RateLimitedLog
    wakeups: Wakeups
    stopping: Callable[[], bool]
