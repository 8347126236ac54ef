"""The environment the project reads (``_config``) and the command line's configuration.

Everything here is pure: a mapping stands in for the environment and no process is started.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heartbeat_sync import _config
from heartbeat_sync.cli.args import build_parser
from heartbeat_sync.cli.config import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    ConfigError,
    load_register_config,
    load_run_config,
    parse_interval,
)

from .conftest import CONFIG_ENV

PACKAGE = Path(__file__).resolve().parent.parent / "heartbeat_sync"


def _env_constants() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(_config).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }


def test_all_env_lists_every_variable_once() -> None:
    """A variable named in ``_config`` but missing from ``ALL_ENV`` would leak into tests."""
    assert sorted(_config.ALL_ENV) == sorted(_env_constants().values())
    assert len(set(_config.ALL_ENV)) == len(_config.ALL_ENV)


def test_the_tests_clear_every_variable_the_project_reads() -> None:
    """The test suite's isolation list is the one in ``_config``, so none can be forgotten."""
    assert set(_env_constants().values()) <= set(CONFIG_ENV)


def test_every_variable_read_in_the_package_is_named_in_config() -> None:
    """A name spelled out where the environment is read must also be one ``_config`` names
    (today none is spelled out: every read goes through a constant)."""
    patterns = (
        r"""environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]*)["']""",
        r"""getenv\(\s*["']([A-Z][A-Z0-9_]*)["']""",
        r"""^[A-Z_]*ENV\s*=\s*["']([A-Z][A-Z0-9_]*)["']""",
    )
    sample = 'os.environ.get("A1")\nos.environ["B"]\nos.getenv("C")\nNEW_ENV = "D"\n'
    found = {n for pattern in patterns for n in re.findall(pattern, sample, re.MULTILINE)}
    assert found == {"A1", "B", "C", "D"}, "the patterns no longer match a read"
    read: set[str] = set()
    for module in PACKAGE.rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        for pattern in patterns:
            read.update(re.findall(pattern, text, re.MULTILINE))
    assert read <= set(_config.ALL_ENV)


def test_no_module_but_config_spells_an_environment_name() -> None:
    """Each name is a string in ``_config`` only; elsewhere code uses the constant (a second
    spelling, like the event stream's own copy of its variable, drifts on the first rename)."""
    names = [*_config.ALL_ENV, *_config.ENV_CA_BUNDLES]
    spelled = {
        (module.name, name)
        for module in PACKAGE.rglob("*.py")
        if module.name != "_config.py"
        for name in names
        if re.search(rf"""["']{name}["']""", module.read_text(encoding="utf-8"))
    }
    assert spelled == set()


# --- the interval: parse and clamp -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected", "clamped", "long"),
    [
        ("30", 30.0, False, False),
        (" 45 ", 45.0, False, False),
        ("5", 5.0, False, False),
        ("60", 60.0, False, False),
        ("60.5", 60.5, False, True),
        ("300", 300.0, False, True),
        ("2", 5.0, True, False),
        ("0", 5.0, True, False),
        ("-10", 5.0, True, False),
        ("1e3", 300.0, True, True),
    ],
)
def test_parse_interval_clamps_and_warns(
    raw: str, expected: float, clamped: bool, long: bool
) -> None:
    value, warnings = parse_interval(raw, "HEARTBEAT_INTERVAL_SECONDS")
    assert value == expected
    assert any("clamped" in w for w in warnings) is clamped
    assert any("offline after 180 s" in w for w in warnings) is long
    assert len(warnings) == clamped + long
    if clamped:
        assert "HEARTBEAT_INTERVAL_SECONDS" in warnings[0]


@pytest.mark.parametrize("raw", ["", "soon", "30s", "nan", "inf", "-inf"])
def test_parse_interval_rejects_what_is_not_a_number(raw: str) -> None:
    with pytest.raises(ConfigError, match="--interval") as info:
        parse_interval(raw, "--interval")
    assert "\n" not in str(info.value)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_parse_interval_always_lands_in_range(value: float) -> None:
    interval, warnings = parse_interval(repr(value), "X")
    assert MIN_INTERVAL <= interval <= MAX_INTERVAL
    assert (interval != value) == any("clamped" in w for w in warnings)
    assert (interval > 60) == any("offline" in w for w in warnings)
    if MIN_INTERVAL <= value <= MAX_INTERVAL:
        assert math.isclose(interval, value)


