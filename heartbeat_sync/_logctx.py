"""Which workspace a log line is about: every record names it.

A thread that works for one workspace says so once (:func:`bind`, at the thread's start; a
thread that serves several says so around each piece of work with :func:`workspace`). Every
logger of the package is made by :func:`get_logger`, whose filter then puts the workspace's
short id in front of the message (``[1a2b3c4d] heartbeat failed ...``) and its full id in the
record's ``workspace_id`` attribute (what ``extra={"workspace_id": ...}`` would set), so that ten
Heartbeats in one process never log ten identical lines. A record logged with its own
``workspace_id`` in ``extra`` keeps it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

#: The attribute of a log record that holds the workspace's full id.
RECORD_ATTRIBUTE = "workspace_id"
#: Characters of the id shown in a message.
SHORT = 8

_local = threading.local()


def current() -> str | None:
    """The workspace the current thread works for, or None."""
    return getattr(_local, "workspace_id", None)


def bind(workspace_id: str | None) -> None:
    """The current thread works for ``workspace_id`` from now on (None: for none)."""
    _local.workspace_id = workspace_id


@contextlib.contextmanager
def workspace(workspace_id: str | None) -> Iterator[None]:
    """The current thread works for ``workspace_id`` within the block."""
    before = current()
    bind(workspace_id)
    try:
        yield
    finally:
        bind(before)


class _WorkspaceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        named = getattr(record, RECORD_ATTRIBUTE, None)
        workspace_id = named if isinstance(named, str) and named else current()
        if workspace_id and not getattr(record, "_heartbeat_sync_named", False):
            setattr(record, RECORD_ATTRIBUTE, workspace_id)
            record.msg = f"[{workspace_id[:SHORT]}] {record.msg}"
            record._heartbeat_sync_named = True
        return True


_FILTER = _WorkspaceFilter()


def get_logger(name: str) -> logging.Logger:
    """The package's logger ``name``, whose records name their workspace."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread (not started) that works for the workspace its creator works for."""
    workspace_id = current()

    def run() -> None:
        bind(workspace_id)
        target()

    return threading.Thread(target=run, name=name, daemon=True)
