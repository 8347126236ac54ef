"""The platform's rate limit is one budget: the Heartbeats of a process that share its key (an
organisation) share one view of it. A 429 holds every request of the key until its
Retry-After, beats first when it ends; a window that runs low defers the polls, never the
beats; nothing is lost, and the log says it once."""

from __future__ import annotations

import logging
from pathlib import Path

import requests

from heartbeat_sync import Heartbeat
from heartbeat_sync.testing import FakePlatform, RecordedRequest
from heartbeat_sync.wire.ratelimit import Budget

from .conftest import LogCapture, read_lines, wait_until

ORG = "org-rate"


def _fleet(platform: FakePlatform, tmp_path: Path, n: int, **kw: object) -> list[Heartbeat]:
    hbs = []
    for i in range(n):
        ws = platform.add_workspace(name=f"member-{i}")
        files = platform.agent_files(ws.id, tmp_path / ws.id)
        options: dict[str, object] = {"interval_seconds": 0.2, "exit_timeout": None}
        options.update(kw)
        hbs.append(Heartbeat(platform.url, ws.id, org_id=ORG, **files, **options))  # type: ignore[arg-type]
    return hbs


def _refused_to_members(platform: FakePlatform) -> list[RecordedRequest]:
    """The requests of the fleet's members that the rate limit refused, oldest first."""
    return [r for r in platform.requests if r.status == 429 and r.workspace_id]


def test_a_429_holds_every_request_of_the_organisation_then_the_beats_go_first(
    tmp_path: Path, logs: LogCapture
) -> None:
    with FakePlatform() as platform:
        hbs = _fleet(platform, tmp_path, 3, interval_seconds=0.5, events=False)
        for hb in hbs:
            hb.start_thread()
        try:
            assert wait_until(lambda: all(hb.status().beats_ok >= 2 for hb in hbs))
            platform.set_rate_limit(60, window=4.0)
            # Another process of the organisation spends its window.
            with requests.Session() as other:
                for _ in range(60):
                    other.get(platform.url + "/health", headers={"X-Molecule-Org-Id": ORG})
            # The other process's last requests may be refused too: only ours count here.
            assert wait_until(lambda: _refused_to_members(platform), timeout=5)
            t0 = _refused_to_members(platform)[0].time
            # A result comes while the organisation is held: delivered once, afterwards.
            did = platform.add_delegation(hbs[0].workspace_id, status="completed")
            assert wait_until(lambda: hbs[0].status().results_delivered >= 1, timeout=15)
        finally:
            for hb in hbs:
                hb.stop()
        ours = [r for r in platform.requests if r.time > t0 and r.workspace_id]
    # Held: only requests already on their way reached the platform in the next 2 s.
    held = [r for r in ours if r.time < t0 + 2.0]
    assert len(held) <= len(hbs), [r.route for r in held]
    # When the hold ended, every member beat before any member polled.
    after = [r.route for r in ours if r.time >= t0 + 2.0 and r.route != "events"]
    assert after[: len(hbs)] == ["heartbeat"] * len(hbs), after[:10]
    # Nothing lost, nothing twice; the 429s of the whole organisation said once, no storm.
    results = read_lines(Path(hbs[0].results_path))
    assert sum(did in line for line in results) == 1
    said = [m for m in logs.messages(logging.WARNING) if "rate limit reached" in m]
    assert len(said) == 1 and ORG in said[0]
    # No storm: at most the request each member had on its way when the first 429 came, and
    # one more each at a window's edge (the platform's seconds are truncated: a request sent
    # in the last fraction of a second may still meet the spent window).
    assert len(_refused_to_members(platform)) <= 2 * len(hbs)


