"""The ``heartbeat-sync`` command line: ``run``, ``demo`` and ``results``.

* ``heartbeat-sync run`` runs the loop as a process, configured from the environment the
  reference runtime uses (flags override it), and stops gracefully on SIGTERM/SIGINT.
* ``heartbeat-sync demo`` plays a short story against an in-process ``FakePlatform`` and shows,
  as it happens, what the loop does; everything it prints is read off ``Heartbeat.status()`` and
  the platform's request log.
* ``heartbeat-sync register`` registers the agent of an external workspace
  (``POST /registry/register``) and keeps the token the platform shows once.
* ``heartbeat-sync results`` shows (or, with ``--consume``, takes) the delegation results file.

The library never configures logging or prints; this module and the demo (``_demo``) are the
only places that do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .__about__ import __version__
from ._auth import ORG_ID_ENV
from ._demo import run_demo
from ._files import (
    DEFAULT_RESULTS_FILE,
    RESULTS_FILE_ENV,
    ResultsFile,
    format_delegation_results,
    read_delegation_results,
)
from ._heartbeat import Heartbeat
from ._register import RegistrationError, register
from ._status import REMOVED

PROG = "heartbeat-sync"

#: The interval ``run`` accepts, in seconds (the reference runtime's config clamps to this).
MIN_INTERVAL = 5.0
MAX_INTERVAL = 300.0
DEFAULT_INTERVAL = 30.0
#: Above this interval ``run`` warns: the platform marks a workspace offline after
#: :data:`OFFLINE_AFTER` seconds without a beat, so one or two lost beats already flap it.
WARN_INTERVAL = 60.0
OFFLINE_AFTER = 180.0
#: ``run``'s budget after a stop signal: pending side effects may use part of it, the threads
#: the rest.
STOP_TIMEOUT = 5.0
DRAIN_TIMEOUT = 2.0

ENV_PLATFORM_URL = "PLATFORM_URL"
ENV_WORKSPACE_ID = "WORKSPACE_ID"
ENV_INTERVAL = "HEARTBEAT_INTERVAL_SECONDS"
ENV_CONFIGS_DIR = "CONFIGS_DIR"
ENV_RESULTS_FILE = RESULTS_FILE_ENV
ENV_CURSOR_FILE = "DELEGATION_ACTIVITY_CURSOR_FILE"
ENV_SEEN_FILE = "DELEGATION_SEEN_FILE"
ENV_TOKEN = "MOLECULE_WORKSPACE_TOKEN"
ENV_ORG_ID = ORG_ID_ENV
ENV_AGENT_URL = "AGENT_URL"
#: ``run``'s exit code when the platform removed the workspace (restarting will not help).
EXIT_REMOVED = 3

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger("heartbeat_sync.cli")


# --- configuration of ``run`` (pure) -----------------------------------------------------------


class ConfigError(ValueError):
    """A missing or invalid setting; the message names it and says how to set it."""


@dataclass(frozen=True)
class RunConfig:
    """Everything ``heartbeat-sync run`` needs, after flags and environment are merged."""

    platform_url: str
    workspace_id: str
    interval: float
    configs_dir: str | None
    results_file: str | None
    cursor_file: str | None
    seen_file: str | None
    log_level: str


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
            f"(set {ENV_INTERVAL} or pass --interval, e.g. 30)"
        ) from None
    if not math.isfinite(value):
        raise ConfigError(
            f"invalid heartbeat interval {raw!r} from {source}: not a finite number of seconds "
            f"(set {ENV_INTERVAL} or pass --interval, e.g. 30)"
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
    """Return ``url`` without a trailing slash; :class:`ConfigError` unless it is http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"invalid platform URL {url!r} from {source}: it must be an http:// or https:// URL "
            f"(set {ENV_PLATFORM_URL} or pass --platform-url, e.g. http://platform:8080)"
        )
    return url.rstrip("/")


def _pick(
    flag_value: str | None, flag: str, env: str, environ: Mapping[str, str]
) -> tuple[str, str]:
    """The flag's value if given, else the environment's ("" when neither), and its source."""
    if flag_value is not None:
        return flag_value.strip(), flag
    return environ.get(env, "").strip(), env


