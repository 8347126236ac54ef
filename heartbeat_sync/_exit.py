"""The interpreter-exit hook: one deadline for the pending side effects of every live Heartbeat.

The threads are daemons: at exit they die wherever they are. The hook gives what is queued a
short, bounded chance first, and says what it waits for.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import Protocol

from . import _logctx
from ._logctx import get_logger

logger = get_logger(__name__)


class Pending(Protocol):
    """What the hook needs of a side-effect worker."""

    def idle(self) -> bool: ...

    def flush(self, timeout: float) -> bool: ...

    def pending_summary(self) -> str: ...


class Exiting(Protocol):
    """What the hook needs of a Heartbeat."""

    @property
    def exit_timeout(self) -> float | None: ...

    @property
    def _pid(self) -> int: ...

    @property
    def _worker(self) -> Pending: ...

    def stop(self, timeout: float = ...) -> bool: ...


_live: weakref.WeakSet[Exiting] = weakref.WeakSet()
_hook_installed = False
_hook_lock = threading.Lock()


def add(hb: Exiting) -> None:
    """Wait for ``hb``'s side effects at exit (up to its ``exit_timeout``) while it is alive."""
    global _hook_installed
    _live.add(hb)
    with _hook_lock:
        if not _hook_installed:
            atexit.register(_at_exit)
            _hook_installed = True


def discard(hb: Exiting) -> None:
    """Stop waiting for ``hb`` at exit (it was stopped)."""
    _live.discard(hb)


def _at_exit() -> None:
    """Give pending side effects a short, bounded chance before the daemon threads die.

    Every Heartbeat's side effects are waited for together, from one start: the exit is
    delayed by the largest ``exit_timeout``, not their sum. A wake-up that the cooldown or a
    busy agent holds past that deadline is not waited for.
    """
    started = time.monotonic()
    hbs = [hb for hb in list(_live) if hb.exit_timeout is not None and os.getpid() == hb._pid]
    for hb in hbs:
        worker = hb._worker
        if worker.idle():
            continue
        remaining = started + (hb.exit_timeout or 0.0) - time.monotonic()
        with _logctx.workspace(getattr(hb, "workspace_id", None)):
            logger.info(
                "heartbeat-sync: waiting up to %.1f s for %s",
                max(0.0, remaining),
                worker.pending_summary(),
            )
            if not worker.flush(max(0.0, remaining)):
                logger.warning("heartbeat-sync: exiting with %s not sent", worker.pending_summary())
    for hb in hbs:
        hb.stop(timeout=0.0)  # ask every thread at once ...
    end = time.monotonic() + 0.5
    for hb in hbs:
        hb.stop(timeout=max(0.0, end - time.monotonic()))  # ... then wait for all together
