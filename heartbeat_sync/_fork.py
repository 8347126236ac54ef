"""The library's one at-fork hook.

A forked child inherits every object of the parent but none of its threads, and any lock
another thread held at the fork stays held for ever in the child. Objects that own threads or
locks re-initialise themselves in the child. They are kept here in a weak set, so an object
that is discarded costs nothing after it is gone (one ``os.register_at_fork`` per object
would keep a callback for the life of the process and slow every later fork).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Callable, Protocol


class Forkable(Protocol):
    """An object that re-initialises its threads and locks in a forked child."""

    def _after_fork_in_child(self) -> None: ...


_functions: list[Callable[[], None]] = []
_objects: weakref.WeakSet[Forkable] = weakref.WeakSet()
_guard = threading.Lock()


def on_fork_in_child(func: Callable[[], None]) -> None:
    """Run ``func`` in every forked child (module-level state: kept for the process's life)."""
    with _guard:
        _functions.append(func)


def track(obj: Forkable) -> None:
    """Call ``obj._after_fork_in_child()`` in a forked child while ``obj`` is alive."""
    with _guard:
        _objects.add(obj)


def _run_in_child() -> None:
    global _guard
    # Only the forking thread exists now; the guard may have been held by another one.
    _guard = threading.Lock()
    for func in list(_functions):
        with contextlib.suppress(Exception):  # one failure must not skip the others
            func()
    for obj in list(_objects):
        with contextlib.suppress(Exception):
            obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_in_child)
