"""A Heartbeat's arguments, validated at construction into one frozen :class:`Settings`.

Every check happens here, before a thread exists: a value that passes is one the loop can use
for ever. The environment is read here too, when a ``Heartbeat`` is constructed, never at
import time.
"""

from __future__ import annotations

import os
import random
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from . import _config, _fork, _logctx, _metadata, _validate
from ._logctx import get_logger
from .effects import MessageHandler
from .wire import (
    SessionFactory,
    events_enabled,
    make_session,
    origin_header,
    registration_body,
    resolve_configs_dir,
    resolve_org_id,
)

logger = get_logger(__name__)

#: The legacy ``start_phase`` of earlier releases (the first beat within this share of the
#: interval, then a fixed rate from there); the default schedule now spreads by itself.
START_PHASE = 0.1
#: Rows asked for per activity page, and pages read per cycle when the server has more.
ACTIVITY_PAGE = 100
ACTIVITY_MAX_PAGES = 5
#: The least ``max_seen_ids``: twice the delegations the platform lists (50). A smaller log
#: forgets ids still listed, and delivers them again every cycle.
MIN_SEEN_IDS = 100
#: The least ``max_cursor_ids``: twice the activity rows one poll can read.
MIN_CURSOR_IDS = 2 * ACTIVITY_PAGE * ACTIVITY_MAX_PAGES
#: Seconds between state checks when nothing suggests a change (a pause shows in no answer of
#: an ordinary cycle): one cycle in ten at the default interval.
STATE_CHECK_INTERVAL = 300.0
#: While the event stream is up, the polls run on an event and at least this often (seconds).
SAFETY_POLL_INTERVAL = 300.0
#: The most message handlers that may run at once.
MAX_CONCURRENT = 64
#: At a first start, messages older than this many seconds are history, not handed over.
MESSAGE_BACKLOG = 600.0
_GOLDEN = 0.6180339887498949

StateCallback = Callable[[str, str], None]


class RandomSource(Protocol):
    """Anything with a ``random()`` returning a float in [0, 1), like ``random.Random``."""

    def random(self) -> float: ...


