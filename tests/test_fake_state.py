"""FakePlatform's state: tokens, status transitions, workspaces, the token file for a client."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from heartbeat_sync import Heartbeat
from heartbeat_sync.testing import FakePlatform

from ._fake import beat, get
from .conftest import wait_until


@pytest.fixture
def fp() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


def test_token_rotation_and_revocation(fp: FakePlatform) -> None:
    ws = fp.add_workspace()
    old = ws.token
    extra = fp.issue_token(ws.id)
    assert ws.tokens == [old, extra] and ws.token == extra
    assert beat(fp, ws.id, old).status_code == 200
    new = fp.rotate_token(ws.id)
    assert ws.tokens == [new]
    r = beat(fp, ws.id, old)
    assert (r.status_code, r.json()["error"]) == (401, "invalid workspace auth token")
    r = get(fp, f"/workspaces/{ws.id}/delegations", extra)
    assert (r.status_code, r.json()["error"]) == (401, "invalid workspace auth token")
    assert beat(fp, ws.id, new).status_code == 200
    fp.revoke_tokens(ws.id)
    assert ws.token is None
    assert beat(fp, ws.id).status_code == 200  # grandfathered again
    r = get(fp, f"/workspaces/{ws.id}/delegations", new)
    assert r.status_code == 401


def test_heartbeat_status_transitions(fp: FakePlatform) -> None:
    ws = fp.add_workspace(status="offline")
    beat(fp, ws.id, ws.token)
    assert ws.status == "online"
    beat(fp, ws.id, ws.token, error_rate=0.6)
    assert ws.status == "degraded"
    beat(fp, ws.id, ws.token, error_rate=0.05)
    assert ws.status == "online"
    beat(fp, ws.id, ws.token, runtime_state="wedged")
    assert ws.status == "degraded"
    count = ws.heartbeat_count
    ws.status = "removed"
    # A removed workspace's tokens are invalid, but they still count as live tokens.
    assert beat(fp, ws.id, ws.token).json() == {"error": "invalid workspace auth token"}
    assert beat(fp, ws.id).json() == {"error": "missing workspace auth token"}
    fp.revoke_tokens(ws.id)
    assert beat(fp, ws.id).status_code == 200  # answered 200, but nothing is updated
    assert ws.heartbeat_count == count and ws.status == "removed"


def test_add_workspace_duplicates_and_unknown(fp: FakePlatform) -> None:
    ws = fp.add_workspace("fixed")
    assert fp.workspace("fixed") is ws
    with pytest.raises(ValueError):
        fp.add_workspace("fixed")
    for call in (
        lambda: fp.workspace("missing"),
        lambda: fp.issue_token("missing"),
        lambda: fp.add_activity("missing", source_id=None),
        lambda: fp.add_delegation("missing"),
    ):
        with pytest.raises(KeyError):
            call()


def test_write_token_puts_the_newest_token_where_a_heartbeat_reads_it(
    fp: FakePlatform, tmp_path: Path
) -> None:
    """write_token: <configs_dir>/.auth_token, 0600, in a 0700 directory it creates."""
    ws = fp.add_workspace()
    configs = tmp_path / "configs"
    path = fp.write_token(ws.id, configs)
    assert path == configs / ".auth_token"
    assert path.read_text(encoding="utf-8") == ws.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(configs.stat().st_mode) == 0o700
    new = fp.rotate_token(ws.id)
    assert fp.write_token(ws.id, str(configs)) == path
    assert path.read_text(encoding="utf-8") == new
    # No temporary file left (the lock that serialises writers may stay, as filelock leaves it).
    assert {p.name for p in configs.iterdir()} - {".auth_token.lock"} == {".auth_token"}
    assert beat(fp, ws.id, path.read_text(encoding="utf-8")).status_code == 200


def test_agent_files_lay_out_what_a_heartbeat_keeps_and_hand_it_over_whole(
    fp: FakePlatform, tmp_path: Path
) -> None:
    """agent_files: the token written, the other paths in the folder, Heartbeat's keywords."""
    ws = fp.add_workspace()
    files = fp.agent_files(ws.id, tmp_path)
    assert files == {
        "results_file": tmp_path / "results.jsonl",
        "cursor_file": tmp_path / "cursor",
        "seen_file": tmp_path / "seen",
        "configs_dir": tmp_path / "configs",
    }
    assert (tmp_path / "configs" / ".auth_token").read_text(encoding="utf-8") == ws.token
    hb = Heartbeat(fp.url, ws.id, interval_seconds=0.2, exit_timeout=None, **files)
    hb.start_thread()
    try:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
    finally:
        assert hb.stop(timeout=5.0)
    assert fp.requests_for("heartbeat", ws.id)[0].headers["authorization"] == f"Bearer {ws.token}"
    with pytest.raises(ValueError, match="no live token"):
        fp.agent_files(fp.add_workspace(with_token=False).id, tmp_path / "bare")


def test_write_token_refuses_a_workspace_without_a_token(fp: FakePlatform, tmp_path: Path) -> None:
    bare = fp.add_workspace(with_token=False)
    with pytest.raises(ValueError, match="no live token"):
        fp.write_token(bare.id, tmp_path)
    with pytest.raises(KeyError):
        fp.write_token("missing", tmp_path)
    assert list(tmp_path.iterdir()) == []
