"""The ``heartbeat-sync demo`` story: a Heartbeat against an in-process ``FakePlatform``.

It plays a short story (two delegations completing, a peer answering, a busy agent whose wake-up
is retried, a token rotation and the recovery from it) and shows, as it happens, what the loop
does. Everything it prints is read off ``Heartbeat.status()`` and the platform's request log;
it writes to the stream it is given and attaches its log handler only while it runs.
"""

from __future__ import annotations

import heapq
import http
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO

from .._heartbeat import Heartbeat
from .._status import Status
from ..delivery import ResultsFile, message_text, read_delegation_results
from ..effects import format_delegation_results
from ..wire import RETRY_STATUSES

if TYPE_CHECKING:
    from ..testing import FakePlatform, RecordedRequest

PROG = "heartbeat-sync"

#: The story's last step comes at this many story units; the run lasts about twice that.
STORY_UNITS = 15
#: How often the demo's main thread looks at the platform's request log and the status.
WATCH_PERIOD = 0.05
#: How long console lines are held so that they come out in time order.
REORDER_DELAY = 0.2


class _Console:
    """Timestamped lines on one stream, from the main thread and the logging handler.

    Lines are held for :data:`REORDER_DELAY` and written in time order: the platform's
    requests are seen by polling, a little after the library has logged what they caused.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.t0_wall = time.time()
        self.t0_mono = time.monotonic()
        self._lock = threading.Lock()
        self._held: list[tuple[float, int, str]] = []
        self._seq = 0

    def line(self, source: str, text: str, *, at_mono: float | None = None) -> None:
        """A line stamped with ``at_mono`` (``time.monotonic()``; default now)."""
        when = (at_mono if at_mono is not None else time.monotonic()) - self.t0_mono
        self._hold(when, source, text)

    def line_wall(self, source: str, text: str, at_wall: float) -> None:
        """A line stamped with ``at_wall`` (``time.time()``, as in a log record)."""
        self._hold(at_wall - self.t0_wall, source, text)

    def _hold(self, when: float, source: str, text: str) -> None:
        indented = text.replace("\n", "\n" + " " * 19)
        with self._lock:
            self._seq += 1
            heapq.heappush(self._held, (when, self._seq, f"{when:6.2f}s  {source:<9} {indented}"))

    def flush(self, *, everything: bool = False) -> None:
        """Write the held lines older than the reorder delay (all of them with ``everything``)."""
        horizon = time.monotonic() - self.t0_mono - REORDER_DELAY
        with self._lock:
            while self._held and (everything or self._held[0][0] <= horizon):
                self.stream.write(heapq.heappop(self._held)[2] + "\n")
            self.stream.flush()

    def plain(self, text: str = "") -> None:
        """Write everything held, then ``text`` without a stamp."""
        self.flush(everything=True)
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()


class _ConsoleHandler(logging.Handler):
    """Writes the library's log records as compact console lines."""

    def __init__(self, console: _Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno != logging.INFO:
                text = f"{record.levelname}: {text}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.console.line_wall("library", text, record.created)
        except Exception:
            self.handleError(record)


def _status_phrase(status: int | None) -> str:
    if status is None:
        return "no answer (connection dropped)"
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class _Story:
    """The demo's cast on the FakePlatform, and what happened to them."""

    def __init__(self, fp: FakePlatform, configs_dir: Path) -> None:
        from ..testing import Response

        self.fp = fp
        self.configs_dir = configs_dir
        self.lead = fp.add_workspace(name="team-lead")
        self.agent = fp.add_workspace(name="demo-agent", parent_id=self.lead.id)
        self.researcher = fp.add_workspace(name="researcher")
        self.reviewer = fp.add_workspace(name="reviewer")
        self.names = {
            ws.id: ws.name for ws in (self.lead, self.agent, self.researcher, self.reviewer)
        }
        self.write_token()
        self.d1 = fp.add_delegation(
            self.agent.id, target_id=self.researcher.id, summary="Summarise the Q3 sales report"
        )
        self.d2 = fp.add_delegation(
            self.agent.id, target_id=self.reviewer.id, summary="Review the release notes"
        )
        # The agent is busy the first time it is woken: the platform answers 503 + Retry-After.
        busy = Response(503, {"error": "busy", "busy": True}, {"Retry-After": "1"})
        fp.set_a2a_responses(self.agent.id, [busy])
        self.peer_answer_id: str | None = None
        self.new_token: str | None = None

    def write_token(self) -> None:
        """Hand the agent's newest token over (atomically: never half a token)."""
        self.fp.write_token(self.agent.id, self.configs_dir)


class _PlatformWatcher:
    """Prints each request the platform answered, once, in the order it arrived."""

    def __init__(self, story: _Story, console: _Console) -> None:
        self.story = story
        self.console = console
        self._next = 0
        self._beats = 0
        self._explained_401 = False

    def poll(self, *, final: bool = False) -> None:
        log = self.story.fp.requests
        now = time.monotonic()
        while self._next < len(log):
            entry = log[self._next]
            # The status is filled in when the answer is decided; wait for it (a dropped
            # connection keeps None for good).
            if entry.status is None and not final and now - entry.time < 2.0:
                break
            self._next += 1
            text = self._describe(entry)
            if text:
                self.console.line("platform", text, at_mono=entry.time)

    def _describe(self, entry: RecordedRequest) -> str | None:
        route: str = entry.route
        status: int | None = entry.status
        ok = status is not None and 200 <= status < 300
        if route == "heartbeat":
            if ok:
                self._beats += 1
                body = entry.json() or {}
                task = body.get("current_task") or ""
                extra = f", current_task {task!r}" if task else ""
                return f"heartbeat #{self._beats} accepted{extra}"
            if status == 401 and not self._explained_401:
                self._explained_401 = True
                return (
                    f"heartbeat refused: {_status_phrase(status)} (on a 401 the loop re-reads "
                    f".auth_token and retries once)"
                )
            return f"heartbeat refused: {_status_phrase(status)}"
        if route in ("delegations", "activity"):
            return None if ok else f"GET {route} answered {_status_phrase(status)}"
        if route == "a2a":
            if status in RETRY_STATUSES:
                return f"wake-up self-message answered {_status_phrase(status)} (agent busy)"
            lines = [
                line.strip()
                for line in (message_text(entry.json()) or "").splitlines()
                if line.startswith("- ")
            ]
            if ok:
                return "wake-up self-message delivered to the agent:\n" + "\n".join(lines)
            return f"wake-up self-message answered {_status_phrase(status)}"
        if route == "notify":
            body = entry.json() or {}
            first = str(body.get("message", "")).splitlines()[:1]
            if ok:
                return f"notification shown to the user: {first[0] if first else ''}"
            return f"notification answered {_status_phrase(status)}"
        if route == "workspace":
            name = self.story.names.get(entry.workspace_id or "", "?")
            return f"workspace lookup ({name}) answered {_status_phrase(status)}"
        return f"{entry.method} {entry.path} answered {_status_phrase(status)}"


class _StatusWatcher:
    """Prints changes of the loop's state and of its drops."""

    def __init__(self, hb: Heartbeat, console: _Console) -> None:
        self.hb = hb
        self.console = console
        self._state = ""
        self._dropped = 0

    def poll(self) -> Status:
        status = self.hb.status()
        if status.state != self._state:
            detail = f" ({status.last_error})" if status.last_error else ""
            if self._state:
                self.console.line("status", f"{self._state} -> {status.state}{detail}")
            else:
                self.console.line("status", f"the loop is {status.state}{detail}")
            self._state = status.state
        if status.side_effects_dropped != self._dropped:
            self._dropped = status.side_effects_dropped
            self.console.line("status", f"side effects dropped so far: {dict(status.drops)}")
        return status


def run_demo(seconds: float, interval: float, stream: TextIO) -> int:
    console = _Console(stream)
    handler = _ConsoleHandler(console)
    lib_logger = logging.getLogger("heartbeat_sync")
    old_level = lib_logger.level
    lib_logger.addHandler(handler)
    lib_logger.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="heartbeat-sync-demo-") as tmp:
            return _play(seconds, interval, Path(tmp), console)
    finally:
        lib_logger.removeHandler(handler)
        lib_logger.setLevel(old_level)


