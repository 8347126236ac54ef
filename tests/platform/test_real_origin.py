"""The ``Origin`` header against the real server, which refuses any Origin that is not the
request's own ``scheme://Host`` (or listed in its ``CORS_ORIGINS``) with an empty 403."""

from __future__ import annotations

from typing import Any

import pytest

from heartbeat_sync import Heartbeat

from ._real import RealPlatform, wait_until, write_token

INTERVAL = 0.3


@pytest.mark.parametrize(
    "env_url",
    [
        pytest.param("{url}/", id="trailing-slash"),
        pytest.param("{url}/api/", id="with-a-path"),
        pytest.param("{localhost}", id="another-name-for-the-host"),
    ],
)
def test_beats_pass_the_origin_check_whatever_form_platform_url_has(
    real_platform: RealPlatform,
    hb_files: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    env_url: str,
) -> None:
    """``$PLATFORM_URL`` switches the Origin header on; the header must still be one the
    server accepts, or every request is refused."""
    port = real_platform.url.rsplit(":", 1)[1]
    monkeypatch.setenv(
        "PLATFORM_URL", env_url.format(url=real_platform.url, localhost=f"http://localhost:{port}")
    )
    ws_id, token = real_platform.create_workspace("origin")
    write_token(hb_files["configs_dir"], token)
    with Heartbeat(real_platform.url, ws_id, interval_seconds=INTERVAL, **hb_files) as hb:
        assert wait_until(lambda: hb.status().beats_ok + hb.status().beats_failed >= 2)
        assert hb.status().beats_failed == 0, hb.status().last_error
    assert real_platform.row(ws_id)["status"] == "online"
