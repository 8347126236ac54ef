"""Every argument is checked at construction, with a message naming it and its range."""

from __future__ import annotations

import inspect
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from heartbeat_sync import Heartbeat, _settings
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, wait_until

README = Path(__file__).resolve().parent.parent / "README.md"

# (argument, a value the loop could not live with, the range the message must state)
BAD_NUMBERS = [
    ("interval_seconds", 0, "(0, 86400]"),
    ("interval_seconds", -1, "(0, 86400]"),
    ("interval_seconds", 9.2e9, "(0, 86400]"),  # Event.wait() overflowed: the thread died
    ("interval_seconds", float("nan"), "(0, 86400]"),
    ("interval_seconds", float("inf"), "(0, 86400]"),
    ("interval_seconds", "30", "(0, 86400]"),
    ("interval_seconds", True, "(0, 86400]"),
    ("self_message_cooldown", float("inf"), "[0, 86400]"),  # OverflowError on the worker
    ("self_message_cooldown", float("nan"), "[0, 86400]"),  # the worker spun at 100 % CPU
    ("self_message_cooldown", -1, "[0, 86400]"),
    ("request_timeout", "10", "(0, 3600]"),  # every cycle failed with a traceback
    ("request_timeout", 0, "(0, 3600]"),
    ("request_timeout", -1, "(0, 3600]"),
    ("request_timeout", None, "(0, 3600]"),
    ("self_message_timeout", 0, "(0, 3600]"),
    ("self_message_timeout", float("inf"), "(0, 3600]"),
    ("wakeup_retry_deadline", -5, "[0, 86400]"),
    ("wakeup_retry_deadline", float("inf"), "[0, 86400]"),
    ("exit_timeout", -1, "[0, 3600]"),
    ("exit_timeout", float("nan"), "[0, 3600]"),
    ("exit_timeout", "2", "[0, 3600]"),
    ("start_phase", -0.1, "[0, 1]"),
    ("start_phase", 1.5, "[0, 1]"),
    ("start_phase", "0.5", "[0, 1]"),
    ("start_phase", float("nan"), "[0, 1]"),
    ("state_check_interval", "300", "(0, 86400]"),  # a TypeError naming no argument
    ("state_check_interval", True, "(0, 86400]"),  # taken for 1 s
    ("state_check_interval", float("inf"), "(0, 86400]"),  # accepted
    ("state_check_interval", 86400.5, "(0, 86400]"),
    ("state_check_interval", float("nan"), "(0, 86400]"),
    ("message_backlog", -1, "[0, 2592000]"),
    ("message_backlog", float("nan"), "[0, 2592000]"),
    ("message_backlog", "600", "[0, 2592000]"),
    ("max_concurrent", 0, "[1, 64]"),
    ("max_concurrent", 65, "[1, 64]"),
    ("max_concurrent", True, "[1, 64]"),  # taken for 1
    ("max_concurrent", 2.0, "[1, 64]"),
    ("state_check_interval", 0, "(0, 86400]"),
    ("state_check_interval", -1, "(0, 86400]"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_NUMBERS)
def test_a_numeric_argument_out_of_range_is_refused_at_construction(
    make_hb: HeartbeatFactory, name: str, value: Any, allowed: str
) -> None:
    with pytest.raises(ValueError) as raised:
        make_hb(**{name: value})
    message = str(raised.value)
    kind = "an int" if name == "max_concurrent" else "a number"
    assert message.startswith(f"{name} must be {kind} in {allowed}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval_seconds": 86400},
        {"interval_seconds": 1},  # an int is a number
        {"self_message_cooldown": 0},
        {"request_timeout": 3600, "self_message_timeout": 0.5},
        {"wakeup_retry_deadline": 0},
        {"exit_timeout": 0},
        {"exit_timeout": None},
        {"start_phase": 0},
        {"start_phase": 1},
        {"state_check_interval": 86400},
        {"state_check_interval": 0.5},
        {"state_check_interval": None},
    ],
)
def test_values_at_the_ends_of_the_ranges_are_accepted(
    make_hb: HeartbeatFactory, kwargs: dict[str, Any]
) -> None:
    # The deprecated start_phase is accepted with its warning.
    warns = "start_phase" in kwargs
    with pytest.warns(DeprecationWarning, match="start_phase") if warns else nullcontext():
        hb = make_hb(**kwargs)
    assert {name: getattr(hb._settings, name) for name in kwargs} == kwargs