# Every option the configuration reads over an environment variable, by subcommand.
WORKSPACE_OPTIONS = {
    "--platform-url": _config.ENV_PLATFORM_URL,
    "--workspace-id": _config.ENV_WORKSPACE_ID,
    "--configs-dir": _config.ENV_CONFIGS_DIR,
}
RUN_FILES = {
    "--results-file": _config.ENV_RESULTS_FILE,
    "--cursor-file": _config.ENV_CURSOR_FILE,
    "--seen-file": _config.ENV_SEEN_FILE,
}
ENV_OPTIONS = {
    "run": {**WORKSPACE_OPTIONS, **RUN_FILES, "--interval": _config.ENV_INTERVAL},
    "register": {
        **WORKSPACE_OPTIONS,
        "--url": _config.ENV_AGENT_URL,
        "--org-id": _config.ENV_ORG_ID,
    },
    "results": {"--file": _config.ENV_RESULTS_FILE},
}


@pytest.mark.parametrize(
    ("command", "flag"),
    [(command, flag) for command in ENV_OPTIONS for flag in ENV_OPTIONS[command]],
)
def test_an_option_read_over_the_environment_says_so_in_its_help(command: str, flag: str) -> None:
    subcommands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    parser = subcommands.choices[command]
    action = next(a for a in parser._actions if flag in a.option_strings)
    assert action.help is not None
    assert f"(default: ${ENV_OPTIONS[command][flag]}" in action.help


# --- run: configuration -------------------------------------------------------------------------


def run_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def test_config_from_the_environment() -> None:
    env = {
        "PLATFORM_URL": "http://platform:8080/",
        "WORKSPACE_ID": "ws-1",
        "HEARTBEAT_INTERVAL_SECONDS": "20",
        "CONFIGS_DIR": "/cfg",
        "DELEGATION_RESULTS_FILE": "/r.jsonl",
        "DELEGATION_ACTIVITY_CURSOR_FILE": "/cursor",
        "DELEGATION_SEEN_FILE": "/seen",
    }
    config, warnings = load_run_config(run_args(), env)
    assert warnings == []
    assert config.platform_url == "http://platform:8080"
    assert config.workspace_id == "ws-1"
    assert config.options == {
        "interval_seconds": 20.0,
        "configs_dir": "/cfg",
        "results_file": "/r.jsonl",
        "cursor_file": "/cursor",
        "seen_file": "/seen",
        "origin": "http://platform:8080",
        "max_concurrent": 1,
    }
    assert config.log_level == "INFO"


def test_flags_override_the_environment() -> None:
    env = {"PLATFORM_URL": "ftp://wrong", "WORKSPACE_ID": "env-ws", "CONFIGS_DIR": "/env"}
    args = run_args(
        "--platform-url=https://p.example",
        "--workspace-id=flag-ws",
        "--interval=400",
        "--configs-dir=/flag",
        "--results-file=/flag.jsonl",
        "--log-level=debug",
    )
    config, warnings = load_run_config(args, env)
    assert config.platform_url == "https://p.example"
    assert config.workspace_id == "flag-ws"
    assert config.options["interval_seconds"] == 300.0
    assert config.options["configs_dir"] == "/flag"
    assert config.options["results_file"] == "/flag.jsonl"
    assert config.options["cursor_file"] is None  # the library's default
    assert config.options["origin"] == "https://p.example"  # the URL given by flag
    assert config.log_level == "DEBUG"
    assert len(warnings) == 2
    assert "--interval" in warnings[0]


def test_defaults() -> None:
    config, warnings = load_run_config(
        run_args(), {"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w"}
    )
    options = config.options
    assert options["interval_seconds"] == 30.0
    assert warnings == []
    assert options["configs_dir"] is options["results_file"] is options["seen_file"] is None


# --- register: configuration --------------------------------------------------------------------


def register_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["register", *argv])


