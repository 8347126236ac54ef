"""The ``heartbeat-sync`` argument parser: its subcommands, their options and help.

Only the shape of the command line lives here; what a setting means when given, and how it
falls back on the environment, is :mod:`.config`'s.
"""

from __future__ import annotations

import argparse
import math

from ..__about__ import __version__
from .._config import (
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
)
from .config import MAX_INTERVAL, MIN_INTERVAL

__all__ = ["LOG_LEVELS", "PROG", "build_parser"]

PROG = "heartbeat-sync"
#: The levels ``run --log-level`` accepts.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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


def _configured_from(*names: str) -> str:
    """The description's sentence on where a subcommand's settings come from."""
    return f"({', '.join(names)}); flags override it."


def _add_env_option(
    parser: argparse.ArgumentParser,
    flag: str,
    metavar: str,
    env: str,
    what: str,
    otherwise: str | None = None,
) -> None:
    """An option that falls back on the environment variable ``env``, then on ``otherwise``
    (:mod:`.config` reads it so); its help says so."""
    default = f"${env}" if otherwise is None else f"${env}, else {otherwise}"
    parser.add_argument(flag, metavar=metavar, help=f"{what} (default: {default})")


def _add_workspace_options(parser: argparse.ArgumentParser, whose: str) -> None:
    """``--platform-url`` and ``--workspace-id``."""
    _add_env_option(parser, "--platform-url", "URL", ENV_PLATFORM_URL, "platform base URL")
    _add_env_option(parser, "--workspace-id", "ID", ENV_WORKSPACE_ID, f"{whose} id")


def _add_configs_dir_option(parser: argparse.ArgumentParser, done: str) -> None:
    """``--configs-dir``, with the search order ``resolve_configs_dir`` applies without it."""
    where = f"where .auth_token is {done}"
    _add_env_option(
        parser,
        "--configs-dir",
        "DIR",
        ENV_CONFIGS_DIR,
        where,
        "/configs, else ~/.molecule-workspace",
    )


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
            "the reference runtime uses "
            + _configured_from(
                ENV_PLATFORM_URL,
                ENV_WORKSPACE_ID,
                ENV_CONFIGS_DIR,
                ENV_RESULTS_FILE,
                ENV_CURSOR_FILE,
                ENV_SEEN_FILE,
                ENV_INTERVAL,
            )
            + f" The bearer token is read from <configs>/.auth_token, else ${ENV_TOKEN}. "
            "Logs go to stderr."
        ),
    )
    _add_workspace_options(run, "this workspace's")
    clamped = f"seconds between beats, clamped to [{MIN_INTERVAL:g}, {MAX_INTERVAL:g}]"
    _add_env_option(run, "--interval", "SECONDS", ENV_INTERVAL, clamped, f"{DEFAULT_INTERVAL:g}")
    _add_configs_dir_option(run, "read")
    _add_env_option(
        run, "--results-file", "PATH", ENV_RESULTS_FILE, "JSONL results file", DEFAULT_RESULTS_FILE
    )
    _add_env_option(run, "--cursor-file", "PATH", ENV_CURSOR_FILE, "activity cursor file")
    _add_env_option(run, "--seen-file", "PATH", ENV_SEEN_FILE, "delivered delegation ids")
    run.add_argument(
        "--workspace",
        action="append",
        metavar="ID:DIR",
        help=(
            "serve this workspace too, from one process (repeat for each); DIR holds its "
            ".auth_token and its results.jsonl, activity_cursor and seen_delegations files. "
            "Instead of --workspace-id and the file options"
        ),
    )
    run.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        help=(
            "hand every message to the workspace (from a canvas user or a peer) to this "
            "function, imported from the current directory or the path; what it returns is "
            "the reply (see on_message in the README)"
        ),
    )
    run.add_argument(
        "--max-concurrent",
        metavar="N",
        help="handlers running at once, 1 to 64 (default: 1)",
    )
    run.add_argument(
        "--handler-grace",
        metavar="SECONDS",
        help="after SIGTERM or SIGINT, how long running handlers may take to finish (default: 30)",
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
            + _configured_from(
                ENV_PLATFORM_URL, ENV_WORKSPACE_ID, ENV_AGENT_URL, ENV_CONFIGS_DIR, ENV_ORG_ID
            )
            + " Exit code 1 when the platform refuses, 3 when it removed the workspace."
        ),
    )
    _add_workspace_options(reg, "the workspace's")
    reach = "where the platform reaches the agent, push delivery"
    _add_env_option(reg, "--url", "URL", ENV_AGENT_URL, reach)
    reg.add_argument(
        "--delivery-mode",
        choices=("push", "poll"),
        help="push or poll (default: push with a URL, else poll)",
    )
    reg.add_argument("--agent-card", metavar="JSON", help='the agent card, e.g. \'{"name": "x"}\'')
    _add_configs_dir_option(reg, "kept")
    _add_env_option(reg, "--org-id", "ID", ENV_ORG_ID, "tenant id, sent as X-Molecule-Org-Id")

    results = sub.add_parser(
        "results",
        help="show the delegation results file (--consume takes them)",
        description=(
            "Show the delegation results waiting in the results file. Without --consume the file "
            "is only read; with it the results are removed, as the agent's reader does."
        ),
    )
    _add_env_option(
        results, "--file", "PATH", ENV_RESULTS_FILE, "results file", DEFAULT_RESULTS_FILE
    )
    results.add_argument(
        "--consume", action="store_true", help="remove the results shown (read_delegation_results)"
    )
    results.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser
