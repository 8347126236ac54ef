"""A hostile or broken server: trickled answers, redirects, answers that quote the token,
a wake-up the platform says it delivered, and urllib3's own warnings during an outage."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from heartbeat_sync.testing import FakePlatform, Response, Workspace

from .conftest import HeartbeatFactory, LogCapture, read_lines, wait_for_beats, wait_until


class AllWarnings(logging.Handler):
    """Every WARNING-or-worse record of every logger, formatted with any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.records.append(record)

    def lines(self) -> list[str]:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        with self._guard:
            return [formatter.format(r) for r in self.records]


@pytest.fixture
def all_warnings() -> Iterator[AllWarnings]:
    handler = AllWarnings()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def _all_log_text(logs: LogCapture) -> str:
    """Every record of the heartbeat_sync tree, as a handler would print it (tracebacks too)."""
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in list(logs.records))


# --- 1. a trickling server -------------------------------------------------------------------


@pytest.mark.parametrize("route", ["heartbeat", "delegations"])
def test_a_server_trickling_its_answer_cannot_stall_the_beat_thread(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, route: str
) -> None:
    """A byte every 0.2 s never trips a 0.5 s read timeout: only a whole-request deadline
    ends such a request. Every request ends within request_timeout plus a small slack."""
    platform.fault(route, trickle=0.2)
    hb = make_hb(interval_seconds=0.2, request_timeout=0.5)
    with hb:
        assert platform.wait_for_requests(route, 4, timeout=6), "the beat thread is stalled"
    times = [r.time for r in platform.requests_for(route)[:4]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # One cycle a slot (0.2 s) unless a request holds it up; never longer than its deadline.
    assert max(gaps) < 0.5 + 0.5, gaps
    if route == "heartbeat":
        assert "no complete answer within 0.5 s" in (hb.status().last_error or "")


def test_stop_ends_a_trickled_request_at_once(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("heartbeat", trickle=0.2)
    hb = make_hb(request_timeout=30.0)
    hb.start_thread()
    assert platform.wait_for_requests("heartbeat", 1, timeout=5)
    started = time.monotonic()
    assert hb.stop(timeout=2.0)
    assert time.monotonic() - started < 1.0


# --- 2. the token never reaches a log line or status() --------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda t: t[:20] + "\n" + t[20:], id="inner-newline"),
        pytest.param(lambda t: t[:20] + "\u00e9" + t[20:], id="non-ascii"),
        pytest.param(lambda t: t[:20] + "\x00" + t[20:], id="control-character"),
    ],
)
def test_a_damaged_token_is_refused_without_quoting_it(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
    damage: object,
) -> None:
    """requests would raise an error quoting 'Bearer <token>'; it went to a WARNING and to
    status().last_error. The token is refused when read, with one message that names the
    file and not the value, and no exception text that could hold a header is logged."""
    assert ws.token and callable(damage)
    token_file = tmp_path / "configs" / ".auth_token"
    token_file.write_text(damage(ws.token))
    hb = make_hb(interval_seconds=0.05)
    with hb:
        assert wait_until(lambda: hb.status().beats_failed >= 3, timeout=5)
        status = hb.status()
    head, tail = ws.token[:20], ws.token[20:]
    text = _all_log_text(logs) + "\n" + repr(status)
    assert head not in text and tail not in text
    assert "Traceback" not in text
    refused = [m for m in logs.messages(logging.WARNING) if "ignoring the token" in m]
    assert refused and str(token_file) in refused[0]
    # Sent without a token, the beat is refused by the platform as unauthenticated.
    assert all("authorization" not in r.headers for r in platform.requests_for("heartbeat"))
    assert "missing workspace auth token" in (status.last_error or "")


def test_a_token_file_saved_with_a_bom_and_a_newline_is_used(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
) -> None:
    """An editor's UTF-8 BOM made every beat fail with a UnicodeEncodeError whose repr holds
    the header (and a full traceback each cycle). The BOM and surrounding white space are
    stripped when the token is read."""
    assert ws.token
    (tmp_path / "configs" / ".auth_token").write_bytes(
        b"\xef\xbb\xbf" + ws.token.encode() + b"\r\n"
    )
    hb = make_hb()
    with hb:
        assert wait_until(lambda: hb.status().beats_ok >= 2, timeout=5)
    assert platform.requests_for("heartbeat")[0].headers["authorization"] == f"Bearer {ws.token}"
    assert "Traceback" not in _all_log_text(logs)
    assert not logs.messages(logging.WARNING)


