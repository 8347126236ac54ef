"""The ``Origin`` header: the platform refuses every request whose Origin is not the request's
own ``scheme://Host`` (or one of its ``CORS_ORIGINS``) with an empty 403, so the library sends
exactly that form whatever shape ``$PLATFORM_URL`` or ``origin`` has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from heartbeat_sync.testing import FakePlatform, Workspace
from heartbeat_sync.wire.auth import origin_of

from .conftest import HeartbeatFactory, wait_until


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("{url}", True),
        ("https://127.0.0.1:{port}", True),
        ("http://localhost:3000", True),
        ("http://localhost:3001", True),
        ("{url}/", False),
        ("{url}/api", False),
        ("HTTP://127.0.0.1:{port}", False),
        ("http://localhost:{port}", False),
        ("http://evil.example", False),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/registry/heartbeat"),
        ("GET", "/workspaces/{ws}/delegations"),
        ("GET", "/workspaces/{ws}"),
        ("GET", "/no/such/route"),
    ],
)
def test_fake_platform_checks_origin_like_the_real_server(
    platform: FakePlatform, ws: Workspace, origin: str | None, allowed: bool, method: str, path: str
) -> None:
    port = platform.url.rsplit(":", 1)[1]
    headers = {"Authorization": f"Bearer {ws.token}"}
    if origin is not None:
        headers["Origin"] = origin.format(url=platform.url, port=port)
    body = {"workspace_id": ws.id, "uptime_seconds": 1}
    resp = requests.request(
        method, platform.url + path.format(ws=ws.id), json=body, headers=headers, timeout=5
    )
    if allowed:
        assert resp.status_code != 403
    else:
        assert resp.status_code == 403
        assert resp.content == b""


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://platform:8080/api/v1/", "http://platform:8080"),
        ("HTTPS://Platform.Example.COM/", "https://platform.example.com"),
        ("http://platform:80", "http://platform"),
        ("https://platform:443/x", "https://platform"),
        ("https://platform:8443", "https://platform:8443"),
        ("http://user:pw@platform:8080", "http://platform:8080"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        (" http://platform:8080 ", "http://platform:8080"),
    ],
)
def test_origin_of_is_the_form_the_server_compares(url: str, origin: str) -> None:
    assert origin_of(url) == origin


@pytest.mark.parametrize("url", ["", "platform:8080", "ftp://platform", "http://", "/api"])
def test_origin_of_refuses_what_has_no_origin(url: str) -> None:
    with pytest.raises(ValueError):
        origin_of(url)


@pytest.mark.parametrize(
    "env_url",
    [
        pytest.param("{url}/", id="trailing-slash"),
        pytest.param("{url}/api/", id="with-a-path"),
        pytest.param("http://localhost:{port}", id="another-name-for-the-host"),
    ],
)
def test_platform_url_in_another_form_still_passes_the_origin_check(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    monkeypatch: pytest.MonkeyPatch,
    env_url: str,
) -> None:
    """``$PLATFORM_URL`` turns the header on; its value is the platform URL's own origin."""
    port = platform.url.rsplit(":", 1)[1]
    monkeypatch.setenv("PLATFORM_URL", env_url.format(url=platform.url, port=port))
    hb = make_hb()
    hb.start_thread()
    assert wait_until(lambda: hb.status().beats_ok + hb.status().beats_failed >= 2)
    assert hb.status().beats_failed == 0, hb.status().last_error
    sent = platform.requests_for("heartbeat", ws.id)[0].headers
    assert sent["origin"] == platform.url


def test_an_explicit_origin_is_sent_in_its_serialised_form(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb(origin=platform.url.upper().replace("HTTP", "http") + "/")
    hb.start_thread()
    assert wait_until(lambda: hb.status().beats_ok >= 1), hb.status().last_error
    assert platform.requests_for("heartbeat", ws.id)[0].headers["origin"] == platform.url


def test_no_platform_url_and_no_origin_sends_no_header(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    hb = make_hb()
    hb.start_thread()
    assert wait_until(lambda: hb.status().beats_ok >= 1)
    assert "origin" not in platform.requests_for("heartbeat", ws.id)[0].headers


@pytest.mark.parametrize("origin", ["platform:8080", "ftp://platform", "/"])
def test_an_origin_that_is_not_an_http_url_is_refused_at_construction(
    make_hb: HeartbeatFactory, origin: str, tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = {"origin": origin}
    with pytest.raises(ValueError, match="origin"):
        make_hb(**kwargs)