def test_a_fleet_under_a_low_limit_beats_on_and_polls_between_windows(
    tmp_path: Path, logs: LogCapture
) -> None:
    """Two members beat every second and would poll every cycle, under a limit of 30 a 6 s
    window: their beats take 12 of it, so the polls wait whenever the window runs low, and no
    request is refused."""
    with FakePlatform() as platform:
        hbs = _fleet(platform, tmp_path, 2, interval_seconds=1.0, events=False)
        platform.set_rate_limit(30, window=6.0)
        for hb in hbs:
            hb.start_thread()
        try:
            assert wait_until(lambda: all(hb.status().beats_ok >= 2 for hb in hbs))
            did = platform.add_delegation(hbs[1].workspace_id, status="completed")
            assert wait_until(lambda: hbs[1].status().results_delivered == 1, timeout=15)
            beats = [hb.status().beats_ok for hb in hbs]
            assert wait_until(
                lambda: all(hb.status().beats_ok >= b + 7 for hb, b in zip(hbs, beats)),
                timeout=15,
            )
        finally:
            for hb in hbs:
                hb.stop()
    assert platform.rate_limited == 0
    assert all(hb.status().beats_failed == 0 for hb in hbs)
    assert did in "".join(read_lines(Path(hbs[1].results_path)))
    low = [m for m in logs.messages(logging.INFO) if "running low" in m]
    assert low and ORG in low[0]  # the polls did wait


def test_a_window_that_runs_low_defers_the_polls_never_the_beats() -> None:
    now = [100.0]
    budget = Budget("organisation 'x'", clock=lambda: now[0])
    budget.join(1, 10.0)
    budget.join(2, 10.0)
    assert budget.polls_from() <= now[0]
    # 30 s left in the window: the two members' beats need 2 * 3 = 6, and room for a poll of
    # each, 2 * 2.
    budget.observe(
        200, {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "50", "X-RateLimit-Reset": "30"}
    )
    assert budget.polls_from() <= now[0]
    budget.observe(
        200, {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "10", "X-RateLimit-Reset": "30"}
    )
    # The polls wait for the window to reset: a second after it says, since the platform
    # truncates its seconds (a poll sent at the moment said would meet the old window).
    assert budget.polls_from() == now[0] + 30 + 1
    assert budget.held_until() < now[0]  # the beats do not
    now[0] += 32
    assert budget.polls_from() <= now[0]


def test_polls_deferred_a_whole_window_go_once_so_that_results_still_come() -> None:
    """Beats that fill the window by themselves: the polls wait one window, then one goes."""
    now = [100.0]
    budget = Budget("organisation 'x'", clock=lambda: now[0])
    budget.join(1, 1.0)
    low = {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "50", "X-RateLimit-Reset": "59"}
    budget.observe(200, low)
    assert budget.polls_from() == 160.0
    now[0] = 158.0
    budget.observe(200, low)  # a new window, as full of beats
    assert budget.polls_from() > now[0]
    now[0] = 161.0
    budget.observe(200, low)
    assert budget.polls_from() <= now[0]  # deferred 61 s: this one goes
    assert budget.polls_from() > now[0]  # and the next waits again


def test_a_429_holds_the_key_for_its_retry_after_and_the_polls_a_moment_longer() -> None:
    now = [100.0]
    budget = Budget("organisation 'x'", clock=lambda: now[0])
    budget.observe(
        429, {"Retry-After": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "20"}
    )
    assert budget.held_until() == 121.0  # Retry-After's whole seconds, and one for the rest
    assert budget.polls_from() > 121.0
    now[0] = 122.5
    budget.observe(
        200, {"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": "29", "X-RateLimit-Reset": "59"}
    )
    assert budget.polls_from() <= now[0]


def test_headers_that_are_not_numbers_change_nothing() -> None:
    budget = Budget("organisation 'x'", clock=lambda: 100.0)
    budget.observe(
        200,
        {
            "X-RateLimit-Remaining": "lots",
            "X-RateLimit-Reset": "-5",
            "X-RateLimit-Limit": "unlimited",
        },
    )
    assert budget.remaining is None and budget.limit is None
    assert budget.polls_from() <= 100.0
    budget.observe(429, {"Retry-After": "nan"})  # no usable wait: a short hold
    assert budget.held_until() == 105.0
    budget.observe(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})  # in the past
    assert budget.held_until() == 105.0  # no shorter than what holds already
    budget.observe(429, {"Retry-After": "86400"})  # capped at the platform's window
    assert budget.held_until() == 161.0