def test_register_config_from_the_environment() -> None:
    env = {
        "PLATFORM_URL": "http://platform:8080/",
        "WORKSPACE_ID": "ws-1",
        "AGENT_URL": " http://agent:9000 ",
        "CONFIGS_DIR": "/cfg",
        "MOLECULE_ORG_ID": "org-1",
    }
    config = load_register_config(register_args(), env)
    assert config.platform_url == "http://platform:8080"
    assert config.workspace_id == "ws-1"
    assert config.options == {
        "url": "http://agent:9000",
        "agent_card": None,
        "delivery_mode": "push",  # named: the platform would keep the mode it had
        "configs_dir": "/cfg",
        "org_id": "org-1",
    }


def test_register_flags_override_the_environment() -> None:
    env = {"PLATFORM_URL": "ftp://wrong", "WORKSPACE_ID": "env-ws", "AGENT_URL": "http://a"}
    args = register_args(
        "--platform-url=https://p.example",
        "--workspace-id=flag-ws",
        "--url=",
        '--agent-card={"name": "x"}',
        "--delivery-mode=push",
        "--configs-dir=/flag",
        "--org-id=o",
    )
    config = load_register_config(args, env)
    assert (config.platform_url, config.workspace_id) == ("https://p.example", "flag-ws")
    assert config.options == {
        "url": None,  # an empty flag wins over the environment
        "agent_card": {"name": "x"},
        "delivery_mode": "push",
        "configs_dir": "/flag",
        "org_id": "o",
    }


def test_register_without_an_agent_url_polls() -> None:
    config = load_register_config(
        register_args(), {"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w"}
    )
    options = config.options
    assert options["delivery_mode"] == "poll"
    assert options["url"] is options["configs_dir"] is options["org_id"] is None


@pytest.mark.parametrize(
    ("env", "argv", "named"),
    [
        ({"WORKSPACE_ID": "w"}, [], "PLATFORM_URL"),
        ({"PLATFORM_URL": "platform:8080", "WORKSPACE_ID": "w"}, [], "PLATFORM_URL"),
        ({"PLATFORM_URL": "http://p"}, [], "WORKSPACE_ID"),
        ({"PLATFORM_URL": "http://p"}, ["--workspace-id", "a b"], "--workspace-id"),
        ({"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w"}, ["--agent-card", "{"], "--agent-card"),
        ({"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w"}, ["--agent-card", "[]"], "--agent-card"),
        # An org id a header cannot carry: named by where it came from.
        (
            {"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w", "MOLECULE_ORG_ID": "\ufefforg-1"},
            [],
            "MOLECULE_ORG_ID",
        ),
        (
            {"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w", "MOLECULE_ORG_ID": "org-1"},
            ["--org-id", "acme\u2013prod"],
            "--org-id",
        ),
        ({"PLATFORM_URL": "http://p", "WORKSPACE_ID": "w"}, ["--org-id", "org\u200b1"], "--org-id"),
    ],
)
def test_register_config_errors_name_the_setting(
    env: dict[str, str], argv: list[str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named) as info:
        load_register_config(register_args(*argv), env)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("command", ["run", "register"])
@pytest.mark.parametrize(
    ("env", "argv", "named"),
    [
        ({"PLATFORM_URL": "http://agent:s3cret-pw@platform:8080"}, [], "PLATFORM_URL"),
        ({}, ["--platform-url", "https://agent:s3cret-pw@p.example/"], "--platform-url"),
        ({"PLATFORM_URL": "ftp://agent:s3cret-pw@platform"}, [], "PLATFORM_URL"),
    ],
    ids=["environment", "flag", "wrong-scheme"],
)
def test_a_platform_url_with_user_info_is_a_config_error_that_never_shows_the_password(
    command: str, env: dict[str, str], argv: list[str], named: str
) -> None:
    args = build_parser().parse_args([command, "--workspace-id=w", *argv])
    load = load_run_config if command == "run" else load_register_config
    with pytest.raises(ConfigError, match=named) as info:
        load(args, env)
    message = str(info.value)
    assert "s3cret-pw" not in message and "***@" in message
    assert "\n" not in message
