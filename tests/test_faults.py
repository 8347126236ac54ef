"""A hostile platform: garbage, huge bodies, dropped connections and errors on every route,
outages and token rotation, and secrets that must never reach a log."""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, LogCapture, read_lines, wait_until

ROUTES = ("heartbeat", "delegations", "activity", "workspace", "a2a", "notify")
FAULTS: list[dict[str, object]] = [
    {"status": 200, "body": b"\x00\xffnot json{"},
    {"status": 200, "body": b'{"unterminated": '},
    {"status": 200, "body": [1, "two", None, {"id": {"nested": [[]]}}]},
    {"status": 200, "body": {"a": "dict where a list belongs"}},
    {"status": 200, "body": "null"},
    {"status": 500, "body": {"error": "internal error"}},
    {"status": 404, "body": b""},
    {"status": 400, "body": {"error": 7}},
    {"status": 503, "headers": {"Retry-After": "not-a-number"}},
    {"status": 429, "headers": {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}},
    {"drop": True},
    {"body_size": 20 * 1024 * 1024},
]


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["delegation_id"] for line in read_lines(path)]


@pytest.fixture
def all_logs() -> Iterator[LogCapture]:
    """Everything logged anywhere (urllib3 included), at DEBUG."""
    handler = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.mark.slow