def test_the_longest_cooldown_leaves_a_working_side_effect_thread(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    """The longest cooldown allowed still leaves a working worker: later results are
    announced by notifications, and the held wake-up is counted as pending."""
    hb = make_hb(self_message_cooldown=86400)
    platform.add_delegation(ws.id, status="completed", response_preview="1")
    with hb:
        assert wait_until(lambda: hb.status().wakeups_sent == 1, timeout=5)
        platform.add_delegation(ws.id, status="completed", response_preview="2")
        assert wait_until(lambda: hb.status().notifications_sent == 2, timeout=5)
        assert hb.status().queue_depth == 1  # the second wake-up, held by the cooldown


# --- workspace_id ---------------------------------------------------------------------------

BAD_IDS = [
    "x/../../registry/register?",  # sent the bearer token to another route
    "..",
    ".",
    "abc#frag",
    "abc?x=1",
    "a/b",
    "a b",
    " leading",
    "tab\there",
    "new\nline",
    "nul\x00",
    "caf\u00e9",
    "percent%2F",
    "",
    "x" * 129,
    None,
    123,
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_workspace_id_that_could_leave_its_path_segment_is_refused(
    platform: FakePlatform, bad: Any
) -> None:
    with pytest.raises(ValueError, match=r"^workspace_id must be the platform's workspace id"):
        Heartbeat(platform.url, bad)


@pytest.mark.parametrize(
    "good",
    [
        "3f2b8c1e-6d4a-4e7b-9a0c-2d5e8f1b7c64",
        "3F2B8C1E-6D4A-4E7B-9A0C-2D5E8F1B7C64",
        "3f2b8c1e6d4a4e7b9a0c2d5e8f1b7c64",
        "ws-1",
        "worker_2",
    ],
)
def test_ids_the_platform_can_issue_are_accepted(
    platform: FakePlatform, make_hb: HeartbeatFactory, good: str
) -> None:
    platform.add_workspace(good)
    assert make_hb(workspace_id=good).workspace_id == good


def test_a_parent_id_from_the_platform_is_quoted_into_one_segment(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory
) -> None:
    """The parent id comes from the platform's answer: it is quoted, never a path."""
    ws.parent_id = "../../registry/register?x=#y"
    platform.add_delegation(ws.id, status="completed", response_preview="42")
    hb = make_hb()
    with hb:
        assert wait_until(lambda: hb.status().wakeups_sent == 1, timeout=5)
    lookups = [r.path for r in platform.requests_for("workspace")]
    assert f"/workspaces/{ws.id}" in lookups
    assert "/workspaces/..%2F..%2Fregistry%2Fregister%3Fx%3D%23y" in lookups
    assert platform.requests_for("unknown") == [] and platform.requests_for("register") == []


# --- platform_url: an http(s) base URL, never one with user info -----------------------------

PASSWORD = "s3cret-pw"
# (a platform URL no request can use as it is, what the message must say)
BAD_PLATFORM_URLS = [
    # requests turned user info into Basic auth over the bearer token: every request 401
    pytest.param(f"http://agent:{PASSWORD}@127.0.0.1:9", "user info", id="user-and-password"),
    pytest.param(f"https://:{PASSWORD}@platform.example", "user info", id="password-only"),
    pytest.param(f"https://{PASSWORD}@platform.example/", "user info", id="user-only"),
    pytest.param(f"ftp://agent:{PASSWORD}@platform.example", "http:// or https://", id="ftp"),
    pytest.param("platform:8080", "http:// or https://", id="no-scheme"),
    pytest.param("http://", "must have a host", id="no-host"),
    pytest.param("http://:8080", "must have a host", id="port-without-host"),
    pytest.param("http://platform.example:99999", "port cannot be read", id="port-out-of-range"),
    pytest.param("http://[::1", "host or port cannot be read", id="broken-ipv6"),
    pytest.param("http://platform.example/?x=1", "query or a fragment", id="query"),
    pytest.param("http://platform.example#top", "query or a fragment", id="fragment"),
    pytest.param("http://platform .example", "white space", id="inner-space"),
    pytest.param("", "is required", id="empty"),
    pytest.param(None, "is required", id="none"),
]


@pytest.mark.parametrize(("url", "said"), BAD_PLATFORM_URLS)
def test_a_platform_url_no_request_can_use_is_refused_naming_it_without_its_password(
    make_hb: HeartbeatFactory, url: Any, said: str
) -> None:
    with pytest.raises(ValueError, match=r"^platform_url ") as raised:
        make_hb(platform_url=url)
    assert said in str(raised.value)
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("{url}", "{url}"),
        ("{url}/", "{url}"),  # a trailing slash is stripped, as ever
        (" {url} ", "{url}"),
        ("https://platform.example/prefix", "https://platform.example/prefix"),
        ("https://platform.example/prefix/", "https://platform.example/prefix"),
        ("HTTPS://Platform.Example", "HTTPS://Platform.Example"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_a_usable_platform_url_is_accepted_without_a_trailing_slash(
    platform: FakePlatform, make_hb: HeartbeatFactory, url: str, kept: str
) -> None:
    hb = make_hb(platform_url=url.format(url=platform.url))
    assert hb.platform_url == kept.format(url=platform.url)


def test_an_invalid_origin_is_refused_without_its_password(make_hb: HeartbeatFactory) -> None:
    with pytest.raises(ValueError, match=r"^origin: ") as raised:
        make_hb(origin=f"ftp://agent:{PASSWORD}@canvas.example")
    assert PASSWORD not in str(raised.value)


# --- the README lists every argument with its range ------------------------------------------


def test_the_readme_configuration_table_lists_every_argument() -> None:
    text = README.read_text()
    table = text[text.index("## Configuration") :]
    table = table[: table.index("\n\n", table.index("| `Heartbeat(...)` argument"))]
    listed = set(re.findall(r"`([a-z_]+)`", table))
    arguments = [p for p in inspect.signature(Heartbeat).parameters if p not in ("positional",)]
    assert [a for a in arguments if a not in listed] == []
    for name, _, allowed in BAD_NUMBERS:
        row = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert allowed in row, (name, row)


def test_every_heartbeat_argument_reaches_the_settings_under_its_own_name() -> None:
    """Heartbeat.__init__ hands its arguments whole to ``_settings.settings``: the two
    parameter lists must match (names, order, kinds, types), or an argument would be lost
    or land on another."""
    heartbeat = [
        p
        for p in list(inspect.signature(Heartbeat.__init__).parameters.values())[1:]
        if p.kind is not inspect.Parameter.VAR_POSITIONAL  # the deprecated positional form
    ]
    checked = list(inspect.signature(_settings.settings).parameters.values())

    def shape(params: list[inspect.Parameter]) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.annotation) for p in params]

    assert shape(heartbeat) == shape(checked)
    assert all(p.default is inspect.Parameter.empty for p in checked)  # defaults: Heartbeat's


# --- the public surface: keyword-only arguments, read-only settings ---------------------------


def test_every_argument_after_the_workspace_id_is_keyword_only() -> None:
    params = list(inspect.signature(Heartbeat.__init__).parameters.values())[1:]
    assert [p.name for p in params[:2]] == ["platform_url", "workspace_id"]
    assert params[2].kind is inspect.Parameter.VAR_POSITIONAL  # only for the deprecation
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:])