class _PhaseSequence:
    """Start phases for the Heartbeats of one process: a golden-ratio sequence from a random
    start. Instances started together then spread evenly (independent uniform draws cluster
    by chance); a forked child draws a new start, so forked workers do not beat in step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: float | None = None

    def random(self) -> float:
        with self._lock:
            if self._next is None:
                # Not the shared generator: processes that seed it alike would start in step.
                self._next = random.SystemRandom().random()
            value = self._next
            self._next = (value + _GOLDEN) % 1.0
            return value

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._next = None


_phases = _PhaseSequence()
_fork.on_fork_in_child(_phases.reset)


@dataclass(frozen=True)
class Settings:
    """Everything a Heartbeat was told, checked: see ``Heartbeat`` for what each one means."""

    platform_url: str
    workspace_id: str
    interval_seconds: float
    results_path: str
    cursor_path: str
    seen_path: str
    configs_dir: Path
    self_message_cooldown: float
    runtime_metadata: _metadata.MetadataSource | None
    adapter_module: str | None
    max_seen_ids: int
    max_cursor_ids: int
    request_timeout: float
    self_message_timeout: float
    wakeup_retry_deadline: float
    exit_timeout: float | None
    #: The ``Origin`` header to send, or None.
    origin: str | None
    start_phase: float | None
    rng: RandomSource
    session_factory: SessionFactory
    #: The body to register with, or None when the Heartbeat does not register.
    registration: dict[str, Any] | None
    org_id: str | None
    on_state_change: StateCallback | None
    state_check_interval: float | None
    events: bool
    safety_poll_interval: float | None
    on_message: MessageHandler | None
    max_concurrent: int
    message_backlog: float
    #: The registration is owed only if the workspace waits for its agent (``on_message``
    #: without ``register``).
    register_only_if_waiting: bool
    #: ``$MOLECULE_WORKSPACE_TOKEN``: kept out of ``repr``, like every secret.
    env_token: str | None = field(default=None, repr=False)

    @property
    def lock_timeout(self) -> float:
        """Seconds the beat thread waits for a file lock (results, seen, cursor).

        A consumer that holds a lock for long must not stall the beat: one short timeout for
        every lock the beat thread takes.
        """
        return min(5.0, max(0.05, self.interval_seconds / 4))


#: The arguments after ``workspace_id`` that earlier releases took by position, in their order.
POSITIONAL = (
    "interval_seconds",
    "results_file",
    "cursor_file",
    "seen_file",
    "configs_dir",
    "self_message_cooldown",
    "runtime_metadata",
)


def take_positional(
    positional: tuple[Any, ...], arguments: dict[str, Any], defaults: dict[str, Any]
) -> None:
    """Put arguments passed by position (deprecated) under their names in ``arguments``.

    Warns with a ``DeprecationWarning`` naming the keywords to use, pointing at the code that
    constructed the Heartbeat. ``TypeError`` for more than :data:`POSITIONAL` holds, or for one
    also given by keyword.
    """
    if len(positional) > len(POSITIONAL):
        raise TypeError(
            f"Heartbeat() takes platform_url and workspace_id by position, then at most "
            f"{len(POSITIONAL)} deprecated positional arguments ({len(positional)} given)"
        )
    names = POSITIONAL[: len(positional)]
    warnings.warn(
        "passing Heartbeat arguments after workspace_id by position is deprecated: use "
        + ", ".join(f"{name}=..." for name in names),
        DeprecationWarning,
        stacklevel=3,  # this function, Heartbeat.__init__, then the caller
    )
    for name, value in zip(names, positional):
        if arguments[name] is not defaults[name]:
            raise TypeError(f"Heartbeat() got multiple values for argument {name!r}")
        arguments[name] = value


def settings(
    platform_url: str,
    workspace_id: str,
    *,
    interval_seconds: float,
    results_file: str | os.PathLike[str] | None,
    cursor_file: str | os.PathLike[str] | None,
    seen_file: str | os.PathLike[str] | None,
    configs_dir: str | os.PathLike[str] | None,
    self_message_cooldown: float,
    runtime_metadata: _metadata.MetadataSource | None,
    max_seen_ids: int,
    max_cursor_ids: int,
    request_timeout: float,
    self_message_timeout: float,
    wakeup_retry_deadline: float,
    exit_timeout: float | None,
    origin: str | None,
    start_phase: float | None,
    rng: RandomSource | None,
    session_factory: SessionFactory | None,
    register: bool,
    agent_card: dict[str, Any] | None,
    agent_url: str | None,
    org_id: str | None,
    on_state_change: StateCallback | None,
    state_check_interval: float | None,
    events: bool,
    on_message: MessageHandler | None,
    max_concurrent: int,
    message_backlog: float,
    safety_poll_interval: float | None,
) -> Settings:
    """Check a Heartbeat's arguments (``ValueError`` naming the first bad one) and read the
    environment for those left to it.

    ``start_phase`` given warns with a ``DeprecationWarning`` pointing at the code that
    constructed the Heartbeat.
    """
    platform_url = _validate.platform_url(platform_url)
    _validate.workspace_id(workspace_id)
    day = _validate.ONE_DAY
    interval = _validate.number("interval_seconds", interval_seconds, 0, day, low_open=True)
    cooldown = _validate.number("self_message_cooldown", self_message_cooldown, 0, day)
    request_timeout = _validate.number("request_timeout", request_timeout, 0, 3600, low_open=True)
    self_message_timeout = _validate.number(
        "self_message_timeout", self_message_timeout, 0, 3600, low_open=True
    )
    wakeup_retry_deadline = _validate.number("wakeup_retry_deadline", wakeup_retry_deadline, 0, day)
    exit_timeout = _validate.optional_number("exit_timeout", exit_timeout, 0, 3600)
    start_phase = _validate.optional_number("start_phase", start_phase, 0, 1)
    safety = _validate.optional_number(
        "safety_poll_interval", safety_poll_interval, 0, day, low_open=True
    )
    state_check_interval = _validate.optional_number(
        "state_check_interval", state_check_interval, 0, day, low_open=True
    )
    resolved_configs_dir = resolve_configs_dir(configs_dir)
    if start_phase is not None:
        warnings.warn(
            "start_phase is deprecated: by default the first beat comes at once and the "
            "later ones on a slot derived from the workspace id, which spreads a fleet",
            DeprecationWarning,
            stacklevel=3,  # this function, Heartbeat.__init__, then the caller
        )
    # urllib3 sleeps inside a request where stop() cannot reach it: keep that short.
    retry_after_cap = min(5.0, interval / 4)
    header = origin_header(origin, platform_url)
    # Validated now: a registration the platform would refuse fails here, not later.
    registration = (
        registration_body(
            workspace_id,
            url=agent_url,
            agent_card=agent_card,
            # Named either way: the platform keeps a workspace's earlier mode when the body
            # names none, so a poll-mode workspace given a URL would stay in poll mode.
            delivery_mode="push" if agent_url else "poll",
        )
        if register
        else None
    )
    tenant = resolve_org_id(org_id)
    if on_state_change is not None and not callable(on_state_change):
        raise ValueError("on_state_change must be callable")
    if on_message is not None and not callable(on_message):
        raise ValueError("on_message must be callable")
    if (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or not 1 <= max_concurrent <= MAX_CONCURRENT
    ):
        raise ValueError(
            f"max_concurrent must be an int in [1, {MAX_CONCURRENT}], not {max_concurrent!r}"
        )
    backlog = _validate.number("message_backlog", message_backlog, 0, 30 * day)
    if on_message is not None and registration is None:
        # A workspace not yet registered is registered in poll mode (only then: an operator's
        # registration is never changed); see Cycle.check_at_start.
        registration = registration_body(
            workspace_id, url=None, agent_card=agent_card, delivery_mode="poll"
        )
        register_only_if_waiting = True
    else:
        register_only_if_waiting = False
    if on_message is not None and agent_url:
        logger.warning(
            "on_message is given with agent_url: the platform sends the workspace's messages "
            "to %s (push mode), so none reaches on_message; leave agent_url out to receive "
            "them here (poll mode)",
            _validate.redact_url(agent_url),
            extra={_logctx.RECORD_ATTRIBUTE: workspace_id},
        )
    for arg, value, least in (
        ("max_seen_ids", max_seen_ids, MIN_SEEN_IDS),
        ("max_cursor_ids", max_cursor_ids, MIN_CURSOR_IDS),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            # Fewer ids than one poll returns would deliver the same results every cycle.
            raise ValueError(f"{arg} must be an int >= {least}, not {value!r}")
    return Settings(
        platform_url=platform_url,
        workspace_id=workspace_id,
        interval_seconds=interval,
        results_path=_config.env_path(
            results_file, _config.ENV_RESULTS_FILE, _config.DEFAULT_RESULTS_FILE
        ),
        cursor_path=_config.env_path(
            cursor_file, _config.ENV_CURSOR_FILE, _config.DEFAULT_CURSOR_FILE
        ),
        seen_path=_config.env_path(seen_file, _config.ENV_SEEN_FILE, _config.DEFAULT_SEEN_FILE),
        configs_dir=resolved_configs_dir,
        self_message_cooldown=cooldown,
        runtime_metadata=runtime_metadata,
        adapter_module=os.environ.get(_config.ENV_ADAPTER_MODULE),
        max_seen_ids=max_seen_ids,
        max_cursor_ids=max_cursor_ids,
        request_timeout=request_timeout,
        self_message_timeout=self_message_timeout,
        wakeup_retry_deadline=wakeup_retry_deadline,
        exit_timeout=exit_timeout,
        origin=header,
        start_phase=start_phase,
        rng=rng if rng is not None else _phases,
        session_factory=session_factory or (lambda: make_session(retry_after_cap)),
        registration=registration,
        org_id=tenant,
        on_state_change=on_state_change,
        state_check_interval=state_check_interval,
        safety_poll_interval=safety,
        events=events_enabled(events, os.environ.get(_config.ENV_EVENTS)),
        on_message=None if (on_message is not None and agent_url) else on_message,
        max_concurrent=max_concurrent,
        message_backlog=backlog,
        register_only_if_waiting=register_only_if_waiting,
        env_token=os.environ.get(_config.ENV_TOKEN),
    )
