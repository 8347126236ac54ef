"""External agents against the real server: register, paused, removed, tenants, the example."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat, RegistrationError, register

from ..conftest import CONFIG_ENV, LogCapture, wait_until
from ._real import RealPlatform, write_token

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 0.5


def _heartbeat(real: RealPlatform, ws_id: str, files: dict[str, Any], **kw: Any) -> Heartbeat:
    return Heartbeat(real.url, ws_id, interval_seconds=INTERVAL, exit_timeout=None, **files, **kw)


def _asked(hb: Heartbeat) -> int:
    """State checks the event stream has asked for so far."""
    stream = hb.status().stream
    return 0 if stream is None else stream.state_checks_asked


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*CONFIG_ENV, "PYTHONPATH")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def test_register_an_admin_created_workspace_then_beat_online(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    ws_id, token = real_platform.create_workspace("ext-register")
    assert real_platform.row(ws_id)["status"] == "awaiting_agent"
    configs = hb_files["configs_dir"]
    # Without the token the admin API showed, the platform refuses: one exception type.
    with pytest.raises(RegistrationError) as info:
        register(real_platform.url, ws_id, configs_dir=configs, delivery_mode="poll")
    assert (info.value.status, info.value.error) == (401, "missing workspace auth token")
    write_token(configs, token)
    reg = register(real_platform.url, ws_id, configs_dir=configs, delivery_mode="poll")
    assert (reg.status, reg.delivery_mode, reg.token_issued) == ("registered", "poll", False)
    assert reg.inbound_secret_saved
    assert (configs / ".auth_token").read_text() == token  # kept
    assert real_platform.row(ws_id)["status"] == "online"
    with _heartbeat(real_platform, ws_id, hb_files) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2, timeout=10)
        assert hb.status().state == "healthy"


def test_heartbeat_registers_from_nothing_and_keeps_the_issued_token(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    # A workspace id the platform does not know yet: registering creates it and issues a token,
    # shown in that one answer only.
    ws_id = str(uuid.uuid4())
    old = os.umask(0)
    try:
        hb = _heartbeat(real_platform, ws_id, hb_files, register=True, agent_card={"name": "x"})
        hb.start_thread()
        assert wait_until(lambda: hb.status().beats_ok >= 2, timeout=10)
    finally:
        os.umask(old)
        assert hb.stop()
    token_file = hb_files["configs_dir"] / ".auth_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text()
    assert len(token) == 43
    assert real_platform.row(ws_id)["status"] == "online"
    r = real_platform.request("GET", f"/workspaces/{ws_id}/state", token=token)
    assert r.status_code == 200 and r.json()["status"] == "online"


@pytest.mark.generations("2026-05")
def test_pause_is_state_paused_and_a_registration_brings_it_back(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    ws_id, token = real_platform.create_workspace("ext-pause")
    write_token(hb_files["configs_dir"], token)
    changes: list[tuple[str, str]] = []
    hb = _heartbeat(
        real_platform,
        ws_id,
        hb_files,
        register=True,
        state_check_interval=INTERVAL,
        on_state_change=lambda old, new: changes.append((old, new)),
    )
    with hb:
        # Healthy, and announced so: the stream reports a pause within milliseconds, and one
        # found before the first cycle's end is announced as starting -> paused.
        assert wait_until(lambda: changes == [("starting", "healthy")], timeout=10)
        real_platform.pause(ws_id)
        assert wait_until(lambda: hb.status().state == "paused", timeout=5)
        assert hb.status().workspace_status == "paused" and hb.status().running
        assert real_platform.row(ws_id)["status"] == "paused"  # the agent never undoes a pause
        # An operator's registration brings it back; the Heartbeat beats again.
        r = real_platform.request(
            "POST",
            "/registry/register",
            token=token,
            json={"id": ws_id, "delivery_mode": "poll", "agent_card": {}},
        )
        assert r.status_code == 200
        assert wait_until(lambda: hb.status().state == "healthy", timeout=5)
        beats = hb.status().beats_ok
        assert wait_until(lambda: hb.status().beats_ok > beats, timeout=5)
        # The callbacks run on their own thread, a moment after the state changes (stop()
        # would drop one still pending).
        assert wait_until(lambda: ("paused", "healthy") in changes, timeout=5)
    assert ("healthy", "paused") in changes


@pytest.mark.generations("2026-08")
def test_august_keeps_a_paused_workspace_paused_whoever_registers(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    """August answers a paused workspace's registration 200 and writes nothing: it comes back
    only through /resume (which re-provisions it). The Heartbeat stays paused, checking."""
    ws_id, token = real_platform.create_workspace("ext-pause-aug")
    write_token(hb_files["configs_dir"], token)
    hb = _heartbeat(real_platform, ws_id, hb_files, register=True, state_check_interval=INTERVAL)
    with hb:
        assert wait_until(lambda: hb.status().state == "healthy", timeout=10)
        real_platform.pause(ws_id)
        assert wait_until(lambda: hb.status().state == "paused", timeout=5)
        asked = _asked(hb)
        r = real_platform.request(
            "POST",
            "/registry/register",
            token=token,
            json={"id": ws_id, "delivery_mode": "poll", "agent_card": {}},
        )
        assert r.status_code == 200
        beats = hb.status().beats_ok
        # August still announces WORKSPACE_ONLINE for it: the Heartbeat is asked to check at
        # once, finds the workspace paused, and neither beats nor registers.
        assert wait_until(lambda: _asked(hb) > asked, timeout=5)
        assert not wait_until(
            lambda: hb.status().beats_ok > beats or hb.status().state != "paused",
            timeout=3 * INTERVAL,
        )
    assert real_platform.row(ws_id)["status"] == "paused"


def test_delete_is_state_removed_threads_end_within_one_interval(
    real_platform: RealPlatform, hb_files: dict[str, Any], logs: LogCapture
) -> None:
    ws_id, token = real_platform.create_workspace("ext-delete")
    write_token(hb_files["configs_dir"], token)
    hb = _heartbeat(real_platform, ws_id, hb_files, register=True)
    hb.start_thread()
    try:
        assert wait_until(lambda: hb.status().beats_ok >= 1, timeout=10)
        real_platform.delete(ws_id)
        t0 = time.monotonic()
        assert hb.wait(timeout=INTERVAL + 2.0)  # the next cycle, plus its requests
        assert time.monotonic() - t0 <= INTERVAL + 2.0
    finally:
        hb.stop()
    status = hb.status()
    assert status.state == "removed" and not status.running
    errors = logs.messages(logging.ERROR)
    # Said once: by the beat's 410, or first by the state check the stream's removal event
    # asked for (404), whichever comes first.
    assert len(errors) == 1 and ("410" in errors[0] or "state answered 404" in errors[0])


def test_run_exits_with_code_3_when_the_workspace_is_removed(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    ws_id, token = real_platform.create_workspace("ext-run")
    env = _env(
        PLATFORM_URL=real_platform.url,
        WORKSPACE_ID=ws_id,
        MOLECULE_WORKSPACE_TOKEN=token,
        CONFIGS_DIR=str(hb_files["configs_dir"]),
        DELEGATION_RESULTS_FILE=str(hb_files["results_file"]),
        DELEGATION_ACTIVITY_CURSOR_FILE=str(hb_files["cursor_file"]),
        DELEGATION_SEEN_FILE=str(hb_files["seen_file"]),
        HEARTBEAT_INTERVAL_SECONDS="5",
    )
    done = subprocess.run(
        [sys.executable, "-m", "heartbeat_sync", "register"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "heartbeat_sync", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: real_platform.row(ws_id)["status"] == "online", timeout=10)
        threading.Event().wait(1.0)  # the first beat; a subprocess gives no other signal
        real_platform.delete(ws_id)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    assert f"workspace {ws_id} was removed from the platform; exiting with code 3" in err


def test_org_id_header_and_origin_on_the_real_server(
    real_platform: RealPlatform, hb_files: dict[str, Any], logs: LogCapture
) -> None:
    ws_id, token = real_platform.create_workspace("ext-tenant")
    write_token(hb_files["configs_dir"], token)
    # A single-tenant server ignores the org id; a trailing slash in the origin is cut off.
    kw = {"org_id": "11111111-1111-1111-1111-111111111111", "origin": real_platform.url + "/"}
    with _heartbeat(real_platform, ws_id, hb_files, **kw) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2, timeout=10)
    # A foreign Origin is refused with an empty 403: the warning says why.
    with _heartbeat(real_platform, ws_id, hb_files, origin="http://evil.example") as hb:
        assert wait_until(lambda: hb.status().beats_failed >= 1, timeout=10)
    assert any(
        "refuses the Origin 'http://evil.example'" in m for m in logs.messages(logging.WARNING)
    )


def test_the_external_agent_example_against_the_real_server(
    real_platform: RealPlatform, tmp_path: Path
) -> None:
    ws_id, token = real_platform.create_workspace("ext-example")
    peer_id, peer_token = real_platform.create_workspace("ext-peer")
    r = real_platform.request(
        "POST",
        "/registry/register",
        token=peer_token,
        json={"id": peer_id, "delivery_mode": "poll", "agent_card": {}},
    )
    assert r.status_code == 200
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "examples" / "external_agent.py"),
            f"--configs-dir={tmp_path / 'configs'}",
            f"--results-file={tmp_path / 'results.jsonl'}",
            f"--interval={INTERVAL}",
        ],
        env=_env(
            PLATFORM_URL=real_platform.url, WORKSPACE_ID=ws_id, MOLECULE_WORKSPACE_TOKEN=token
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: real_platform.row(ws_id)["status"] == "online", timeout=10)
        r = real_platform.request(
            "POST",
            f"/workspaces/{ws_id}/delegate",
            token=token,
            json={"target_id": peer_id, "task": "collect the numbers"},
        )
        assert r.status_code == 202, r.text
        seen = tmp_path / "results.jsonl.seen"
        assert wait_until(lambda: seen.exists() and seen.read_text().strip() != "", timeout=10)
        # A peer writes to the agent; the answer lands in the peer's own activity.
        assert real_platform.peer_message(ws_id, peer_id, peer_token, "numbers?").status_code == 200

        def answered() -> bool:  # the reply, not the delegation's own row at the peer
            rows = real_platform.activity(peer_id, peer_token, type="a2a_receive")
            return any(
                r["source_id"] == ws_id and "nightly-report here" in json.dumps(r["request_body"])
                for r in rows
            )

        assert wait_until(answered, timeout=10)
        real_platform.delete(ws_id)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "result: [completed]" in out
    # August names the peer (include=peer_info); May does not.
    sender = "ext-peer" if real_platform.august else "a peer"
    assert f"message from {sender}: numbers?" in out
    assert "state: healthy -> removed" in out
    assert token not in out + err


def test_a_workspace_paused_before_the_start_is_neither_beaten_nor_registered(
    real_platform: RealPlatform, hb_files: dict[str, Any]
) -> None:
    # The real server ignores a paused workspace's beats, and a registration would bring it
    # back online: the run looks at the state before either, and announces "paused" first.
    ws_id, token = real_platform.create_workspace("paused-at-start")
    write_token(hb_files["configs_dir"], token)
    real_platform.register(ws_id, token, delivery_mode="poll")
    real_platform.pause(ws_id)
    changes: list[tuple[str, str]] = []
    hb = _heartbeat(
        real_platform,
        ws_id,
        hb_files,
        register=True,
        on_state_change=lambda old, new: changes.append((old, new)),
    )
    with hb:
        assert wait_until(lambda: hb.status().state == "paused", timeout=10), hb.status()
        assert wait_until(lambda: changes == [("starting", "paused")], timeout=5), changes
        before = real_platform.row(ws_id)["last_heartbeat_at"]
        threading.Event().wait(3 * INTERVAL)  # cycles pass: each asks the state, none beats
        status = hb.status()
        assert status.beats_ok == 0 and status.state == "paused"
        assert status.registration == "pending"
    row = real_platform.row(ws_id)
    assert row["status"] == "paused" and row["last_heartbeat_at"] == before


def test_register_refuses_a_removed_workspace_and_keeps_its_token_file(
    real_platform: RealPlatform, tmp_path: Path
) -> None:
    # The real server registers a removed workspace with 200 and a fresh token that no route
    # accepts (its status stays removed).
    ws_id, token = real_platform.create_workspace("removed-register")
    configs = tmp_path / "configs"
    configs.mkdir()
    write_token(configs, token)
    real_platform.delete(ws_id)
    with pytest.raises(RegistrationError) as info:
        register(real_platform.url, ws_id, configs_dir=configs, delivery_mode="poll")
    assert info.value.status == 410 and "removed" in str(info.value)
    assert (configs / ".auth_token").read_text() == token
    assert real_platform.row(ws_id)["status"] == "removed"
