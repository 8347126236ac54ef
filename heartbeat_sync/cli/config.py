"""The command line's configuration: its flags merged over the environment, checked.

Pure: every function takes the parsed arguments and a mapping standing in for the
environment, and returns values or raises :class:`ConfigError`; nothing reads ``os.environ``,
logs or prints here. A flag given (even empty) wins over the environment; values are
stripped of surrounding white space.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, TypedDict

from .. import _config, _validate

__all__ = [
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "OFFLINE_AFTER",
    "WARN_INTERVAL",
    "ConfigError",
    "HeartbeatOptions",
    "RegisterConfig",
    "RegisterOptions",
    "RunConfig",
    "load_register_config",
    "load_run_config",
    "parse_interval",
    "validate_platform_url",
]

#: The interval ``run`` accepts, in seconds (the reference runtime's config clamps to this).
MIN_INTERVAL = 5.0
MAX_INTERVAL = 300.0
#: Above this interval ``run`` warns: the platform marks a workspace offline after
#: :data:`OFFLINE_AFTER` seconds without a beat, so one or two lost beats already flap it.
WARN_INTERVAL = 60.0
OFFLINE_AFTER = 180.0


class ConfigError(ValueError):
    """A missing or invalid setting; the message names it and says how to set it."""


class HeartbeatOptions(TypedDict):
    """The keyword arguments ``run`` gives ``Heartbeat`` (mypy checks them against its signature).

    A path is None when neither a flag nor the environment names it: the library then
    applies its own default. ``origin`` is the platform URL, as the reference runtime sends
    ``$PLATFORM_URL`` (what gets past the SaaS same-origin check); a URL given by flag counts
    the same.
    """

    interval_seconds: float
    configs_dir: str | None
    results_file: str | None
    cursor_file: str | None
    seen_file: str | None
    origin: str
    max_concurrent: int


#: Seconds ``run --handler`` gives the running handlers after a stop signal, by default.
DEFAULT_HANDLER_GRACE = 30.0
#: The longest grace ``--handler-grace`` may give.
MAX_HANDLER_GRACE = 3600.0


@dataclass(frozen=True)
class RunConfig:
    """Everything ``heartbeat-sync run`` needs, after flags and environment are merged.

    ``handler`` is ``module:function`` (checked for shape only; the command imports it), or
    None; ``handler_grace`` the seconds its running handlers get after a stop signal.
    """

    platform_url: str
    workspace_id: str
    options: HeartbeatOptions
    log_level: str
    handler: str | None = None
    handler_grace: float = DEFAULT_HANDLER_GRACE
    #: With ``--workspace ID:DIR`` (several workspaces served by one hub): each workspace's id
    #: and options; ``workspace_id`` and ``options`` are then the first's.
    members: tuple[tuple[str, HeartbeatOptions], ...] = ()


class RegisterOptions(TypedDict):
    """The keyword arguments ``register`` gives :func:`heartbeat_sync.register`.

    ``url``, ``configs_dir`` and ``org_id`` are None when not given; ``delivery_mode`` is the
    mode given, else ``"push"`` with an agent URL and ``"poll"`` without one.
    """

    url: str | None
    agent_card: dict[str, Any] | None
    delivery_mode: str | None
    configs_dir: str | None
    org_id: str | None


@dataclass(frozen=True)
class RegisterConfig:
    """Everything ``heartbeat-sync register`` needs, after flags and environment are merged."""

    platform_url: str
    workspace_id: str
    options: RegisterOptions


def parse_interval(raw: str, source: str) -> tuple[float, list[str]]:
    """Parse a heartbeat interval and clamp it to [5, 300] seconds.

    ``source`` names where ``raw`` came from (a flag or an environment variable) for messages.
    Returns the interval and the warnings to log: one when it was clamped, one when it is above
    60 s. Raises :class:`ConfigError` for anything that is not a finite number.
    """
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(
            f"invalid heartbeat interval {raw!r} from {source}: not a number of seconds "
            f"(set {_config.ENV_INTERVAL} or pass --interval, e.g. 30)"
        ) from None
    if not math.isfinite(value):
        raise ConfigError(
            f"invalid heartbeat interval {raw!r} from {source}: not a finite number of seconds "
            f"(set {_config.ENV_INTERVAL} or pass --interval, e.g. 30)"
        )
    warnings: list[str] = []
    clamped = min(MAX_INTERVAL, max(MIN_INTERVAL, value))
    if clamped != value:
        warnings.append(
            f"heartbeat interval {value:g} s from {source} is outside "
            f"[{MIN_INTERVAL:g}, {MAX_INTERVAL:g}]; clamped to {clamped:g} s"
        )
    if clamped > WARN_INTERVAL:
        warnings.append(
            f"heartbeat interval {clamped:g} s is above {WARN_INTERVAL:g} s: the platform marks "
            f"a workspace offline after {OFFLINE_AFTER:g} s without a beat, so a missed beat or "
            f"two can take it offline"
        )
    return clamped, warnings


def validate_platform_url(url: str, source: str) -> str:
    """Return ``url`` without a trailing slash; :class:`ConfigError` unless it is an http(s)
    URL with a host and without user info (the message never shows a password)."""
    problem = _validate.url_problem(url)
    if problem is not None:
        raise ConfigError(
            f"invalid platform URL {_validate.redact_url(url)!r} from {source}: it {problem} "
            f"(set {_config.ENV_PLATFORM_URL} or pass --platform-url, e.g. http://platform:8080)"
        )
    return url.rstrip("/")


def _pick(
    flag_value: str | None, flag: str, env: str, environ: Mapping[str, str]
) -> tuple[str, str]:
    """The flag's value if given, else the environment's ("" when neither), and its source."""
    if flag_value is not None:
        return flag_value.strip(), flag
    return environ.get(env, "").strip(), env


def _optional(
    flag_value: str | None, flag: str, env: str, environ: Mapping[str, str]
) -> str | None:
    """As :func:`_pick`, with None for a setting nobody gave."""
    return _pick(flag_value, flag, env, environ)[0] or None


def _platform_url(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    url, source = _pick(args.platform_url, "--platform-url", _config.ENV_PLATFORM_URL, environ)
    if not url:
        raise ConfigError(
            f"no platform URL: set {_config.ENV_PLATFORM_URL} or pass --platform-url "
            f"(e.g. http://platform:8080)"
        )
    return validate_platform_url(url, source)


def _workspace_id(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    workspace_id, source = _pick(
        args.workspace_id, "--workspace-id", _config.ENV_WORKSPACE_ID, environ
    )
    if not workspace_id:
        raise ConfigError(f"no workspace id: set {_config.ENV_WORKSPACE_ID} or pass --workspace-id")
    if "/" in workspace_id or any(c.isspace() for c in workspace_id):
        raise ConfigError(
            f"invalid workspace id {workspace_id!r} from {source}: it may not contain '/' "
            f"or white space (set {_config.ENV_WORKSPACE_ID} or pass --workspace-id)"
        )
    return workspace_id


def _org_id(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    org_id, source = _pick(args.org_id, "--org-id", _config.ENV_ORG_ID, environ)
    try:
        return _validate.org_id(org_id, source)
    except ValueError as exc:
        raise ConfigError(f"{exc} (set {_config.ENV_ORG_ID} or pass --org-id)") from None


def load_run_config(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[RunConfig, list[str]]:
    """Merge ``run``'s flags over the environment; return the config and warnings to log.

    Raises :class:`ConfigError` (one line, naming the setting) when the platform URL or the
    workspace id is missing or invalid, or the interval is not a number.
    """
    url = _platform_url(args, environ)
    homes = _workspace_homes(args)
    workspace_id = homes[0][0] if homes else _workspace_id(args, environ)
    raw_interval, interval_source = _pick(
        args.interval, "--interval", _config.ENV_INTERVAL, environ
    )
    warnings: list[str] = []
    if raw_interval:
        interval, warnings = parse_interval(raw_interval, interval_source)
    else:
        interval = _config.DEFAULT_INTERVAL
    options = HeartbeatOptions(
        interval_seconds=interval,
        configs_dir=_optional(args.configs_dir, "--configs-dir", _config.ENV_CONFIGS_DIR, environ),
        results_file=_optional(
            args.results_file, "--results-file", _config.ENV_RESULTS_FILE, environ
        ),
        cursor_file=_optional(args.cursor_file, "--cursor-file", _config.ENV_CURSOR_FILE, environ),
        seen_file=_optional(args.seen_file, "--seen-file", _config.ENV_SEEN_FILE, environ),
        origin=url,
        max_concurrent=_max_concurrent(getattr(args, "max_concurrent", None)),
    )
    handler = _handler_spec(getattr(args, "handler", None))
    grace = _handler_grace(getattr(args, "handler_grace", None))
    level = (args.log_level or "INFO").upper()
    members = tuple((wid, _member_options(options, home)) for wid, home in homes)
    if members:
        options = members[0][1]
    config = RunConfig(url, workspace_id, options, level, handler, grace, members)
    return config, warnings


#: The files of a workspace served with ``--workspace ID:DIR``, in its DIR (beside its
#: ``.auth_token``).
MEMBER_RESULTS = "results.jsonl"
MEMBER_CURSOR = "activity_cursor"
MEMBER_SEEN = "seen_delegations"
#: Flags that name one workspace's id or files: not with ``--workspace``.
_ONE_WORKSPACE_FLAGS = (
    ("workspace_id", "--workspace-id"),
    ("configs_dir", "--configs-dir"),
    ("results_file", "--results-file"),
    ("cursor_file", "--cursor-file"),
    ("seen_file", "--seen-file"),
)


def _member_options(options: HeartbeatOptions, home: str) -> HeartbeatOptions:
    member = options.copy()
    member["configs_dir"] = home
    member["results_file"] = str(PurePath(home, MEMBER_RESULTS))
    member["cursor_file"] = str(PurePath(home, MEMBER_CURSOR))
    member["seen_file"] = str(PurePath(home, MEMBER_SEEN))
    return member


def _workspace_homes(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``--workspace ID:DIR`` given (none: the one workspace of ``--workspace-id``)."""
    raw: list[str] = getattr(args, "workspace", None) or []
    if not raw:
        return []
    for attribute, flag in _ONE_WORKSPACE_FLAGS:
        if getattr(args, attribute, None):
            raise ConfigError(
                f"{flag} names one workspace: with --workspace, each workspace's files are in "
                "its DIR"
            )
    homes: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in raw:
        wid, sep, home = item.partition(":")
        wid = wid.strip()
        if not sep or not wid or not home:
            raise ConfigError(f"--workspace {item!r}: expected ID:DIR")
        if "/" in wid or any(c.isspace() for c in wid):
            raise ConfigError(
                f"--workspace {item!r}: invalid workspace id {wid!r}: it may not contain '/' "
                "or white space"
            )
        if wid in seen:
            raise ConfigError(f"--workspace {item!r}: workspace {wid} is given twice")
        seen.add(wid)
        homes.append((wid, home))
    return homes


