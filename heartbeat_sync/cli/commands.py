"""The ``heartbeat-sync`` command line: ``run``, ``demo``, ``register`` and ``results``.

* ``heartbeat-sync run`` runs the loop as a process, configured from the environment the
  reference runtime uses (flags override it), and stops gracefully on SIGTERM/SIGINT.
* ``heartbeat-sync demo`` plays a short story against an in-process ``FakePlatform`` and shows,
  as it happens, what the loop does; everything it prints is read off ``Heartbeat.status()`` and
  the platform's request log.
* ``heartbeat-sync register`` registers the agent of an external workspace
  (``POST /registry/register``) and keeps the token the platform shows once.
* ``heartbeat-sync results`` shows (or, with ``--consume``, takes) the delegation results file.

The options are declared in ``cli.args`` and merged over the environment in ``cli.config``;
this module runs the commands. The library never configures logging or prints; this module
and the demo (``cli.demo``) are the only places that do.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

from ..__about__ import __version__
from .._config import DEFAULT_RESULTS_FILE, ENV_RESULTS_FILE, ENV_TOKEN, env_path
from .._heartbeat import Heartbeat
from .._hub import Hub
from .._logctx import get_logger
from .._status import REMOVED
from ..delivery import ResultsFile, read_delegation_results
from ..effects import MessageHandler, format_delegation_results
from ..wire import Credentials, RegistrationError, register
from .args import PROG, build_parser
from .config import ConfigError, RunConfig, load_register_config, load_run_config
from .demo import run_demo

#: ``run``'s budget after a stop signal: pending side effects may use part of it, the threads
#: the rest.
STOP_TIMEOUT = 5.0
DRAIN_TIMEOUT = 2.0

#: ``run``'s exit code when the platform removed the workspace (restarting will not help).
EXIT_REMOVED = 3

logger = get_logger(__name__)


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
    """Whether the Heartbeat will find a token it can send, asked as it will ask.

    A ``Credentials`` of our own answers; what it would warn about while reading (a token
    file others can read, a token that cannot be sent) the Heartbeat's own says on its first
    beat, so it is kept quiet here rather than said twice.
    """
    auth_logger = logging.getLogger(Credentials.__module__)
    auth_logger.addFilter(_drop)
    try:
        return Credentials(configs_dir, env_token=os.environ.get(ENV_TOKEN)).token() is not None
    finally:
        auth_logger.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    """A logging filter that lets nothing through."""
    return False


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config, warnings = load_run_config(args, os.environ)
    except ConfigError as exc:
        print(f"{PROG} run: error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    for warning in warnings:
        logger.warning("%s", warning)
    if config.members:
        return _run_hub(config)
    try:
        handler = None if config.handler is None else _load_handler(config.handler)
        hb = Heartbeat(
            config.platform_url, config.workspace_id, **config.options, on_message=handler
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
    previous = _signals(stop, received)
    try:
        hb.start_thread()
        # Beat at once, as the reference runtime does; the regular schedule (with its random
        # start phase, which keeps a fleet from beating in step) is unchanged.
        hb.beat_now()
        logger.info(
            "%s %s: workspace %s on %s, a beat every %g s; results to %s%s",
            PROG,
            __version__,
            config.workspace_id,
            config.platform_url,
            hb.interval_seconds,
            hb.results_path,
            "" if handler is None else f"; messages to {config.handler}",
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
        # Running handlers get their grace: stop() waits for them, then sends their answers.
        grace = 0.0 if handler is None else config.handler_grace
        deadline = time.monotonic() + STOP_TIMEOUT + grace
        _drain(hb, DRAIN_TIMEOUT)
        ended = hb.stop(timeout=max(0.5, deadline - time.monotonic()))
    status = hb.status()
    if handler is not None:
        logger.info(
            "messages: %d handled, %d raised, %d replies sent, %d still running",
            status.messages_handled,
            status.handler_errors,
            status.replies_sent,
            status.handlers_running,
        )
    logger.info(
        "stopped (threads ended: %s): %d beats ok, %d failed, %d results delivered, "
        "%d wake-ups, %d notifications, %d side effects dropped",
        "yes" if ended else "no, a request or a handler is still running",
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


def _signals(stop: threading.Event, received: list[int]) -> dict[signal.Signals, Any]:
    """Have SIGTERM and SIGINT set ``stop`` (noted in ``received``); the handlers replaced."""

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
    return previous


def _run_hub(config: RunConfig) -> int:
    """``run --workspace ID:DIR ...``: every workspace from one process, on a hub."""
    try:
        handler = None if config.handler is None else _load_handler(config.handler)
        hub = Hub(config.platform_url)
        for wid, options in config.members:
            hb = hub.add(wid, **options, on_message=handler)
            if not _has_token(hb.configs_dir):
                logger.warning(
                    "no auth token in %s/.auth_token: workspace %s beats without one",
                    hb.configs_dir,
                    wid,
                )
    except ValueError as exc:
        print(f"{PROG} run: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    received: list[int] = []
    previous = _signals(stop, received)
    try:
        hub.start()
        logger.info(
            "%s %s: %d workspaces on %s, a beat every %g s each%s",
            PROG,
            __version__,
            len(hub),
            config.platform_url,
            config.options["interval_seconds"],
            "" if handler is None else f"; messages to {config.handler}",
        )
        while not stop.is_set() and not hub.wait(timeout=1.0):
            pass
        if received:
            logger.info("received %s; stopping", signal.Signals(received[0]).name)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        grace = 0.0 if handler is None else config.handler_grace
        deadline = time.monotonic() + STOP_TIMEOUT + grace
        for hb in hub.members:
            _drain(hb, max(0.0, min(DRAIN_TIMEOUT, deadline - time.monotonic())))
        ended = hub.stop(timeout=max(0.5, deadline - time.monotonic()))
    statuses = hub.status()
    for wid, status in statuses.items():
        logger.info(
            "workspace %s: %s, %d beats ok, %d failed, %d results delivered",
            wid,
            status.state,
            status.beats_ok,
            status.beats_failed,
            status.results_delivered,
        )
    logger.info("stopped (threads ended: %s)", "yes" if ended else "no")
    if statuses and all(s.state == REMOVED for s in statuses.values()):
        print(
            f"{PROG} run: every workspace was removed from the platform; "
            f"exiting with code {EXIT_REMOVED}",
            file=sys.stderr,
        )
        return EXIT_REMOVED
    return 0


def _load_handler(spec: str) -> MessageHandler:
    """Import ``module:function`` (the current directory first on the path, as ``python -m``
    has it); ``ValueError`` naming what is wrong."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while it loads
        raise ValueError(f"--handler: cannot import {module_name}: {exc!r}") from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ValueError(f"--handler: {module_name} has no {attribute}") from None
    if not callable(target):
        raise ValueError(f"--handler: {spec} is not callable")
    handler: MessageHandler = target
    return handler


def _cmd_register(args: argparse.Namespace) -> int:
    """``heartbeat-sync register``: one registration, one line of outcome."""
    try:
        config = load_register_config(args, os.environ)
        reg = register(config.platform_url, config.workspace_id, **config.options)
    except (ConfigError, ValueError) as exc:
        print(f"{PROG} register: error: {exc}", file=sys.stderr)
        return 2
    except RegistrationError as exc:
        if exc.registered:  # registered; the token is kept elsewhere, as the message says
            print(f"{PROG} register: {exc}", file=sys.stderr)
            return 1
        print(f"{PROG} register: error: {exc}", file=sys.stderr)
        return EXIT_REMOVED if exc.status == 410 else 1
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
