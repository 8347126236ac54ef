"""A team's slots: siblings started at one moment beat evenly spread over the interval.

Hashed phases are spread at random (200 crowd up to twice the mean into some twentieth of the
interval); siblings that read the same list of siblings each take an even share of it. When
the platform cannot tell the team, the slot stays hashed from the id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat
from heartbeat_sync.loop import schedule as _schedule
from heartbeat_sync.loop.team import siblings
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import FixedRandom, HeartbeatFactory, LogCapture, wait_until
from .test_faults import FAULTS

INTERVAL = 1.0
#: How far (a share of the interval) a beat may arrive from its slot on a loaded machine.
SLACK = 0.15


def test_siblings_are_the_entries_with_the_same_parent_and_a_valid_id() -> None:
    peers: Any = [
        {"id": "a", "parent_id": "p"},
        {"id": "b", "parent_id": "p"},
        {"id": "me", "parent_id": "p"},  # itself, should the platform list it
        {"id": "child", "parent_id": "me"},
        {"id": "p", "parent_id": None},  # the parent
        {"id": "x y", "parent_id": "p"},  # not an id
        {"id": 7, "parent_id": "p"},
        {"parent_id": "p"},
        "c",
        None,
    ]
    assert siblings(peers, "me", "p") == ["a", "b"]
    assert siblings(peers, "me", None) == ["p"]
    assert siblings({"id": "a"}, "me", "p") is None
    assert siblings([], "me", "p") == []


def test_the_platforms_root_workspace_is_no_member_of_a_team() -> None:
    # On the August 2026 platform every top-level workspace has the root as its parent; the
    # root is listed as the parent (parent_id null). Should it ever come with its kind and a
    # parent of its own, it still counts for no team.
    root = "ea3cfcf1-cb9c-53b4-90fd-c53123569c4a"
    peers: Any = [
        {"id": "a", "parent_id": root},
        {"id": root, "parent_id": None, "status": "offline"},
        {"id": "r2", "parent_id": root, "kind": "platform"},
    ]
    assert siblings(peers, "me", root) == ["a"]


def _beat_phases(platform: FakePlatform, ws_id: str, wall_minus_mono: float) -> list[float]:
    """Where each beat after the first arrived, as a share of the interval on the wall clock."""
    beats = platform.requests_for("heartbeat", ws_id)[1:]
    return [((b.time + wall_minus_mono) / INTERVAL) % 1.0 for b in beats]


def _near(phase: float, expected: float) -> bool:
    off = (phase - expected) % 1.0
    return min(off, 1.0 - off) <= SLACK


#: A team member's Heartbeat: at :data:`INTERVAL`, no event stream.
MEMBER: dict[str, Any] = {"interval_seconds": INTERVAL, "events": False, "exit_timeout": None}


def member_heartbeat(url: str, workspace_id: str, home: Path, **options: Any) -> Heartbeat:
    """A member's Heartbeat on the real platform (tests/platform), its files in ``home``: laid
    out by hand, the real server's token being no FakePlatform's to write."""
    return Heartbeat(
        url,
        workspace_id,
        results_file=home / "results.jsonl",
        cursor_file=home / "cursor",
        seen_file=home / "seen",
        configs_dir=home / "configs",
        **MEMBER,
        **options,
    )


class _Team:
    """Workspaces under one parent, each with its token and files, and their Heartbeats."""

    def __init__(self, platform: FakePlatform, root: Path, size: int) -> None:
        self.platform = platform
        self.root = root
        self.parent = platform.add_workspace(name="lead")
        self.members = [
            platform.add_workspace(name=f"member-{i}", parent_id=self.parent.id)
            for i in range(size)
        ]
        self.running: list[Heartbeat] = []

    def start(self, member: Workspace, **options: Any) -> Heartbeat:
        files = self.platform.agent_files(member.id, self.root / member.id)
        hb = Heartbeat(
            self.platform.url, member.id, **files, **MEMBER, rng=FixedRandom(0.0), **options
        )
        self.running.append(hb)
        hb.start_thread()
        return hb

    def team_phase(self, member: Workspace) -> float:
        others = [m.id for m in self.members if m is not member]
        return _schedule.team_phase(member.id, others, self.parent.id)

    def stop(self) -> None:
        for hb in self.running:
            assert hb.stop(timeout=5.0)


@pytest.fixture
def team(platform: FakePlatform, tmp_path: Path) -> Iterator[_Team]:
    made = _Team(platform, tmp_path, 4)
    try:
        yield made
    finally:
        made.stop()


def test_a_team_started_at_one_moment_beats_on_evenly_spread_slots(
    platform: FakePlatform, team: _Team
) -> None:
    wall_minus_mono = time.time() - time.monotonic()
    for member in team.members:
        team.start(member)
    assert wait_until(
        lambda: all(len(platform.requests_for("heartbeat", m.id)) >= 3 for m in team.members),
        timeout=10.0,
    )
    expected = sorted(team.team_phase(m) for m in team.members)
    gaps = [b - a for a, b in zip(expected, expected[1:])]
    assert all(abs(gap - 0.25) < 1e-9 for gap in gaps), expected
    for member in team.members:
        arrived = _beat_phases(platform, member.id, wall_minus_mono)
        # From the second beat on, each member is on its share of the interval.
        assert arrived and all(_near(p, team.team_phase(member)) for p in arrived), (
            member.name,
            arrived,
            team.team_phase(member),
        )
        assert len(platform.requests_for("peers", member.id)) == 1


def test_without_the_peers_route_the_slot_stays_hashed_from_the_id(
    platform: FakePlatform, team: _Team
) -> None:
    member = team.members[0]
    platform.fault("peers", status=404, body={"error": "not found"})
    wall_minus_mono = time.time() - time.monotonic()
    hb = team.start(member)
    assert wait_until(lambda: len(platform.requests_for("heartbeat", member.id)) >= 3, 10.0)
    arrived = _beat_phases(platform, member.id, wall_minus_mono)
    assert all(_near(p, _schedule.phase_of(member.id)) for p in arrived), arrived
    # A 404 will not change: asked once, never again, and the loop went on.
    assert len(platform.requests_for("peers", member.id)) == 1
    assert hb.status().state == "healthy"


def test_a_team_lookup_that_failed_in_transit_is_tried_again_after_a_later_beat(
    platform: FakePlatform, team: _Team
) -> None:
    member = team.members[1]
    platform.fault("peers", status=503, times=1)
    wall_minus_mono = time.time() - time.monotonic()
    team.start(member)
    assert wait_until(lambda: len(platform.requests_for("heartbeat", member.id)) >= 4, 10.0)
    assert len(platform.requests_for("peers", member.id)) == 2
    # The second beat was on the hashed slot; from the third on, the team's.
    arrived = _beat_phases(platform, member.id, wall_minus_mono)
    assert all(_near(p, team.team_phase(member)) for p in arrived[1:]), arrived


def test_the_deprecated_start_phase_never_asks_for_the_team(
    platform: FakePlatform, team: _Team
) -> None:
    member = team.members[2]
    with pytest.warns(DeprecationWarning, match="start_phase"):
        team.start(member, start_phase=0.1)
    assert wait_until(lambda: len(platform.requests_for("heartbeat", member.id)) >= 3, 10.0)
    assert platform.requests_for("peers", member.id) == []


@pytest.mark.parametrize("fault", FAULTS, ids=[str(i) for i in range(len(FAULTS))])
def test_any_bad_answer_to_the_team_lookup_leaves_the_loop_running_and_logs_no_error(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    logs: LogCapture,
    fault: dict[str, Any],
) -> None:
    platform.add_workspace(name="sibling")  # a team of two: the lookup has something to do
    platform.fault("peers", times=1, **fault)
    with make_hb() as hb:
        assert platform.wait_for_requests("peers", 1)
        n = len(platform.heartbeats(ws.id))
        assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= n + 2)
        assert hb.status().state == "healthy"
    assert [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR] == []