def _handler_spec(raw: str | None) -> str | None:
    if raw is None:
        return None
    spec = raw.strip()
    module, _, function = spec.partition(":")
    parts = [*module.split("."), *function.split(".")]
    if not module or not function or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"--handler must be module:function (e.g. my_agent:handle), not {raw!r}")
    return spec


def _max_concurrent(raw: str | None) -> int:
    if raw is None:
        return 1
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise ConfigError(f"--max-concurrent must be an integer in [1, 64], not {raw!r}")
    return value


def _handler_grace(raw: str | None) -> float:
    if raw is None:
        return DEFAULT_HANDLER_GRACE
    try:
        return _validate.number("--handler-grace", float(raw.strip()), 0, MAX_HANDLER_GRACE)
    except ValueError:
        raise ConfigError(
            f"--handler-grace must be a number of seconds in [0, {MAX_HANDLER_GRACE:g}], "
            f"not {raw!r}"
        ) from None


def load_register_config(args: argparse.Namespace, environ: Mapping[str, str]) -> RegisterConfig:
    """Merge ``register``'s flags over the environment.

    Raises :class:`ConfigError` (one line, naming the setting) when the platform URL or the
    workspace id is missing or invalid, the org id cannot be sent as a header, or
    ``--agent-card`` is not a JSON object.
    """
    url = _platform_url(args, environ)
    workspace_id = _workspace_id(args, environ)
    agent_url = _optional(args.url, "--url", _config.ENV_AGENT_URL, environ)
    card: Any = None
    if args.agent_card is not None:
        try:
            card = json.loads(args.agent_card)
        except ValueError:
            raise ConfigError("--agent-card is not valid JSON") from None
        if not isinstance(card, dict):
            raise ConfigError("--agent-card must be a JSON object")
    options = RegisterOptions(
        url=agent_url,
        agent_card=card,
        # Named either way: the platform keeps a workspace's earlier mode when none is named.
        delivery_mode=args.delivery_mode or ("push" if agent_url else "poll"),
        configs_dir=_optional(args.configs_dir, "--configs-dir", _config.ENV_CONFIGS_DIR, environ),
        org_id=_org_id(args, environ),
    )
    return RegisterConfig(url, workspace_id, options)
