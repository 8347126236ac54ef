"""Shared fixtures: a FakePlatform on loopback and Heartbeats pointed at it."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from heartbeat_sync import Heartbeat, clear_wedge
from heartbeat_sync._config import ALL_ENV
from heartbeat_sync.testing import AgentFiles, FakePlatform, Workspace


class FixedRandom:
    """A random source that always returns one value (the start phase becomes predictable)."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    with FakePlatform() as fp:
        yield fp


@pytest.fixture
def ws(platform: FakePlatform, tmp_path: Path) -> Workspace:
    """A workspace whose agent's files ``FakePlatform.agent_files`` lays out in ``tmp_path``:
    its live token in ``configs/.auth_token``, its results in ``results.jsonl``."""
    workspace = platform.add_workspace(name="worker")
    platform.agent_files(workspace.id, tmp_path)
    return workspace


#: Every environment variable the library or the command line reads.
CONFIG_ENV = ALL_ENV


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in CONFIG_ENV:
        monkeypatch.delenv(name, raising=False)
    clear_wedge()
    yield
    clear_wedge()


HeartbeatFactory = Callable[..., Heartbeat]


@pytest.fixture
def make_hb(platform: FakePlatform, ws: Workspace, tmp_path: Path) -> Iterator[HeartbeatFactory]:
    """Build Heartbeats on the files ``FakePlatform.agent_files`` lays out in ``tmp_path``; all
    are stopped at teardown.

    ``make_hb(**kwargs)`` takes Heartbeat's keywords, and ``workspace_id`` and ``platform_url``
    too. The workspace is the fixture's unless ``workspace_id`` names another, whose files are
    laid out (its token written) when a Heartbeat is first made for it; with ``on=`` another
    FakePlatform, that one lays the workspace out and is the default URL. The fixture's
    workspace is laid out before the test runs, so a test may change its token file first.
    """
    made: list[Heartbeat] = []
    laid_out: dict[tuple[int, str], AgentFiles] = {
        (id(platform), ws.id): platform.agent_files(ws.id, tmp_path)
    }

    def factory(*, on: FakePlatform | None = None, **kwargs: Any) -> Heartbeat:
        fake = platform if on is None else on
        workspace_id = kwargs.pop("workspace_id", ws.id)
        platform_url = kwargs.pop("platform_url", fake.url)
        key = (id(fake), workspace_id)
        if key not in laid_out:
            laid_out[key] = fake.agent_files(workspace_id, tmp_path)
        options: dict[str, Any] = {
            "interval_seconds": 0.2,
            **laid_out[key],
            "self_message_cooldown": 0.0,
            "rng": FixedRandom(0.0),
            "exit_timeout": None,
        }
        options.update(kwargs)
        hb = Heartbeat(platform_url, workspace_id, **options)
        made.append(hb)
        return hb

    yield factory
    for hb in made:
        hb.stop(timeout=5.0)  # hanging-platform tests assert on stop themselves


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Wait for ``predicate`` on an Event, never a bare sleep; return its last value."""
    event = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        event.wait(step)
    return predicate()


def wait_for_beats(
    platform: FakePlatform, count: int, timeout: float = 10.0, workspace_id: str | None = None
) -> bool:
    """Wait until ``count`` more beats have reached the platform (answered or not).

    That is ``count`` more cycles of a running Heartbeat however busy the machine, and, as beats
    fall on slots an interval apart, at least ``count - 1`` intervals of time: the way to let a
    Heartbeat run a while before asserting that something did not happen meanwhile.
    """
    start = len(platform.requests_for("heartbeat", workspace_id))
    return platform.wait_for_requests(
        "heartbeat", start + count, timeout=timeout, workspace_id=workspace_id
    )


def poll_once(platform: FakePlatform, hb: Heartbeat, timeout: float = 5.0) -> bool:
    """Have the platform tell ``hb``'s open event stream of a result, and wait until the poll
    that asks for has run (its activity request was sent).

    The beat thread does what it was asked before the event first: a cycle asked for wins over
    the poll (it polls too) and a state check that is due comes before the polls. So once this
    returns, a beat or a state check asked for by mistake before it has been sent. Call it when
    the last cycle's activity request has been sent (else that request may be taken for the
    poll's).
    """
    stream = hb.status().stream
    assert stream is not None, "poll_once needs the event stream"
    asked = stream.polls_asked
    polls = len(platform.requests_for("activity", hb.workspace_id))
    platform.emit_event(hb.workspace_id, "DELEGATION_FAILED", {"delegation_id": "poll-once"})

    def polled() -> bool:
        now = hb.status().stream
        return (
            now is not None
            and now.polls_asked > asked
            and len(platform.requests_for("activity", hb.workspace_id)) > polls
        )

    return wait_until(polled, timeout)


def read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line]


class LogCapture(logging.Handler):
    """Collects records of the heartbeat_sync logger tree at DEBUG (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        with self._guard:
            return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    logger = logging.getLogger("heartbeat_sync")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def umask_safe_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def fork_with_threads() -> int:
    """``os.fork()`` while threads run, as the fork-safety tests do on purpose.

    Python 3.12 and later warn that the child of a multi-threaded process may deadlock: that
    is what these tests check it does not. Only that warning is ignored, only here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"This process \(pid=\d+\) is multi-threaded, use of fork\(\)",
            category=DeprecationWarning,
        )
        return os.fork()
