"""Registration: ``register()``, ``Heartbeat(register=True)``, tenants and the Origin rule."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat, Registration, RegistrationError, register
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import FixedRandom, HeartbeatFactory, LogCapture, wait_until


@pytest.fixture
def all_logs() -> LogCapture:
    handler = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler  # type: ignore[misc]
    root.removeHandler(handler)
    root.setLevel(old)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- register() -------------------------------------------------------------------------------


def test_a_token_shown_once_is_saved_0600_atomically_before_return_and_never_logged(
    platform: FakePlatform, tmp_path: Path, all_logs: LogCapture
) -> None:
    ws = platform.add_workspace(with_token=False, status="awaiting_agent")
    configs = tmp_path / "configs"
    old = os.umask(0)
    try:
        reg = register(
            platform.url, ws.id, url="http://localhost:9/", configs_dir=configs, agent_card={}
        )
    finally:
        os.umask(old)
    assert ws.token is not None  # the platform minted one, in this answer only
    token_file = configs / ".auth_token"
    assert reg.token_issued and reg.token_file == token_file
    assert token_file.read_text() == ws.token
    assert token_file.stat().st_mode & 0o777 == 0o600
    # Written through a temporary file and os.replace: nothing else is left behind.
    assert {p.name for p in configs.iterdir()} <= {
        ".auth_token",
        ".auth_token.lock",
        ".platform_inbound_secret",
    }
    assert (configs / ".platform_inbound_secret").read_text() == ws.inbound_secret
    assert reg.inbound_secret_saved and reg.delivery_mode == "push"
    assert ws.status == "online" and ws.url == "http://localhost:9/"
    text = "\n".join(r.getMessage() + repr(r.args) for r in all_logs.records)
    assert ws.token not in text and ws.token not in repr(reg)
    assert ws.inbound_secret and ws.inbound_secret not in text + repr(reg)


def test_an_existing_token_is_sent_and_kept_when_the_answer_has_none(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    configs = tmp_path / "configs"
    before = (configs / ".auth_token").read_text()
    reg = register(platform.url, ws.id, configs_dir=configs, delivery_mode="poll")
    assert reg == Registration(
        workspace_id=ws.id,
        status="registered",
        delivery_mode="poll",
        token_issued=False,
        token_file=configs / ".auth_token",
        inbound_secret_saved=True,
    )
    assert (configs / ".auth_token").read_text() == before
    (sent,) = platform.requests_for("register", ws.id)
    assert sent.headers["authorization"] == f"Bearer {ws.token}"
    assert sent.json() == {"id": ws.id, "agent_card": {}, "delivery_mode": "poll"}


def test_a_refusal_is_one_exception_with_status_and_platform_text_never_the_token(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    configs = tmp_path / "configs"
    (configs / ".auth_token").write_text("not-the-token")
    with pytest.raises(RegistrationError) as info:
        register(platform.url, ws.id, configs_dir=configs, delivery_mode="poll")
    assert info.value.status == 401
    assert info.value.error == "invalid workspace auth token"
    assert "not-the-token" not in str(info.value) and "not-the-token" not in repr(info.value)
    # The real server's refusals, as FakePlatform gives them.
    (configs / ".auth_token").write_text(ws.token or "")
    for kwargs, error in [
        ({}, "url is required for push-mode workspaces"),
        ({"url": "http://127.0.0.1:9"}, "url targets a blocked address: loopback address"),
        ({"url": "remote://no-inbound"}, 'url scheme must be http or https, got "remote"'),
    ]:
        with pytest.raises(RegistrationError) as info:
            register(platform.url, ws.id, configs_dir=configs, **kwargs)  # type: ignore[arg-type]
        assert (info.value.status, info.value.error) == (400, error)


def test_an_unreachable_platform_is_a_registration_error_without_status(tmp_path: Path) -> None:
    with pytest.raises(RegistrationError) as info:
        register(f"http://127.0.0.1:{_free_port()}", "w", configs_dir=tmp_path, timeout=2)
    assert info.value.status is None and info.value.transport


def test_arguments_are_validated_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="delivery_mode"):
        register("http://127.0.0.1:9", "w", delivery_mode="pull", configs_dir=tmp_path)
    with pytest.raises(ValueError, match="agent_card"):
        register("http://127.0.0.1:9", "w", agent_card=[], configs_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workspace_id"):
        register("http://127.0.0.1:9", "", configs_dir=tmp_path)
    with pytest.raises(ValueError, match="org_id"):
        register("http://127.0.0.1:9", "w", org_id="a b", configs_dir=tmp_path)


def test_org_id_is_sent_as_x_molecule_org_id_from_the_argument_or_the_environment(
    platform: FakePlatform, ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = tmp_path / "configs"
    register(platform.url, ws.id, configs_dir=configs, delivery_mode="poll", org_id="org-1")
    monkeypatch.setenv("MOLECULE_ORG_ID", "org-2")
    register(platform.url, ws.id, configs_dir=configs, delivery_mode="poll")
    sent = [r.headers.get("x-molecule-org-id") for r in platform.requests_for("register")]
    assert sent == ["org-1", "org-2"]


def test_a_token_is_never_asked_for_where_it_cannot_be_saved(
    platform: FakePlatform, tmp_path: Path
) -> None:
    # A wrong configs_dir (here: below a regular file) would lose the token the platform
    # shows once, and the workspace would be locked out: nothing is sent.
    ws = platform.add_workspace(with_token=False, status="awaiting_agent")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(RegistrationError) as info:
        register(platform.url, ws.id, configs_dir=blocker / "configs", delivery_mode="poll")
    assert "nothing was sent" in str(info.value) and str(blocker) in str(info.value)
    assert not info.value.registered and not info.value.transport
    assert platform.requests_for("register") == []
    assert ws.tokens == []


def test_a_token_that_cannot_be_saved_after_all_is_kept_elsewhere_and_named(
    platform: FakePlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The directory passes the check, but the token file cannot be replaced: the platform
    # has registered the workspace and shown its token once; that is not a refusal.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ws = platform.add_workspace(with_token=False, status="awaiting_agent")
    configs = tmp_path / "configs"
    # What sits under the temp file's name cannot be removed: the save fails at the last step.
    (configs / ".auth_token.tmp").mkdir(parents=True)
    with pytest.raises(RegistrationError) as info:
        register(platform.url, ws.id, configs_dir=configs, delivery_mode="poll")
    error = info.value
    assert error.registered and error.status == 200
    assert "refused" not in str(error) and str(error).startswith("registered, but")
    assert error.token_file is not None and str(error.token_file) in str(error)
    assert error.token_file.read_text() == ws.token
    assert error.token_file.stat().st_mode & 0o777 == 0o600
    assert ws.token not in str(error) + repr(error)
    assert ws.status == "online"


def test_registering_a_removed_workspace_is_refused_and_its_token_file_left_alone(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    # The real server answers such a registration 200 with a fresh token that no route
    # accepts; saving it would replace the old token file and report success.
    configs = tmp_path / "configs"
    before = (configs / ".auth_token").read_text()
    platform.delete(ws.id)
    with pytest.raises(RegistrationError) as info:
        register(platform.url, ws.id, configs_dir=configs, delivery_mode="poll")
    assert info.value.status == 410 and "removed" in str(info.value)
    assert platform.requests_for("register") == []
    assert (configs / ".auth_token").read_text() == before


def test_register_refuses_a_platform_url_with_user_info_before_sending_basic_auth(
    platform: FakePlatform, ws: Workspace, tmp_path: Path
) -> None:
    """The user info went out as Basic auth over the token: a 401, and no registration."""
    url = platform.url.replace("http://", "http://agent:s3cret-pw@")
    with pytest.raises(ValueError, match=r"^platform_url may not carry user info") as raised:
        register(url, ws.id, configs_dir=tmp_path / "configs", delivery_mode="poll")
    assert "s3cret-pw" not in str(raised.value)
    assert platform.requests == []


@pytest.mark.parametrize(
    "timeout", [0, -1, float("nan"), float("inf"), 1e300, 3600.5, "10", True, None]
)
def test_register_refuses_a_timeout_outside_the_range_before_sending(
    platform: FakePlatform, ws: Workspace, tmp_path: Path, timeout: Any
) -> None:
    """0, -1 and NaN came back as transport errors; a huge timeout could end the watchdog
    thread every request shares."""
    with pytest.raises(ValueError, match=r"^timeout must be a number in \(0, 3600\]"):
        register(platform.url, ws.id, configs_dir=tmp_path / "configs", timeout=timeout)
    assert platform.requests == []


@pytest.mark.parametrize(
    "bad",
    ["\ufefforg-1", "org-\u200b1", "acme\u2013prod", "org 1"],
    ids=["byte-order-mark", "zero-width-space", "typographic-dash", "inner-space"],
)
@pytest.mark.parametrize("source", ["argument", "environment"])
def test_register_refuses_an_org_id_a_header_cannot_carry_before_sending(
    platform: FakePlatform,
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad: str,
    source: str,
) -> None:
    kwargs = {"org_id": bad} if source == "argument" else {}
    if source == "environment":
        monkeypatch.setenv("MOLECULE_ORG_ID", bad)
    named = "org_id" if source == "argument" else r"\$MOLECULE_ORG_ID"
    with pytest.raises(ValueError, match=rf"^{named} must be printable ASCII"):
        register(platform.url, ws.id, configs_dir=tmp_path / "configs", **kwargs)  # type: ignore[arg-type]
    assert platform.requests == []


# --- Heartbeat(register=True) ------------------------------------------------------------------


def test_heartbeat_registers_on_the_beat_thread_before_the_first_beat(
    platform: FakePlatform, tmp_path: Path
) -> None:
    ws = platform.add_workspace(with_token=False, status="awaiting_agent", name="ext")
    configs = tmp_path / "configs"
    # Explicit files: the workspace has no token for agent_files to write (the registration
    # brings it).
    with Heartbeat(
        platform.url,
        ws.id,
        interval_seconds=0.2,
        results_file=tmp_path / "r.jsonl",
        cursor_file=tmp_path / "c",
        seen_file=tmp_path / "s",
        configs_dir=configs,
        rng=FixedRandom(0.0),
        exit_timeout=None,
        register=True,
        agent_url="http://localhost:8765",
        agent_card={"name": "ext-agent"},
    ) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
    routes = [r.route for r in platform.requests]
    # The run looks at the workspace's state first (a paused one is never registered), then
    # registers, then beats.
    assert routes.count("register") == 1
    assert routes.index("state") < routes.index("register") < routes.index("heartbeat")
    assert ws.status == "online" and ws.url == "http://localhost:8765"
    assert ws.agent_card == {"name": "ext-agent"}
    assert (configs / ".auth_token").read_text() == ws.token
    # Every beat carries the token the registration issued.
    beats = platform.requests_for("heartbeat", ws.id)
    assert beats and all(r.headers["authorization"] == f"Bearer {ws.token}" for r in beats)


def test_a_workspace_the_platform_does_not_know_yet_is_created_by_the_registration(
    platform: FakePlatform, tmp_path: Path
) -> None:
    # The first look at the state finds no such workspace (404): that is not a removal when
    # a registration is owed, which creates it. Explicit files: the platform knows no such
    # workspace for agent_files to lay out.
    hb = Heartbeat(
        platform.url,
        "ws-new",
        interval_seconds=0.2,
        results_file=tmp_path / "r.jsonl",
        cursor_file=tmp_path / "c",
        seen_file=tmp_path / "s",
        configs_dir=tmp_path / "configs",
        exit_timeout=None,
        register=True,
    )
    with hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        assert hb.status().registration == "registered" and hb.status().state == "healthy"
    assert platform.workspace("ws-new").status == "online"


def test_registration_without_agent_url_is_poll_mode(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with make_hb(register=True) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
    assert platform.requests_for("register")[0].json()["delivery_mode"] == "poll"
    assert ws.delivery_mode == "poll"


def test_registration_is_retried_while_unreachable_without_blocking_the_caller(
    tmp_path: Path,
) -> None:
    port = _free_port()
    fp = FakePlatform(port=port)  # not started yet: connections are refused
    # Explicit files: the workspace does not exist yet, nor its token.
    hb = Heartbeat(
        f"http://127.0.0.1:{port}",
        "ws-1",
        interval_seconds=0.3,
        results_file=tmp_path / "r.jsonl",
        cursor_file=tmp_path / "c",
        seen_file=tmp_path / "s",
        configs_dir=tmp_path / "configs",
        rng=FixedRandom(0.0),
        exit_timeout=None,
        register=True,
    )
    try:
        t0 = time.monotonic()
        hb.start_thread()
        assert time.monotonic() - t0 < 0.5
        # The platform stays down for two cycles: their beats are tried (and fail).
        assert wait_until(lambda: hb.status().beats_failed >= 2)
        status = hb.status()
        assert status.beats_ok == 0 and status.state == "degraded"
        assert status.registration == "pending"
        with fp:
            fp.add_workspace("ws-1", with_token=False, status="awaiting_agent")
            assert wait_until(lambda: hb.status().registration == "registered", timeout=8)
            assert wait_until(lambda: hb.status().beats_ok >= 1, timeout=8)
            assert fp.workspace("ws-1").status == "online"
            assert (tmp_path / "configs" / ".auth_token").read_text() == fp.workspace("ws-1").token
    finally:
        assert hb.stop(timeout=5)


def test_registration_with_an_agent_url_asks_for_push_even_from_poll_mode(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    # The platform keeps a workspace's earlier mode when the body names none.
    ws.delivery_mode = "poll"
    with make_hb(register=True, agent_url="http://localhost:7000") as hb:
        assert wait_until(lambda: hb.status().registration == "registered")
    assert platform.requests_for("register")[0].json()["delivery_mode"] == "push"
    assert ws.delivery_mode == "push" and ws.url == "http://localhost:7000"


def test_a_heartbeat_whose_new_token_cannot_be_saved_beats_with_it_and_says_where_it_is(
    platform: FakePlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ws = platform.add_workspace(with_token=False, status="awaiting_agent")
    configs = tmp_path / "configs"
    (configs / ".auth_token.tmp").mkdir(parents=True)  # the save fails at its last step
    # Explicit files: a configs dir where no token can be saved, and no token yet.
    hb = Heartbeat(
        platform.url,
        ws.id,
        interval_seconds=0.2,
        results_file=tmp_path / "r.jsonl",
        cursor_file=tmp_path / "c",
        seen_file=tmp_path / "s",
        configs_dir=configs,
        exit_timeout=None,
        register=True,
    )
    with hb:
        assert wait_until(lambda: hb.status().registration == "registered")
        assert wait_until(lambda: hb.status().beats_ok >= 2)
        error = hb.status().registration_error
    assert error is not None and error.startswith("registered, but")
    kept = next((tmp_path / "home" / ".molecule-workspace").glob(f"auth_token-{ws.id}-*"))
    assert str(kept) in error and kept.read_text() == ws.token
    beats = platform.requests_for("heartbeat", ws.id)
    assert beats[-1].headers["authorization"] == f"Bearer {ws.token}"
    assert len(platform.requests_for("register")) == 1
    errors = logs.messages(logging.ERROR)
    assert len(errors) == 1 and "refused" not in errors[0] and str(kept) in errors[0]


def test_registration_retries_wait_for_retry_after_whatever_the_agent_asks(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    # beat_now() and a new current_task wake the beat thread for a cycle; they must not
    # bring the next registration attempt forward. (A busy 503: a 429 would hold the beats
    # too, every request of the rate limit's key, see test_rate_limit.py.)
    platform.fault("register", status=503, headers={"Retry-After": "30"})
    hb = make_hb(register=True, interval_seconds=0.1)
    hb.start_thread()
    assert platform.wait_for_requests("register", 1)
    for n in range(40):
        hb.current_task = f"task {n}"
        hb.beat_now()
        if n % 10 == 0:
            assert platform.wait_for_requests("heartbeat", 1 + n // 10, timeout=3)
    assert wait_until(lambda: hb.status().beats_ok >= 5)
    assert len(platform.requests_for("register")) == 1
    assert hb.status().registration == "pending"
    t0 = time.monotonic()
    assert hb.stop(timeout=5.0) and time.monotonic() - t0 < 2.0


def test_registration_honours_a_short_retry_after(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("register", status=503, headers={"Retry-After": "1"}, times=1)
    with make_hb(register=True, interval_seconds=0.1) as hb:
        assert wait_until(lambda: hb.status().registration == "registered", timeout=5)
    first, second = platform.requests_for("register")
    assert 0.9 <= second.time - first.time < 3.0


def test_a_registration_that_always_fails_never_stops_the_beats_and_is_given_up(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    # The real server answers 500 to a card it cannot store: retried a few times, between
    # beats, then given up with one ERROR line; status() says why.
    platform.fault("register", status=500, body={"error": "registration failed"})
    with make_hb(register=True, interval_seconds=0.1) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2, timeout=3)
        assert wait_until(lambda: hb.status().registration == "failed", timeout=10)
        status = hb.status()
        assert status.registration_error is not None and "500" in status.registration_error
        beats = status.beats_ok
        assert wait_until(lambda: hb.status().beats_ok >= beats + 2)
    assert len(platform.requests_for("register")) == 5
    errors = logs.messages(logging.ERROR)
    assert len(errors) == 1 and "registration refused (5 tries)" in errors[0]


def test_a_workspace_paused_before_the_start_is_never_beaten_nor_reported_healthy(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.pause(ws.id)
    seen: list[tuple[str, str]] = []
    hb = make_hb(
        register=True, events=False, on_state_change=lambda old, new: seen.append((old, new))
    )
    hb.start_thread()
    assert wait_until(lambda: hb.status().state == "paused")
    assert platform.wait_for_requests("state", 3, timeout=3)  # checked again each cycle
    status = hb.status()
    assert status.beats_ok == 0 and status.workspace_status == "paused"
    assert wait_until(lambda: seen == [("starting", "paused")])
    assert platform.requests_for("heartbeat") == []
    assert platform.requests_for("register") == []  # a pause is never undone by the agent
    assert ws.status == "paused"
    assert hb.stop()


def test_a_refused_registration_is_one_error_and_the_heartbeat_beats_on(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    with make_hb(register=True, agent_url="http://127.0.0.1:9") as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2)
    assert len(platform.requests_for("register")) == 1
    errors = logs.messages(logging.ERROR)
    assert len(errors) == 1 and "loopback address" in errors[0]


def test_bad_registration_arguments_fail_at_construction(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    with pytest.raises(ValueError, match="agent_card"):
        make_hb(register=True, agent_card="card")
    with pytest.raises(ValueError, match="on_state_change"):
        make_hb(on_state_change=3)


# --- tenants and Origin ------------------------------------------------------------------------


def test_org_id_goes_with_every_request_of_both_threads(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOLECULE_ORG_ID", "tenant-7")
    platform.add_delegation(ws.id, status="completed", response_preview="42")
    with make_hb(register=True) as hb:
        assert hb.org_id == "tenant-7"
        assert wait_until(lambda: hb.status().notifications_sent >= 1 and hb.status().wakeups_sent)
    seen = {r.route: r.headers.get("x-molecule-org-id") for r in platform.requests}
    assert {
        "register",
        "heartbeat",
        "delegations",
        "activity",
        "a2a",
        "notify",
        "workspace",
    } <= set(seen)
    assert set(seen.values()) == {"tenant-7"}


def test_origin_is_scheme_and_host_only(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    # A PLATFORM_URL with a trailing slash sent verbatim is refused by the real server (403).
    with make_hb(origin=platform.url + "/") as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
    assert {r.headers.get("origin") for r in platform.requests} == {platform.url}


def test_an_empty_403_warning_names_the_origin_rule(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    platform.fault("heartbeat", status=403, body=b"")
    with make_hb(origin="http://canvas.example") as hb:
        assert wait_until(lambda: hb.status().beats_failed >= 1)
    warnings = [m for m in logs.messages(logging.WARNING) if "heartbeat failed" in m]
    assert warnings
    assert "refuses the Origin 'http://canvas.example'" in warnings[0]
    assert "its own scheme://host or a configured canvas origin" in warnings[0]


def test_an_empty_404_warning_names_the_org_id(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    platform.fault("delegations", status=404, body=b"")
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        assert wait_until(
            lambda: any("X-Molecule-Org-Id" in m for m in logs.messages(logging.WARNING))
        )
        assert hb.status().state == "healthy"  # a tenant guard's 404 is not a removal
