"""A team's slots against the real server: its parent and peers routes give every member the
same team, so siblings beat evenly spread over the interval."""

from __future__ import annotations

import logging
from pathlib import Path

from heartbeat_sync.loop import schedule as _schedule

from ..conftest import LogCapture
from ..test_team import INTERVAL, SLACK, member_heartbeat
from ._real import RealPlatform, wait_until, write_token


def _next_beat(real_platform: RealPlatform, ws_id: str) -> float:
    """The wall-clock time of the next beat the server records for the workspace."""
    before = real_platform.row(ws_id)["last_heartbeat_at"]
    assert wait_until(lambda: real_platform.row(ws_id)["last_heartbeat_at"] != before)
    stamp = real_platform.row(ws_id)["last_heartbeat_at"]
    assert stamp is not None
    return float(stamp.timestamp())


def test_real_siblings_find_one_team_and_beat_on_its_even_shares(
    real_platform: RealPlatform, tmp_path: Path, logs: LogCapture
) -> None:
    lead, _ = real_platform.create_workspace("team-lead")
    members = [real_platform.create_workspace(f"member-{i}", parent_id=lead) for i in range(3)]
    ids = [ws_id for ws_id, _ in members]
    expected = {me: _schedule.team_phase(me, ids, lead) for me in ids}
    running = []
    try:
        for ws_id, token in members:
            home = tmp_path / ws_id
            (home / "configs").mkdir(parents=True)
            write_token(home / "configs", token)
            hb = member_heartbeat(real_platform.url, ws_id, home)
            running.append(hb)
            hb.start_thread()
        said = {
            f"[{me[:8]}] beat slot at {phase:.3f} of the interval, in a team of 3"
            for me, phase in expected.items()
        }
        assert wait_until(lambda: said <= set(logs.messages()), timeout=10), logs.messages()
        for ws_id in ids:
            # The next beat the server records is on the member's share of the interval.
            at = _next_beat(real_platform, ws_id)
            off = (at / INTERVAL - expected[ws_id]) % 1.0
            assert min(off, 1.0 - off) <= SLACK, (ws_id, off)
    finally:
        for hb in running:
            assert hb.stop(timeout=5.0)
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]
