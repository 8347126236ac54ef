"""The workspace's lifecycle on the platform: active, paused, or removed.

What the platform answers, verified on the real server (``docs/platform.md`` §3):

* **paused** (``POST /workspaces/:id/pause``): every route the loop calls answers as before
  (heartbeat 200, polls 200, notify 200); only ``GET /workspaces/:id/state`` (``paused: true``),
  ``GET /workspaces/:id`` (``status: paused``) and a push-mode self-message
  (``503 {"status": "paused"}``) tell. The platform ignores a paused workspace's beats (its
  status stays paused; liveness skips it) and brings it back only through a new registration.
* **hibernated**: the same, with status ``hibernated``; a self-message answers 503 ``waking``.
* **removed** (``DELETE /workspaces/:id``): its tokens are revoked, so the heartbeat passes
  unauthenticated and is answered 200 (nothing is written); every ``/workspaces/:id/*`` route,
  ``/state`` included, answers ``401 invalid workspace auth token``; ``GET /workspaces/:id``
  answers ``410 workspace removed``.

So a change is suspected from an answer (a 401, 404 or 410 of a workspace route), from a hint
(an event, a refused self-message), or, since nothing in an ordinary cycle reveals a pause, from
an occasional check; then :func:`probe` asks ``/state`` and, when that cannot answer (a revoked
token), the open ``GET /workspaces/:id``. Classification is pure; :func:`probe` is the only I/O.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..wire import PlatformClient, PlatformError

ACTIVE = "active"
PAUSED = "paused"
REMOVED = "removed"
UNKNOWN = "unknown"

#: Platform statuses of a workspace that takes no work until it is registered again.
PAUSED_STATUSES = frozenset({"paused", "hibernating", "hibernated"})
#: After a pause, these statuses mean the workspace waits for its agent to register again.
AWAITING_AGENT_STATUSES = frozenset({"provisioning", "awaiting_agent", "offline"})
#: Statuses of a workspace that no agent has registered for yet (an offline one has had one,
#: and keeps its delivery mode).
WAITING_FOR_AGENT_STATUSES = frozenset({"provisioning", "awaiting_agent"})
#: Statuses of a workspace route's failure that suggest the workspace itself changed.
SUSPICIOUS_STATUSES = frozenset({401, 404, 410})


@dataclass(frozen=True)
class Observation:
    """What one answer says about the workspace: ``kind`` is active, paused, removed or
    unknown; ``status`` the platform's own word for it (None when it gave none)."""

    kind: str
    status: str | None = None
    evidence: str = ""
    #: The platform knows no such workspace (404): never created, or deleted for good, as
    #: opposed to one it removed (410). A registration creates it.
    missing: bool = False


def _kind_of(status: str) -> str:
    if status == "removed":
        return REMOVED
    if status in PAUSED_STATUSES:
        return PAUSED
    return ACTIVE


def classify_state(code: int | None, body: Any) -> Observation:
    """Classify an answer of ``GET /workspaces/:id/state``."""
    if not isinstance(body, dict):
        return Observation(UNKNOWN)
    raw = body.get("status")
    status = raw if isinstance(raw, str) and raw else None
    if code == 404 and body.get("deleted") is True:
        return Observation(REMOVED, status or "removed", "GET /workspaces/:id/state answered 404")
    if code != 200 or status is None:
        return Observation(UNKNOWN)
    if body.get("deleted") is True:
        return Observation(REMOVED, status, "GET /workspaces/:id/state says deleted")
    kind = PAUSED if body.get("paused") is True else _kind_of(status)
    return Observation(kind, status, f"GET /workspaces/:id/state says {status}")


def classify_workspace(code: int | None, body: Any) -> Observation:
    """Classify an answer of the open ``GET /workspaces/:id``."""
    if code == 410:
        return Observation(REMOVED, "removed", "GET /workspaces/:id answered 410")
    if not isinstance(body, dict):
        return Observation(UNKNOWN)  # e.g. a tenant guard's empty 404: says nothing
    if code == 404 and body.get("error") == "workspace not found":
        return Observation(
            REMOVED, None, "GET /workspaces/:id answered 404 workspace not found", missing=True
        )
    raw = body.get("status")
    if code != 200 or not isinstance(raw, str) or not raw:
        return Observation(UNKNOWN)
    return Observation(_kind_of(raw), raw, f"GET /workspaces/:id says {raw}")


def suspicious(exc: BaseException) -> bool:
    """True when a failed workspace route's answer suggests the workspace changed."""
    return isinstance(exc, PlatformError) and exc.status in SUSPICIOUS_STATUSES


def probe(client: PlatformClient) -> Observation:
    """Ask the platform what state the workspace is in (one or two requests)."""
    try:
        seen = classify_state(200, client.state())
    except PlatformError as exc:
        if exc.transport:
            return Observation(UNKNOWN)
        seen = classify_state(exc.status, exc.body)
    if seen.kind != UNKNOWN:
        return seen
    # /state needs a live token; a removed workspace has none. The open route still answers.
    try:
        return classify_workspace(200, client.workspace(client.workspace_id))
    except PlatformError as exc:
        return Observation(UNKNOWN) if exc.transport else classify_workspace(exc.status, exc.body)


class Lifecycle:
    """The workspace's lifecycle as the Heartbeat last learned it, and when to check again.

    Thread-safe: hints come from any thread; :meth:`due` and :meth:`update` from the beat
    thread. A check is due after a hint, while paused (every cycle: that is how a resume is
    seen), and every ``check_every`` seconds otherwise (None: never without a hint).
    """

    def __init__(
        self, check_every: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.check_every = check_every
        self._clock = clock
        self._lock = threading.Lock()
        self.kind = ACTIVE
        self.platform_status: str | None = None
        self._hinted = False
        self._hints = 0  # hints so far: a check clears only those that came before it
        self._last_check = clock()

    @property
    def removed(self) -> bool:
        """The platform removed the workspace (for good)."""
        return self.kind == REMOVED

    @property
    def paused(self) -> bool:
        """The platform paused (or hibernated) the workspace."""
        return self.kind == PAUSED

    def hint(self) -> None:
        """Something suggests the state changed: check at the next opportunity."""
        with self._lock:
            self._hinted = True
            self._hints += 1

    def hints_seen(self) -> int:
        """How many hints came so far: a check takes it before its request, and gives it to
        :meth:`update`, so that a hint that came while the request was on its way stays."""
        with self._lock:
            return self._hints

    @property
    def hinted(self) -> bool:
        """Something suggested a change that no check has looked at yet."""
        with self._lock:
            return self._hinted

    def due(self, periodic: bool = True) -> bool:
        """Whether a state check is due: after a hint, while paused, and (unless not
        ``periodic``: the event stream is up and announces every change) every
        ``check_every`` seconds."""
        with self._lock:
            if self.kind == REMOVED:
                return False
            if self._hinted or self.kind == PAUSED:
                return True
            if not periodic:
                return False
            every = self.check_every
            return every is not None and self._clock() - self._last_check >= every

    def update(self, seen: Observation, since: int | None = None) -> tuple[str, str]:
        """Record a check's outcome; return (old kind, new kind). Unknown changes nothing.
        ``since`` is :meth:`hints_seen` from before the check's request: a hint that came
        later (an event announcing a change the answer may predate) still asks for a check.
        None: the answer settles every hint."""
        with self._lock:
            if since is None or since >= self._hints:
                self._hinted = False
            self._last_check = self._clock()
            old = self.kind
            if seen.kind != UNKNOWN and old != REMOVED:
                self.kind = seen.kind
                self.platform_status = seen.status or seen.kind
            return old, self.kind