def load_run_config(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[RunConfig, list[str]]:
    """Merge ``run``'s flags over the environment; return the config and warnings to log.

    Raises :class:`ConfigError` (one line, naming the setting) when the platform URL or the
    workspace id is missing or invalid, or the interval is not a number.
    """
    url, url_source = _pick(args.platform_url, "--platform-url", ENV_PLATFORM_URL, environ)
    if not url:
        raise ConfigError(
            f"no platform URL: set {ENV_PLATFORM_URL} or pass --platform-url "
            f"(e.g. http://platform:8080)"
        )
    url = validate_platform_url(url, url_source)
    workspace_id, ws_source = _pick(args.workspace_id, "--workspace-id", ENV_WORKSPACE_ID, environ)
    if not workspace_id:
        raise ConfigError(f"no workspace id: set {ENV_WORKSPACE_ID} or pass --workspace-id")
    if "/" in workspace_id or any(c.isspace() for c in workspace_id):
        raise ConfigError(
            f"invalid workspace id {workspace_id!r} from {ws_source}: it may not contain '/' "
            f"or white space (set {ENV_WORKSPACE_ID} or pass --workspace-id)"
        )
    raw_interval, interval_source = _pick(args.interval, "--interval", ENV_INTERVAL, environ)
    warnings: list[str] = []
    if raw_interval:
        interval, warnings = parse_interval(raw_interval, interval_source)
    else:
        interval = DEFAULT_INTERVAL

    def path(flag_value: str | None, flag: str, env: str) -> str | None:
        value, _ = _pick(flag_value, flag, env, environ)
        return value or None  # None: the library applies its own default

    config = RunConfig(
        platform_url=url,
        workspace_id=workspace_id,
        interval=interval,
        configs_dir=path(args.configs_dir, "--configs-dir", ENV_CONFIGS_DIR),
        results_file=path(args.results_file, "--results-file", ENV_RESULTS_FILE),
        cursor_file=path(args.cursor_file, "--cursor-file", ENV_CURSOR_FILE),
        seen_file=path(args.seen_file, "--seen-file", ENV_SEEN_FILE),
        log_level=(args.log_level or "INFO").upper(),
    )
    return config, warnings


# --- argument parsing ---------------------------------------------------------------------------


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be a number > 0")
    return value


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{raw!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``heartbeat-sync`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Keep a Molecule AI workspace alive on the platform and bring its delegation "
            "results back, on threads."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the heartbeat loop as a process (configured from the environment)",
        description=(
            "Run the heartbeat loop until SIGTERM or SIGINT. Configured from the environment "
            f"the reference runtime uses ({ENV_PLATFORM_URL}, {ENV_WORKSPACE_ID}, "
            f"{ENV_CONFIGS_DIR}, {ENV_RESULTS_FILE}, {ENV_CURSOR_FILE}, {ENV_SEEN_FILE}, "
            f"{ENV_INTERVAL}); flags override it. The bearer token is read from "
            f"<configs>/.auth_token, else ${ENV_TOKEN}. Logs go to stderr."
        ),
    )
    run.add_argument(
        "--platform-url", metavar="URL", help=f"platform base URL (default: ${ENV_PLATFORM_URL})"
    )
    run.add_argument(
        "--workspace-id", metavar="ID", help=f"this workspace's id (default: ${ENV_WORKSPACE_ID})"
    )
    run.add_argument(
        "--interval",
        metavar="SECONDS",
        help=(
            f"seconds between beats, clamped to [{MIN_INTERVAL:g}, {MAX_INTERVAL:g}] "
            f"(default: ${ENV_INTERVAL}, else {DEFAULT_INTERVAL:g})"
        ),
    )
    run.add_argument(
        "--configs-dir",
        metavar="DIR",
        help=(
            f"where .auth_token is read (default: ${ENV_CONFIGS_DIR}, else /configs, "
            f"else ~/.molecule-workspace)"
        ),
    )
    run.add_argument(
        "--results-file",
        metavar="PATH",
        help=f"JSONL results file (default: ${ENV_RESULTS_FILE}, else {DEFAULT_RESULTS_FILE})",
    )
    run.add_argument(
        "--cursor-file", metavar="PATH", help=f"activity cursor file (default: ${ENV_CURSOR_FILE})"
    )
    run.add_argument(
        "--seen-file", metavar="PATH", help=f"delivered delegation ids (default: ${ENV_SEEN_FILE})"
    )
    run.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: INFO)",
    )

    demo = sub.add_parser(
        "demo",
        help="show the loop working end to end against an in-process fake platform",
        description=(
            "Start a FakePlatform and a Heartbeat and play a short story on the platform side: "
            "two delegations complete, a peer answers through A2A, the agent is busy once so "
            "the wake-up is retried, and the token rotates. Prints what happens as it happens, "
            "then a summary read off Heartbeat.status() and the platform's request log."
        ),
    )
    demo.add_argument(
        "--seconds",
        type=_positive_float,
        default=8.0,
        help="how long the story runs (default: 8)",
    )
    demo.add_argument(
        "--interval",
        type=_positive_float,
        default=0.5,
        help="heartbeat interval in seconds; the story is timed in these units (default: 0.5)",
    )

    reg = sub.add_parser(
        "register",
        help="register this agent with the platform and keep the token it shows once",
        description=(
            "Register the agent of an external workspace: POST /registry/register. A token in "
            "the answer is written to <configs>/.auth_token (0600) and never printed; an "
            "existing one is sent and kept. Configured from the environment "
            f"({ENV_PLATFORM_URL}, {ENV_WORKSPACE_ID}, {ENV_AGENT_URL}, {ENV_CONFIGS_DIR}, "
            f"{ENV_ORG_ID}); flags override it. Exit code 1 when the platform refuses."
        ),
    )
    reg.add_argument(
        "--platform-url", metavar="URL", help=f"platform base URL (default: ${ENV_PLATFORM_URL})"
    )
    reg.add_argument(
        "--workspace-id", metavar="ID", help=f"the workspace's id (default: ${ENV_WORKSPACE_ID})"
    )
    reg.add_argument(
        "--url",
        metavar="URL",
        help=f"where the platform reaches the agent, push delivery (default: ${ENV_AGENT_URL})",
    )
    reg.add_argument(
        "--delivery-mode",
        choices=("push", "poll"),
        help="push or poll (default: poll without a URL, else what the platform has)",
    )
    reg.add_argument("--agent-card", metavar="JSON", help='the agent card, e.g. \'{"name": "x"}\'')
    reg.add_argument(
        "--configs-dir",
        metavar="DIR",
        help=f"where .auth_token is kept (default: ${ENV_CONFIGS_DIR}, else /configs, "
        f"else ~/.molecule-workspace)",
    )
    reg.add_argument(
        "--org-id",
        metavar="ID",
        help=f"tenant id, sent as X-Molecule-Org-Id (default: ${ENV_ORG_ID})",
    )

    results = sub.add_parser(
        "results",
        help="show the delegation results file (--consume takes them)",
        description=(
            "Show the delegation results waiting in the results file. Without --consume the file "
            "is only read; with it the results are removed, as the agent's reader does."
        ),
    )
    results.add_argument(
        "--file",
        metavar="PATH",
        help=f"results file (default: ${ENV_RESULTS_FILE}, else {DEFAULT_RESULTS_FILE})",
    )
    results.add_argument(
        "--consume", action="store_true", help="remove the results shown (read_delegation_results)"
    )
    results.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code (2 for usage or configuration errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    command: str | None = args.command
    try:
        if command == "run":
            return _cmd_run(args)
        if command == "demo":
            return run_demo(args.seconds, args.interval, sys.stdout)
        if command == "results":
            return _cmd_results(args)
        if command == "register":
            return _cmd_register(args)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep the interpreter from
        # failing again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    parser.print_help(sys.stderr)
    return 2


# --- run ----------------------------------------------------------------------------------------


def _configure_logging(level: str) -> None:
    """What ``logging.basicConfig`` does, to stderr; the library itself never does this."""
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _has_token(configs_dir: Path) -> bool:
    try:
        if (configs_dir / ".auth_token").read_text(encoding="utf-8").strip():
            return True
    except OSError:
        pass
    return bool(os.environ.get(ENV_TOKEN, "").strip())


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config, warnings = load_run_config(args, os.environ)
    except ConfigError as exc:
        print(f"{PROG} run: error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    for warning in warnings:
        logger.warning("%s", warning)
    try:
        hb = Heartbeat(
            config.platform_url,
            config.workspace_id,
            interval_seconds=config.interval,
            results_file=config.results_file,
            cursor_file=config.cursor_file,
            seen_file=config.seen_file,
            configs_dir=config.configs_dir,
            # Sent as the Origin header, as the reference runtime does with $PLATFORM_URL
            # (what gets past the SaaS same-origin check); a URL given by flag counts the same.
            origin=config.platform_url,
        )
    except ValueError as exc:
        print(f"{PROG} run: error: {exc}", file=sys.stderr)
        return 2
    if not _has_token(hb.configs_dir):
        logger.warning(
            "no auth token in %s/.auth_token or $%s: beats are sent without one",
            hb.configs_dir,
            ENV_TOKEN,
        )

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        # Only note it: logging from a signal handler could re-enter a handler's stream.
        received.append(signum)
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: the caller must stop us some other way
            logger.warning("cannot install a handler for %s here", sig.name)
    try:
        hb.start_thread()
        # Beat at once, as the reference runtime does; the regular schedule (with its random
        # start phase, which keeps a fleet from beating in step) is unchanged.
        hb.beat_now()
        logger.info(
            "%s %s: workspace %s on %s, a beat every %g s; results to %s",
            PROG,
            __version__,
            config.workspace_id,
            config.platform_url,
            config.interval,
            hb.results_path,
        )
        # A timed wait, so that the loop also notices the event where a signal cannot
        # interrupt a blocking wait; the Heartbeat ends by itself if the workspace is removed.
        while not stop.is_set() and not hb.wait(timeout=1.0):
            pass
        if received:
            logger.info("received %s; stopping", signal.Signals(received[0]).name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        deadline = time.monotonic() + STOP_TIMEOUT
        _drain(hb, DRAIN_TIMEOUT)
        ended = hb.stop(timeout=max(0.5, deadline - time.monotonic()))
    status = hb.status()
    logger.info(
        "stopped (threads ended: %s): %d beats ok, %d failed, %d results delivered, "
        "%d wake-ups, %d notifications, %d side effects dropped",
        "yes" if ended else "no, a request is still in flight",
        status.beats_ok,
        status.beats_failed,
        status.results_delivered,
        status.wakeups_sent,
        status.notifications_sent,
        status.side_effects_dropped,
    )
    if status.state == REMOVED:
        print(
            f"{PROG} run: workspace {config.workspace_id} was removed from the platform; "
            f"exiting with code {EXIT_REMOVED}",
            file=sys.stderr,
        )
        return EXIT_REMOVED
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    """``heartbeat-sync register``: one registration, one line of outcome."""
    environ = os.environ
    try:
        url, url_source = _pick(args.platform_url, "--platform-url", ENV_PLATFORM_URL, environ)
        if not url:
            raise ConfigError(f"no platform URL: set {ENV_PLATFORM_URL} or pass --platform-url")
        url = validate_platform_url(url, url_source)
        workspace_id, _ = _pick(args.workspace_id, "--workspace-id", ENV_WORKSPACE_ID, environ)
        if not workspace_id:
            raise ConfigError(f"no workspace id: set {ENV_WORKSPACE_ID} or pass --workspace-id")
        agent_url = _pick(args.url, "--url", ENV_AGENT_URL, environ)[0] or None
        card: Any = None
        if args.agent_card is not None:
            try:
                card = json.loads(args.agent_card)
            except ValueError:
                raise ConfigError("--agent-card is not valid JSON") from None
            if not isinstance(card, dict):
                raise ConfigError("--agent-card must be a JSON object")
        mode = args.delivery_mode or (None if agent_url else "poll")
        configs = _pick(args.configs_dir, "--configs-dir", ENV_CONFIGS_DIR, environ)[0] or None
        org_id = _pick(args.org_id, "--org-id", ENV_ORG_ID, environ)[0] or None
        reg = register(
            url,
            workspace_id,
            url=agent_url,
            agent_card=card,
            configs_dir=configs,
            org_id=org_id,
            delivery_mode=mode,
        )
    except (ConfigError, ValueError) as exc:
        print(f"{PROG} register: error: {exc}", file=sys.stderr)
        return 2
    except RegistrationError as exc:
        print(f"{PROG} register: error: {exc}", file=sys.stderr)
        return 1
    token = (
        f"a new token was saved to {reg.token_file}"
        if reg.token_issued
        else f"no new token (the one in {reg.token_file} or ${ENV_TOKEN} stays in use)"
    )
    print(
        f"registered workspace {reg.workspace_id}: delivery mode "
        f"{reg.delivery_mode or 'not reported'}; {token}"
    )
    return 0


def _drain(hb: Heartbeat, timeout: float) -> None:
    """Give pending wake-ups and notifications up to ``timeout`` seconds before stopping."""
    if hb.status().queue_depth:
        logger.info("waiting up to %.1f s for pending side effects", timeout)
        hb.flush(timeout)


# --- results ------------------------------------------------------------------------------------


def _cmd_results(args: argparse.Namespace) -> int:
    path: str = args.file or os.environ.get(ENV_RESULTS_FILE) or DEFAULT_RESULTS_FILE
    if args.consume:
        # Never raises: an I/O problem is logged as a warning (to stderr through logging's
        # last-resort handler) and the results stay in the file.
        records = read_delegation_results(path)
    else:
        try:
            records = ResultsFile(path).peek()
        except OSError as exc:  # includes filelock.Timeout
            print(f"{PROG} results: error: cannot read {path}: {exc}", file=sys.stderr)
            return 1
    if args.json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    elif records:
        print(format_delegation_results(records))
    else:
        print(f"no results in {path}")
    if records and not args.json:
        what = "consumed" if args.consume else "left in place; --consume removes them"
        print(f"({len(records)} result(s) from {path}, {what})", file=sys.stderr)
    return 0
