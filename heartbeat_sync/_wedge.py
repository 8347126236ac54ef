"""Process-wide wedge state: an agent marks itself wedged, the beat reports it.

The reference runtime keeps this in its own ``runtime_wedge`` module; here it lives in the
library so that any thread of the agent can mark or clear it without importing the loop.
"""

from __future__ import annotations

import threading

from . import _fork

_lock = threading.Lock()
_reason: str | None = None


def _reinit_after_fork() -> None:
    # A fork while another thread held the lock would leave the child unable to take it.
    global _lock
    _lock = threading.Lock()


_fork.on_fork_in_child(_reinit_after_fork)


def mark_wedged(reason: str) -> None:
    """Mark the runtime as wedged.

    Every beat from now on carries ``runtime_state: "wedged"`` and ``sample_error: reason``
    (the reason is the text the platform shows on the workspace's degraded card), until
    :func:`clear_wedge` is called. An empty reason is replaced by ``"wedged"``.
    """
    global _reason
    with _lock:
        _reason = str(reason) or "wedged"


def clear_wedge() -> None:
    """Clear the wedge state; the next beat reports a healthy runtime again."""
    global _reason
    with _lock:
        _reason = None


def is_wedged() -> bool:
    """Return True while the runtime is marked wedged."""
    with _lock:
        return _reason is not None


def wedge_reason() -> str:
    """Return the reason given to :func:`mark_wedged`, or ``""`` when not wedged."""
    with _lock:
        return _reason or ""