def test_a_positional_call_still_works_and_warns_naming_the_keywords(tmp_path: Path) -> None:
    # No platform and no token: only the arguments are looked at, the results file by position.
    with pytest.warns(DeprecationWarning, match=r"interval_seconds=\.\.\., results_file=") as got:
        hb = Heartbeat("http://127.0.0.1:9", "ws-1", 5.0, tmp_path / "r.jsonl")
    assert got[0].filename == __file__  # the warning points at the caller's line
    assert hb.interval_seconds == 5.0 and hb.results_path == str(tmp_path / "r.jsonl")
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="interval_seconds"):
        Heartbeat("http://127.0.0.1:9", "ws-1", 5.0, interval_seconds=6.0)
    with pytest.raises(TypeError, match="at most 7"):
        Heartbeat("http://127.0.0.1:9", "ws-1", *range(8))


def test_the_settings_a_heartbeat_shows_are_read_only(tmp_path: Path) -> None:
    # No platform and no token, never started: only what it shows is looked at.
    hb = Heartbeat("http://127.0.0.1:9/", "ws-1", results_file=tmp_path / "r.jsonl")
    for name in (
        "platform_url",
        "workspace_id",
        "interval_seconds",
        "results_path",
        "cursor_path",
        "seen_path",
        "configs_dir",
        "self_message_cooldown",
        "request_timeout",
        "exit_timeout",
        "start_phase",
        "events",
        "org_id",
        "state_check_interval",
    ):
        with pytest.raises(AttributeError):
            setattr(hb, name, getattr(hb, name))
    assert hb.platform_url == "http://127.0.0.1:9" and hb.interval_seconds == 30.0


# --- org_id: only what a header can carry -----------------------------------------------------

# A value pasted with a character no header can carry made every request fail with an error
# that named nothing; it is refused at construction, naming where it came from.
BAD_ORG_IDS = [
    pytest.param("\ufefforg-1", id="byte-order-mark"),
    pytest.param("org-\u200b1", id="zero-width-space"),
    pytest.param("acme\u2013prod", id="typographic-dash"),
    pytest.param("caf\u00e9", id="non-ascii-letter"),
    pytest.param("org 1", id="inner-space"),
    pytest.param("org\n1", id="newline"),
    pytest.param("org\x7f", id="delete"),
]


@pytest.mark.parametrize("bad", BAD_ORG_IDS)
def test_an_org_id_argument_a_header_cannot_carry_is_refused_naming_org_id(
    make_hb: HeartbeatFactory, bad: str
) -> None:
    with pytest.raises(ValueError, match=r"^org_id must be printable ASCII") as raised:
        make_hb(org_id=bad)
    assert "U+" in str(raised.value) and str(raised.value).isascii()


@pytest.mark.parametrize("bad", BAD_ORG_IDS)
def test_an_org_id_from_the_environment_a_header_cannot_carry_is_refused_naming_the_variable(
    make_hb: HeartbeatFactory, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("MOLECULE_ORG_ID", bad)
    with pytest.raises(ValueError, match=r"^\$MOLECULE_ORG_ID must be printable ASCII"):
        make_hb()


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (" org-1\n", "org-1"),
        ("11111111-1111-1111-1111-111111111111", "11111111-1111-1111-1111-111111111111"),
        ("a.b_c~!", "a.b_c~!"),
        ("  ", None),
    ],
)
def test_an_org_id_of_printable_ascii_is_accepted_without_surrounding_white_space(
    make_hb: HeartbeatFactory, given: str, kept: str | None
) -> None:
    assert make_hb(org_id=given).org_id == kept
