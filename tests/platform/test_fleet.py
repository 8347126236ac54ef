"""A quiet fleet against the real servers: stream-first polling (an idle cycle is the beat
alone), and a fleet of one organisation under a low rate limit (no 429 storm, no result lost)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from heartbeat_sync import Heartbeat, Hub
from heartbeat_sync.wire import make_session
from heartbeat_sync.wire.ratelimit import budget_for

from ._real import RealPlatform, wait_until, write_token

FLEET_ORG = "fleet-org"


class CountingSession(requests.Session):
    """A real session that counts the requests it sends, by path's last segment."""

    def __init__(self, counts: Counter[str], lock: threading.Lock) -> None:
        super().__init__()
        self._counts = counts
        self._count_lock = lock

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with self._count_lock:
            self._counts[url.rstrip("/").rsplit("/", 1)[-1]] += 1
        return super().request(method, url, *args, **kwargs)


def test_with_the_stream_up_an_idle_cycle_is_the_beat_alone(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    a, ta = real_platform.create_workspace("quiet")
    real_platform.register(a, ta, delivery_mode="poll")
    write_token(hb_files["configs_dir"], ta)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def factory() -> requests.Session:
        session = make_session()
        counting = CountingSession(counts, lock)
        for prefix, adapter in session.adapters.items():
            counting.mount(prefix, adapter)
        return counting

    hb = Heartbeat(
        real_platform.url,
        a,
        interval_seconds=0.5,
        safety_poll_interval=120.0,
        session_factory=factory,
        exit_timeout=None,
        **hb_files,
    )
    with hb:
        assert wait_until(lambda: hb.status().stream is not None and hb.status().stream.connected)
        beats = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= beats + 2)  # the connect's polls done
        with lock:
            before = Counter(counts)
        beats = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= beats + 10)
        with lock:
            idle = counts - before
    assert idle["heartbeat"] >= 10
    assert idle["delegations"] == idle["activity"] == idle["state"] == 0, idle


@pytest.mark.timeout(400)
def test_a_fleet_of_one_organisation_under_a_low_limit_loses_nothing(
    limited_platform: RealPlatform, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty workspaces of one organisation (one bucket, ``X-Molecule-Org-Id``) beating every
    5 s under a limit of 400 a minute: their beats alone take 240, so the polls wait whenever
    the window runs low, a 429 holds them all, and every result still arrives, once."""
    caplog.set_level(logging.INFO, logger="heartbeat_sync")  # what a failure shows
    real = limited_platform
    sender, sender_token = real.create_workspace("fleet-sender")
    members: list[tuple[str, str]] = []
    for n in range(20):
        ws_id, token = real.create_workspace(f"fleet-{n}")
        real.register(ws_id, token, delivery_mode="poll")
        members.append((ws_id, token))
    hbs: list[Heartbeat] = []
    try:
        for ws_id, token in members:
            home = tmp_path / ws_id
            (home / "configs").mkdir(parents=True)
            write_token(home / "configs", token)
            hb = Heartbeat(
                real.url,
                ws_id,
                interval_seconds=5.0,
                org_id=FLEET_ORG,
                results_file=home / "results.jsonl",
                cursor_file=home / "cursor",
                seen_file=home / "seen",
                configs_dir=home / "configs",
                exit_timeout=None,
            )
            hb.start_thread()
            hbs.append(hb)
        assert wait_until(lambda: all(hb.status().beats_ok >= 2 for hb in hbs), timeout=60)
        # A peer's message to each member: a result in that member's file.
        for ws_id, _ in members:
            reply = real.peer_message(ws_id, sender, sender_token, f"report for {ws_id[:8]}")
            assert reply.status_code == 200, reply.text
        # A poll may wait for the window's reset (up to a minute), and the first window is
        # the start's: generous for a loaded machine.
        assert wait_until(
            lambda: all(hb.status().results_delivered == 1 for hb in hbs), timeout=150
        ), [hb.status() for hb in hbs if hb.status().results_delivered != 1]
        beats = [hb.status().beats_ok for hb in hbs]
        assert wait_until(
            lambda: all(hb.status().beats_ok >= b + 2 for hb, b in zip(hbs, beats)), timeout=60
        )
    finally:
        for hb in hbs:
            hb.stop(timeout=0.0)
        for hb in hbs:
            hb.stop(timeout=5.0)
    for hb, (ws_id, _) in zip(hbs, members):
        lines = Path(hb.results_path).read_text().splitlines()
        assert len(lines) == 1 and f"report for {ws_id[:8]}" in lines[0]
    # No storm: the organisation's 429s are the ones already on their way when the first
    # came (a hold stops every member), not one a request for a minute.
    budget = budget_for(real.url, {"X-Molecule-Org-Id": FLEET_ORG})
    assert budget.refusals <= len(hbs)
    assert budget.limit == 400


@pytest.mark.timeout(300)
def test_a_hub_of_twenty_workspaces_beats_delivers_and_a_removal_ends_only_one(
    real_platform: RealPlatform, tmp_path: Path
) -> None:
    """Twenty workspaces served by one hub: every one beats with its own token, a peer's
    message to each is a result in that workspace's file alone, once; removing one from the
    platform ends that one, the others beat on; and one stop ends them all."""
    real = real_platform
    sender, sender_token = real.create_workspace("hub-sender")
    hub = Hub(real.url, interval_seconds=5.0, exit_timeout=None)
    ids: list[str] = []
    for n in range(20):
        ws_id, token = real.create_workspace(f"hub-{n}")
        real.register(ws_id, token, delivery_mode="poll")
        home = tmp_path / ws_id
        home.mkdir()
        write_token(home, token)
        hub.add(
            ws_id,
            configs_dir=home,
            results_file=home / "results.jsonl",
            cursor_file=home / "cursor",
            seen_file=home / "seen",
        )
        ids.append(ws_id)
    hub.start()
    try:
        assert wait_until(lambda: all(s.beats_ok >= 1 for s in hub.status().values()), 60)
        for ws_id in ids:
            reply = real.peer_message(ws_id, sender, sender_token, f"report for {ws_id[:8]}")
            assert reply.status_code == 200, reply.text
        assert wait_until(
            lambda: all(s.results_delivered == 1 for s in hub.status().values()), timeout=60
        )
        gone = ids[5]
        real.delete(gone)
        assert hub[gone].wait(timeout=30)
        assert hub[gone].status().state == "removed"
        others = [w for w in ids if w != gone]
        beats = {w: hub[w].status().beats_ok for w in others}
        assert wait_until(
            lambda: all(hub[w].status().beats_ok >= beats[w] + 1 for w in others), timeout=30
        )
        assert all(hub[w].status().state == "healthy" for w in others)
    finally:
        assert hub.stop(timeout=10.0)
    for ws_id in ids:
        lines = Path(hub[ws_id].results_path).read_text().splitlines()
        assert len(lines) == 1 and f"report for {ws_id[:8]}" in lines[0], lines
