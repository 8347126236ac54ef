"""HTTP behaviour: what is retried, Retry-After caps, rate-limited warnings, outages, bodies."""

from __future__ import annotations

import email.utils
import logging
import math
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from urllib3.util.retry import Retry

from heartbeat_sync.testing import FakePlatform, Workspace
from heartbeat_sync.wire.http import (
    _Watchdog,
    abort_session,
    make_retry,
    make_session,
    parse_retry_after,
)

from .conftest import HeartbeatFactory, LogCapture, read_lines, wait_until


def test_retry_policy_matches_the_design() -> None:
    retry = make_retry(retry_after_cap=2.0)
    assert isinstance(retry, Retry)
    for status in (502, 503, 504):
        assert retry.is_retry("GET", status)
        assert not retry.is_retry("POST", status)
    # A 429's wait is its whole key's (wire.ratelimit): retried within a request, it would
    # only spend the limit again.
    assert not retry.is_retry("GET", 429)
    assert not retry.is_retry("GET", 500)
    assert retry.connect and retry.connect >= 1  # connect errors: every method
    assert retry.backoff_factor > 0 and retry.backoff_jitter > 0
    assert retry.parse_retry_after("3600") == 2.0
    assert retry.new(total=1).parse_retry_after("3600") == 2.0  # the cap survives new()