def test_a_damaged_token_from_the_environment_is_refused_without_quoting_it(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    tmp_path: Path,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ws.token
    (tmp_path / "configs" / ".auth_token").unlink()
    monkeypatch.setenv("MOLECULE_WORKSPACE_TOKEN", ws.token[:20] + "\u201d" + ws.token[20:])
    hb = make_hb(interval_seconds=0.05)
    with hb:
        assert wait_until(lambda: hb.status().beats_failed >= 2, timeout=5)
        status = hb.status()
    text = _all_log_text(logs) + repr(status)
    assert ws.token[:20] not in text and ws.token[20:] not in text
    assert any("MOLECULE_WORKSPACE_TOKEN" in m for m in logs.messages(logging.WARNING))


def test_no_exception_text_that_may_quote_a_header_is_logged_or_kept() -> None:
    """The client names such an exception by its type alone."""
    from heartbeat_sync.wire.client import describe_error

    secret = "Bearer s3cr3t-t0ken"
    header_error = requests.exceptions.InvalidHeader(f"bad header value: {secret!r}")
    encode_error = UnicodeEncodeError("latin-1", secret + "\ufeff", 19, 20, "no")
    for exc in (header_error, encode_error, ValueError(secret)):
        assert "s3cr3t" not in describe_error(exc)
        assert type(exc).__name__ in describe_error(exc)
    refused = requests.ConnectionError("HTTPConnectionPool(host='p', port=1): refused")
    assert "refused" in describe_error(refused)  # a transport error keeps its (safe) text


# --- 3. redirects are never followed ----------------------------------------------------------


@pytest.fixture
def elsewhere(ws: Workspace) -> Iterator[FakePlatform]:
    """Another server that answers 200 on the same paths (a login page, a proxy)."""
    with FakePlatform() as other:
        other.add_workspace(ws.id)
        yield other


def _login_page(elsewhere: FakePlatform, ws: Workspace) -> str:
    return elsewhere.url.replace("127.0.0.1", "localhost") + f"/workspaces/{ws.id}"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirected_heartbeat_is_a_failed_beat(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    elsewhere: FakePlatform,
    status: int,
) -> None:
    """requests turned a redirected POST into a GET of the Location, and took that page's
    200 for a beat: status() said healthy while the platform heard nothing."""
    platform.fault("heartbeat", status=status, headers={"Location": _login_page(elsewhere, ws)})
    hb = make_hb()
    with hb:
        assert wait_until(lambda: hb.status().beats_failed >= 2, timeout=5)
        status_now = hb.status()
    assert status_now.beats_ok == 0 and status_now.state != "healthy"
    host = elsewhere.url.replace("http://127.0.0.1", "localhost")
    assert f"answered {status}: a redirect to {host}, not followed" in (status_now.last_error or "")
    assert elsewhere.requests == []


def test_a_redirect_names_only_the_locations_host(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    location = "https://user:hunter2@login.example:8443/sso?next=/registry/heartbeat"
    platform.fault("heartbeat", status=302, headers={"Location": location})
    hb = make_hb()
    with hb:
        assert wait_until(lambda: hb.status().beats_failed >= 1, timeout=5)
    error = hb.status().last_error or ""
    assert "a redirect to login.example:8443, not followed" in error
    assert "hunter2" not in error and "sso" not in error


@pytest.mark.parametrize("route", ["a2a", "notify"])
def test_a_redirected_wakeup_or_notification_is_not_counted_as_sent(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    elsewhere: FakePlatform,
    route: str,
) -> None:
    platform.fault(route, status=302, headers={"Location": _login_page(elsewhere, ws)})
    platform.add_delegation(ws.id, status="completed", response_preview="42")
    hb = make_hb()
    with hb:
        assert wait_until(lambda: len(platform.requests_for(route)) >= 1, timeout=5)
        assert wait_until(lambda: hb.status().side_effects_dropped >= 1, timeout=5)
        status = hb.status()
    if route == "a2a":
        assert status.wakeups_sent == 0 and status.drops.get("wakeup_failed") == 1
    else:
        assert status.notifications_sent == 0 and status.drops.get("notify_failed") == 1
    assert elsewhere.requests == []


# --- 5. a wake-up the platform says it delivered ----------------------------------------------


def test_a_wakeup_the_platform_delivered_is_not_sent_again(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    """The proxy answers 502 with delivery_confirmed: true when the agent got the message but
    its answer was lost (docs/platform.md §2.9); a retry would wake the agent twice."""
    platform.set_a2a_responses(
        ws.id,
        [
            Response(
                status=502,
                body={"error": "failed to read agent response", "delivery_confirmed": True},
                headers={"Retry-After": "0"},
            )
        ],
    )
    platform.add_delegation(ws.id, status="completed", response_preview="42")
    hb = make_hb(wakeup_retry_deadline=30.0)
    with hb:
        assert wait_until(lambda: hb.status().wakeups_sent == 1, timeout=5)
        assert hb.flush(1.0)
        # No second attempt follows (a retry would come at once): none in three more cycles.
        assert wait_for_beats(platform, 3)
        assert len(platform.requests_for("a2a")) == 1
    assert hb.status().drops == {}


def test_a_wakeup_the_platform_did_not_deliver_is_still_retried(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.set_a2a_responses(
        ws.id,
        [
            Response(
                status=502,
                body={"error": "failed to read agent response", "delivery_confirmed": False},
                headers={"Retry-After": "0"},
            )
        ],
    )
    platform.add_delegation(ws.id, status="completed", response_preview="42")
    hb = make_hb(wakeup_retry_deadline=30.0)
    with hb:
        assert platform.wait_for(lambda: len(platform.requests_for("a2a")) == 2, timeout=5)
        assert wait_until(lambda: hb.status().wakeups_sent == 1, timeout=5)


# --- 11. urllib3's retry warnings during an outage -------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_outage_logs_a_bounded_number_of_warnings(
    ws: Workspace, make_hb: HeartbeatFactory, all_warnings: AllWarnings
) -> None:
    """Each refused connection was retried with a 'Retrying (...)' WARNING from urllib3's
    logger, outside the library's rate limit: 30 of them in a 3 s outage."""
    down = f"http://127.0.0.1:{_closed_port()}"
    hb = make_hb(platform_url=down, interval_seconds=0.1)
    with hb:
        assert wait_until(lambda: hb.status().beats_failed >= 12, timeout=10)
    lines = all_warnings.lines()
    assert not [line for line in lines if line.startswith("urllib3")], lines
    # The library's own: the first 3 failures, then every 10th.
    assert 3 <= len(lines) <= 4, lines


def test_the_users_own_requests_still_log_urllib3_warnings(
    ws: Workspace, make_hb: HeartbeatFactory, all_warnings: AllWarnings
) -> None:
    down = f"http://127.0.0.1:{_closed_port()}"
    hb = make_hb(platform_url=down, interval_seconds=0.1)
    with hb:
        assert wait_until(lambda: hb.status().beats_failed >= 2, timeout=5)
        session = requests.Session()
        session.mount("http://", HTTPAdapter(max_retries=Retry(connect=1, backoff_factor=0)))
        with pytest.raises(requests.ConnectionError):
            session.get(down, timeout=1)
        session.close()
    retrying = [line for line in all_warnings.lines() if "Retrying" in line]
    assert len(retrying) == 1 and retrying[0].startswith("urllib3.connectionpool WARNING")


def test_results_still_arrive_after_a_redirect_fault_clears(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    """A redirect is one failed request, not a state: the next cycle works."""
    platform.fault("delegations", status=302, headers={"Location": "/login"}, times=1)
    did = platform.add_delegation(ws.id, status="completed", response_preview="42")
    with make_hb():
        assert wait_until(lambda: len(read_lines(tmp_path / "results.jsonl")) == 1, timeout=5)
    assert did in read_lines(tmp_path / "results.jsonl")[0]
