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
from pathlib import Path
from typing import Any

from .__about__ import __version__
from ._config import (
    DEFAULT_INTERVAL,
    DEFAULT_RESULTS_FILE,
    ENV_AGENT_URL,
    ENV_CONFIGS_DIR,
    ENV_CURSOR_FILE,
    ENV_INTERVAL,
    ENV_ORG_ID,
    ENV_PLATFORM_URL,
    ENV_RESULTS_FILE,
    ENV_SEEN_FILE,
    ENV_TOKEN,
    ENV_WORKSPACE_ID,
    env_path,
)
from ._demo import run_demo
from ._files import ResultsFile, format_delegation_results, read_delegation_results
from ._loop import Heartbeat
from ._register import RegistrationError, register
from ._runconfig import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    ConfigError,
    load_register_config,
    load_run_config,
)
from ._status import REMOVED

PROG = "heartbeat-sync"

#: ``run``'s budget after a stop signal: pending side effects may use part of it, the threads
#: the rest.
STOP_TIMEOUT = 5.0
DRAIN_TIMEOUT = 2.0

#: ``run``'s exit code when the platform removed the workspace (restarting will not help).
EXIT_REMOVED = 3

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

logger = logging.getLogger("heartbeat_sync.cli")


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
    try:
        config = load_register_config(args, os.environ)
        reg = register(
            config.platform_url,
            config.workspace_id,
            url=config.agent_url,
            agent_card=config.agent_card,
            configs_dir=config.configs_dir,
            org_id=config.org_id,
            delivery_mode=config.delivery_mode,
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
    path = env_path(args.file or None, ENV_RESULTS_FILE, DEFAULT_RESULTS_FILE)
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