def test_no_deadline_however_far_ends_the_watchdog_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline far off (a huge timeout) made Condition.wait overflow and ended the thread
    that bounds every request of the process; a NaN one did the same."""
    died: list[BaseException | None] = []
    hook = threading.excepthook

    def record(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name == "heartbeat-sync-watchdog":
            died.append(args.exc_value)
        else:
            hook(args)

    monkeypatch.setattr(threading, "excepthook", record)
    watchdog = _Watchdog()
    watchdog.IDLE_EXIT = 0.2  # the longest single wait, and the idle time before it ends
    far = [watchdog.arm(time.monotonic() + 1e300, lambda: None)]
    thread = watchdog._thread
    assert thread is not None

    def ended() -> bool:
        return bool(died) or not thread.is_alive()

    assert not wait_until(ended, timeout=0.5), died
    far += [watchdog.arm(at, lambda: None) for at in (math.inf, math.nan)]
    fired = threading.Event()
    watchdog.arm(time.monotonic() + 0.1, fired.set)  # a request's deadline is still kept
    assert fired.wait(5)
    assert not wait_until(ended, timeout=0.5), died
    assert watchdog._thread is thread
    for entry in far:
        watchdog.disarm(entry)
    assert wait_until(lambda: not thread.is_alive())  # idle, it ends as ever
    assert died == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 7 ", 7.0),
        # delay-seconds is digits only (RFC 9110 §10.2.3), as urllib3 reads it: a fraction or
        # a sign is malformed, and the caller falls back to its own delay.
        (" 1.5 ", None),
        ("-4", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    got = parse_retry_after(value)
    assert got == expected
    assert got is None or type(got) is float


def test_parse_retry_after_huge_delay_is_a_finite_float() -> None:
    got = parse_retry_after("9" * 400)
    assert got is not None and math.isfinite(got)


def test_parse_retry_after_http_date_in_the_future() -> None:
    got = parse_retry_after(email.utils.formatdate(time.time() + 100, usegmt=True))
    assert got is not None and 95.0 <= got <= 100.0


def test_parse_retry_after_agrees_with_the_retry_policy() -> None:
    """The status a client reports waits as long as urllib3 waits before retrying a GET."""
    retry = make_retry(retry_after_cap=60.0)
    for value in ("0", "3", "42"):
        assert parse_retry_after(value) == retry.parse_retry_after(value)


def test_gets_are_retried_on_503_with_backoff(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    platform.fault("delegations", status=503, times=2)
    did = platform.add_delegation(ws.id, status="completed")
    with make_hb(interval_seconds=30.0):
        assert platform.wait_for_requests("delegations", 3, timeout=5)
        assert wait_until(lambda: len(read_lines(tmp_path / "results.jsonl")) == 1)
    assert [r.status for r in platform.requests_for("delegations")[:3]] == [503, 503, 200]
    assert did in read_lines(tmp_path / "results.jsonl")[0]


def test_posts_are_not_retried_on_status_or_dropped_connection(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("heartbeat", status=503, times=1)
    platform.fault("heartbeat", drop=True, times=1)
    hb = make_hb(interval_seconds=30.0)
    with hb:
        assert wait_until(lambda: hb.status().beats_failed == 1, timeout=5)
        assert len(platform.requests_for("heartbeat")) == 1
        hb.beat_now()
        assert wait_until(lambda: hb.status().beats_failed == 2, timeout=5)
        assert len(platform.requests_for("heartbeat")) == 2


def test_retry_after_is_capped_below_the_interval(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("delegations", status=503, headers={"Retry-After": "3600"}, times=1)
    with make_hb(interval_seconds=0.4):
        assert platform.wait_for_requests("delegations", 2, timeout=3)
    first, second = platform.requests_for("delegations")[:2]
    assert second.time - first.time < 0.4


def test_failure_warnings_are_rate_limited(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    platform.fault("heartbeat", status=500)
    with make_hb(interval_seconds=0.02) as hb:
        assert wait_until(lambda: hb.status().beats_failed >= 21, timeout=10)
    warned = [m for m in logs.messages(logging.WARNING) if "heartbeat failed" in m]
    counts = [int(m.split("(")[1].split()[0]) for m in warned]
    assert counts[:5] == [1, 2, 3, 10, 20]


def test_session_rebuilt_after_ten_failures_and_outage_keeps_the_schedule(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    made: list[requests.Session] = []

    def factory() -> requests.Session:
        session = make_session()
        made.append(session)
        return session

    platform.fault("heartbeat", drop=True)
    interval = 0.05
    hb = make_hb(interval_seconds=interval, session_factory=factory)
    with hb:
        assert wait_until(lambda: hb.status().beats_failed >= 12, timeout=10)
        failed = hb.status().beats_failed
        window_start = time.monotonic()
        count_start = len(platform.requests_for("heartbeat"))
        assert wait_until(lambda: hb.status().beats_failed >= failed + 10, timeout=10)
        beats = len(platform.requests_for("heartbeat")) - count_start
        elapsed = time.monotonic() - window_start
    # One attempt per slot, never a spin (the reference retries ~25 times a second): ten more
    # failed cycles took their ten slots.
    assert beats <= elapsed / interval + 2
    assert len(made) >= 2  # the beat thread's first session, and the rebuilt one


def test_outage_then_recovery_within_one_interval(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    interval = 0.1
    with make_hb(interval_seconds=interval) as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 1)
        platform.stop()
        assert wait_until(lambda: hb.status().consecutive_failures >= 5, timeout=10)
        platform.start()
        failed = hb.status().beats_failed
        assert wait_until(lambda: hb.status().state == "healthy", timeout=5)
        # Within one interval: the cycle under way as the platform came back may still have
        # failed; the next one beat.
        assert hb.status().beats_failed <= failed + 1
    assert any("recovered" in m for m in logs.messages(logging.INFO))


def test_huge_get_body_is_abandoned_not_buffered(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    platform.fault("delegations", body_size=20 * 1024 * 1024, times=1)
    platform.fault("activity", body_size=20 * 1024 * 1024, times=1)
    did = platform.add_delegation(ws.id, status="completed")
    with make_hb(interval_seconds=0.1) as hb:
        assert wait_until(lambda: len(read_lines(tmp_path / "results.jsonl")) == 1, timeout=5)
        assert hb.status().beats_ok >= 1
    assert did in read_lines(tmp_path / "results.jsonl")[0]


def test_a_get_is_retried_after_a_dropped_connection(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    platform.fault("delegations", drop=True, times=1)
    did = platform.add_delegation(ws.id, status="completed")
    with make_hb(interval_seconds=30.0) as hb:
        assert wait_until(lambda: len(read_lines(tmp_path / "results.jsonl")) == 1)
        assert hb.status().beats_ok == 1  # within the first cycle, not on the next one
    first, second = platform.requests_for("delegations")[:2]
    assert first.status is None and second.status == 200
    assert did in read_lines(tmp_path / "results.jsonl")[0]


def test_a_malformed_retry_after_still_retries_with_backoff(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, tmp_path: Path
) -> None:
    platform.fault("delegations", status=503, headers={"Retry-After": "soon-ish"}, times=1)
    did = platform.add_delegation(ws.id, status="completed")
    with make_hb(interval_seconds=30.0):
        assert wait_until(lambda: len(read_lines(tmp_path / "results.jsonl")) == 1)
    assert [r.status for r in platform.requests_for("delegations")[:2]] == [503, 200]
    assert did in read_lines(tmp_path / "results.jsonl")[0]


def test_stop_cuts_a_retry_after_wait_short_and_retries_nothing(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    platform.fault("delegations", status=503, headers={"Retry-After": "3"}, times=1)
    platform.fault("delegations", delay=30, times=1)
    hb = make_hb(interval_seconds=20.0)
    hb.start_thread()
    assert platform.wait_for_requests("delegations", 1, timeout=5)
    started = time.monotonic()
    assert hb.stop(timeout=3.0)
    assert time.monotonic() - started < 1.0
    assert not platform.wait_for_requests("delegations", 2, timeout=0.5)


@pytest.mark.parametrize("connection_close", [True, False])
def test_abort_cuts_a_body_that_ends_with_the_connection(connection_close: bool) -> None:
    """A body without a length or chunked framing is read up to the connection's close;
    http.client lets go of the connection's socket as the answer comes, yet abort_session cuts
    the read at once, as it cuts any other."""
    session = make_session()
    ended: list[object] = []
    reading = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5.0)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"

        def read() -> None:
            with session.get(url, stream=True, timeout=(5, 30)) as resp:
                resp.raw.read(3)
                reading.set()
                try:
                    ended.append(resp.raw.read())
                except Exception as exc:  # the cut, however urllib3 words it
                    ended.append(exc)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        conn, _ = listener.accept()
        with conn:  # closing it ends the read in any case: the thread never outlives the test
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            if connection_close:
                head += b"Connection: close\r\n"
            conn.sendall(head + b"\r\nabc")
            assert reading.wait(5.0)
            started = time.monotonic()
            abort_session(session)
            thread.join(2.0)
            assert not thread.is_alive()
            assert time.monotonic() - started < 2.0
        assert len(ended) == 1
    session.close()


def test_a_connection_made_as_the_abort_comes_is_cut_too() -> None:
    """abort_session shuts down the connections it finds; one still being made (a stream that
    reconnects just as stop() comes) was missed and hung until its read timeout. A connection
    that completes after the abort is shut down the moment it is made."""
    session = make_session()
    abort_session(session)  # as if it came while the connect below was under way
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5.0)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        failed: list[BaseException] = []

        def ask() -> None:
            try:
                session.get(url, timeout=(5, 30))
            except Exception as exc:  # the cut, however requests words it
                failed.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        conn, _ = listener.accept()  # the server takes it and never answers
        with conn:
            thread.join(3.0)
            assert not thread.is_alive()
        assert time.monotonic() - started < 3.0 and len(failed) == 1
    session.close()