def _play(seconds: float, interval: float, tmp: Path, console: _Console) -> int:
    from ..testing import FakePlatform

    configs = tmp / "configs"
    configs.mkdir()
    results_path = tmp / "delegation_results.jsonl"
    # Story steps come every two units; a long interval compresses the story into --seconds.
    unit = min(interval, seconds / STORY_UNITS)
    with FakePlatform() as fp:
        story = _Story(fp, configs)
        hb = Heartbeat(
            fp.url,
            story.agent.id,
            interval_seconds=interval,
            results_file=results_path,
            cursor_file=tmp / "activity_cursor",
            seen_file=tmp / "seen_ids",
            configs_dir=configs,
            self_message_cooldown=interval,
            exit_timeout=None,
        )
        console.plain(
            f"{PROG} demo: a FakePlatform at {fp.url}; workspace {story.agent.id[:8]} "
            f"('demo-agent', parent 'team-lead') beats every {interval:g} s for {seconds:g} s"
        )
        console.plain(f"files in {tmp}")
        # The rotation needs a failed beat and a recovering one after the last step, and the
        # busy agent's wake-up is retried after a Retry-After of 1 s.
        needed = max(8 * unit + 3 * interval, 2 * unit + 1.0 + 2 * interval)
        if needed > seconds:
            console.plain(
                f"note: at a {interval:g} s interval the story needs about {needed:.1f} s to "
                f"play out, more than {seconds:g} s (shorten --interval or lengthen --seconds)"
            )
        console.plain()
        platform_watch = _PlatformWatcher(story, console)
        status_watch = _StatusWatcher(hb, console)

        def complete(did: str, who: str, preview: str) -> Callable[[], None]:
            def step() -> None:
                fp.set_delegation(story.agent.id, did, status="completed", response_preview=preview)
                console.line("story", f"{who} completed delegation {did[:8]} on the platform")

            return step

        def peer_answers() -> None:
            story.peer_answer_id = fp.add_activity(
                story.agent.id,
                source_id=story.researcher.id,
                text="Also: Q3 churn fell to 2.1%, details in the shared sheet.",
                summary="Follow-up from researcher",
            )
            console.line("story", "researcher answered through A2A (an a2a_receive activity row)")

        failed_at_rotation: list[int] = []

        def rotate() -> None:
            story.new_token = fp.rotate_token(story.agent.id)
            failed_at_rotation.append(hb.status().beats_failed)
            console.line(
                "story",
                "the platform rotated the token; the new one reaches the configs dir later",
            )

        steps: list[tuple[float, Callable[[], None]]] = [
            (2 * unit, complete(story.d1, "researcher", "Revenue up 12% quarter on quarter.")),
            (4 * unit, complete(story.d2, "reviewer", "Two typos fixed; ready to ship.")),
            (6 * unit, peer_answers),
            (8 * unit, rotate),
        ]
        interrupted = False
        hb.current_task = "waiting for 2 delegations"
        hb.start_thread()
        start = time.monotonic()
        deadline = start + seconds
        pause = threading.Event()
        try:
            while time.monotonic() < deadline:
                elapsed = time.monotonic() - start
                while steps and steps[0][0] <= elapsed:
                    steps.pop(0)[1]()
                status = status_watch.poll()
                if (
                    story.new_token
                    and failed_at_rotation
                    and status.beats_failed > failed_at_rotation[0]
                ):
                    # A beat has failed with the old token: now hand out the new one.
                    story.write_token()
                    story.new_token = None
                    console.line("story", "the new token was written to configs/.auth_token")
                platform_watch.poll()
                console.flush()
                pause.wait(WATCH_PERIOD)
            # Give a wake-up or notification still in flight a moment to finish.
            grace = time.monotonic() + 2.0
            while status_watch.poll().queue_depth and time.monotonic() < grace:
                platform_watch.poll()
                console.flush()
                pause.wait(WATCH_PERIOD)
        except KeyboardInterrupt:
            interrupted = True
            console.plain("interrupted")
        finally:
            ended = hb.stop(timeout=3.0)
        platform_watch.poll(final=True)
        status_watch.poll()
        _summary(console, hb, story, results_path, ended)
    return 130 if interrupted else 0