def test_every_fault_on_every_route_loses_and_duplicates_nothing(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    parent = platform.add_workspace(name="lead")
    platform.workspace(ws.id).parent_id = parent.id
    peer = platform.add_workspace()
    results = tmp_path / "results.jsonl"
    expected: list[str] = []
    interval = 0.05
    hb = make_hb(interval_seconds=interval)
    with hb:
        for i, fault in enumerate(FAULTS):
            for route in ROUTES:
                platform.fault(route, times=1, **fault)  # type: ignore[arg-type]
            expected.append(platform.add_delegation(ws.id, status="completed", summary=f"d{i}"))
            expected.append(platform.add_activity(ws.id, source_id=peer.id, text=f"a{i}"))
            # A bad neighbour row in the same response as a good one.
            platform.add_raw_delegation_row(ws.id, {"delegation_id": {"x": 1}, "status": []})
            platform.add_raw_activity_row(ws.id, {"id": ["bad"], "source_id": 5})
            n = len(platform.requests_for("heartbeat"))
            assert platform.wait_for(
                lambda n=n: len(platform.requests_for("heartbeat")) >= n + 2, timeout=10
            )
            assert hb.status().running
        platform.clear_faults()
        assert wait_until(lambda: set(_ids(results)) == set(expected), timeout=10)
        n = len(platform.heartbeats(ws.id))
        assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= n + 3, timeout=5)
    delivered = _ids(results)
    assert len(delivered) == len(set(delivered)) == len(expected)
    # Nothing escaped into the loop's catch-all handlers.
    errors = [r for r in logs.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_beats_keep_their_cadence_under_a_stream_of_bad_responses(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    interval = 0.1
    for route in ("delegations", "activity"):
        platform.fault(route, status=200, body=b"{garbage")
    with make_hb(interval_seconds=interval):
        assert platform.wait_for(lambda: len(platform.heartbeats(ws.id)) >= 12, timeout=10)
    # From the second beat on: the first one comes at once, off the workspace's slots.
    times = [r.time for r in platform.requests_for("heartbeat")][1:12]
    assert times[10] - times[0] == pytest.approx(10 * interval, abs=0.3 * interval)


def test_huge_bodies_keep_memory_bounded(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    for route in ("delegations", "activity", "heartbeat"):
        platform.fault(route, body_size=20 * 1024 * 1024, times=2)
    tracemalloc.start()
    try:
        with make_hb(interval_seconds=0.05) as hb:
            assert platform.wait_for(
                lambda: len(platform.requests_for("delegations")) >= 3, timeout=10
            )
            assert wait_until(lambda: hb.status().beats_ok >= 1, timeout=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024, peak  # far below one 20 MB body


def test_outage_warnings_stay_rate_limited(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    interval = 0.02
    with make_hb(interval_seconds=interval) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        platform.stop()
        assert wait_until(lambda: hb.status().consecutive_failures >= 25, timeout=10)
        platform.start()
        assert wait_until(lambda: hb.status().state == "healthy", timeout=5)
    warnings = [m for m in logs.messages(logging.WARNING) if "heartbeat failed" in m]
    failures = hb.status().beats_failed
    assert len(warnings) <= 3 + failures // 10
    assert len(warnings) >= 3


def test_token_rotated_on_disk_recovers_at_the_next_beat(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    with make_hb(interval_seconds=0.2) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        new = platform.rotate_token(ws.id)  # the platform now rejects the old token
        platform.write_token(ws.id, hb.configs_dir)
        bearer = f"Bearer {new}"
        assert platform.wait_for(
            lambda: any(
                r.status == 200 and r.headers.get("authorization") == bearer
                for r in platform.requests_for("heartbeat")
            )
        )
        # No cycle failed on the way: the first beat refused was sent again at once, with the
        # new token, not an interval later.
        assert hb.status().beats_failed == 0


def test_secrets_never_reach_a_log(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    all_logs: LogCapture,
) -> None:
    old_token = ws.token
    assert old_token
    peer = platform.add_workspace()
    with make_hb(interval_seconds=0.05) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        new_token = platform.rotate_token(ws.id)
        assert wait_until(lambda: hb.status().beats_failed >= 1)  # 401 with the old token
        platform.write_token(ws.id, hb.configs_dir)
        secret = platform.rotate_inbound_secret(ws.id)
        platform.add_delegation(ws.id, status="completed")
        platform.add_activity(ws.id, source_id=peer.id, text="hi")
        platform.fault("notify", status=500, times=1)
        platform.fault("a2a", status=401, body={"error": "invalid caller auth token"}, times=1)
        path = tmp_path / "configs" / ".platform_inbound_secret"
        assert wait_until(lambda: path.exists() and path.read_text() == secret, timeout=5)
        assert wait_until(lambda: hb.status().notifications_sent >= 1, timeout=5)
    text = "\n".join(
        r.getMessage() + repr(r.args) + (str(r.exc_info) if r.exc_info else "")
        for r in all_logs.records
    )
    assert len(all_logs.records) > 10  # DEBUG really was on
    for value in (old_token, new_token, secret):
        assert value not in text


def test_secret_file_is_0600_whatever_the_umask(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        with make_hb() as hb:
            path = tmp_path / "configs" / ".platform_inbound_secret"
            assert wait_until(path.exists)
            assert wait_until(lambda: hb.status().beats_ok >= 1)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    # No temporary file is left behind next to it (the token's lock file may stay).
    left = {p.name for p in path.parent.iterdir()} - {".auth_token.lock"}
    assert left == {".auth_token", ".platform_inbound_secret"}


def test_a_readable_token_file_is_warned_about(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    (tmp_path / "configs" / ".auth_token").chmod(0o644)
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2)
    warned = [m for m in logs.messages(logging.WARNING) if "readable by other users" in m]
    assert len(warned) == 1
    assert ws.token and ws.token not in warned[0]


def test_authorization_is_not_sent_across_a_redirect_to_another_host(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with FakePlatform() as elsewhere:
        other_host = elsewhere.url.replace("127.0.0.1", "localhost")
        platform.fault(
            "delegations",
            status=302,
            headers={"Location": f"{other_host}/workspaces/{ws.id}/delegations"},
            times=1,
        )
        with make_hb(interval_seconds=30.0) as hb:
            assert platform.wait_for_requests("activity", 1, timeout=5)  # the cycle went on
            assert wait_until(lambda: hb.status().beats_ok >= 1)
        # No redirect is followed at all: nothing, and so no token, reaches the other host.
        assert elsewhere.requests == []
    assert platform.requests_for("delegations")[0].headers["authorization"].startswith("Bearer ")