def _summary(
    console: _Console, hb: Heartbeat, story: _Story, results_path: Path, ended: bool
) -> None:
    fp = story.fp
    status = hb.status()
    beats = fp.requests_for("heartbeat", story.agent.id)
    refused = [r for r in beats if r.status is not None and not 200 <= r.status < 300]
    accepted = len(fp.heartbeats(story.agent.id))
    last_refused = max((i for i, r in enumerate(beats) if r in refused), default=None)
    recovered = last_refused is not None and any(
        r.status is not None and 200 <= r.status < 300 for r in beats[last_refused + 1 :]
    )
    a2a = fp.requests_for("a2a", story.agent.id)
    busy_at = [i for i, r in enumerate(a2a) if r.status in RETRY_STATUSES]
    retried_ok = bool(busy_at) and any(
        r.status is not None and 200 <= r.status < 300 for r in a2a[busy_at[0] + 1 :]
    )
    notes = fp.notifications(story.agent.id)
    drops = ", ".join(f"{k}: {v}" for k, v in sorted(status.drops.items())) or "none"

    consumed = read_delegation_results(results_path)
    ids = {str(r.get("delegation_id")) for r in consumed}
    from_peer = story.peer_answer_id is not None and story.peer_answer_id in ids
    delegations = sum(1 for d in (story.d1, story.d2) if d in ids)

    def check(ok: bool, text: str) -> str:
        return f"  [{'x' if ok else ' '}] {text}"

    console.plain()
    console.plain("--- summary (read off Heartbeat.status() and the platform's request log) ---")
    console.plain(
        f"beats          {status.beats_ok} ok, {status.beats_failed} failed "
        f"(the platform accepted {accepted} and refused {len(refused)} heartbeat request(s))"
    )
    console.plain(f"results        {status.results_delivered} delivered to the results file")
    if busy_at:
        retried = "then retried" if len(a2a) > busy_at[0] + 1 else "not retried"
        refusals = f"{len(busy_at)} attempt(s) refused because the agent was busy ({retried})"
    else:
        refusals = "no attempt refused"
    console.plain(f"wake-ups       {status.wakeups_sent} sent; {refusals}")
    console.plain(
        f"notifications  {status.notifications_sent} sent (the platform accepted {len(notes)})"
    )
    console.plain(f"drops          {status.side_effects_dropped} ({drops})")
    console.plain(
        f"threads        {'all stopped' if ended else 'NOT stopped within 3 s'}; "
        f"final state {status.state}"
    )
    console.plain("story:")
    console.plain(check(delegations == 2, f"both delegations were delivered ({delegations}/2)"))
    console.plain(check(from_peer, "the researcher's A2A answer was delivered"))
    console.plain(check(retried_ok, "the busy agent's wake-up was retried and then delivered"))
    console.plain(
        check(
            status.beats_failed > 0 and recovered,
            f"the token rotation cost {status.beats_failed} failed beat(s), then the loop "
            f"recovered" + ("" if recovered else " (no recovery seen)"),
        )
    )
    console.plain()
    console.plain(f"read_delegation_results() consumed {len(consumed)} result(s):")
    console.plain(format_delegation_results(consumed) or "(none)")
    left = ResultsFile(results_path).peek()
    console.plain(f"results left in the file afterwards: {len(left)}")
