"""A plain synchronous script kept alive on the platform by ``heartbeat_sync``.

What it shows:

* ``with Heartbeat(...) as hb:`` around ordinary blocking work: the beat runs on a daemon
  thread, and leaving the block stops it;
* ``hb.current_task`` set per item (a changed task is beaten at once, so the platform's canvas
  follows the script), and cleared at the end;
* ``hb.record_success()`` / ``hb.record_error(...)`` per item: the next beat reports them as
  ``error_rate`` and ``sample_error``;
* ``hb.status()`` afterwards.

Against a platform (the token is read from ``$CONFIGS_DIR/.auth_token`` or
``$MOLECULE_WORKSPACE_TOKEN``; results and cursor files from the usual variables)::

    PLATFORM_URL=http://platform:8080 WORKSPACE_ID=<id> python examples/plain_script.py

With no platform URL it starts an in-process ``FakePlatform`` of its own, runs for about a
second and prints what that platform received::

    python examples/plain_script.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from heartbeat_sync import Heartbeat
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from heartbeat_sync import Heartbeat

ITEMS = ["invoice-1", "invoice-2", "invoice-3 (corrupt)", "invoice-4", "invoice-5"]


def process(item: str) -> str:
    """The script's real work: here a short pause, and one item that cannot be parsed."""
    time.sleep(0.2)
    if "corrupt" in item:
        raise ValueError(f"cannot parse {item}")
    return f"{item}: total 42.00 EUR"


def run(platform_url: str, workspace_id: str, interval: float, **files: Any) -> None:
    """Process every item with a heartbeat running; ``files`` go to ``Heartbeat`` as they are."""
    with Heartbeat(platform_url, workspace_id, interval_seconds=interval, **files) as hb:
        for item in ITEMS:
            hb.current_task = f"processing {item}"
            try:
                result = process(item)
            except ValueError as exc:
                hb.record_error(str(exc))
                print(f"FAILED {item}: {exc}")
            else:
                hb.record_success()
                print(f"done   {result}")
        hb.current_task = ""
    status = hb.status()
    print(
        f"heartbeat: {status.beats_ok} beats ok, {status.beats_failed} failed, state {status.state}"
    )


def standalone(interval: float) -> None:
    """Run against an in-process FakePlatform and print what it received."""
    from heartbeat_sync.testing import FakePlatform

    with FakePlatform() as fp, tempfile.TemporaryDirectory() as tmp:
        ws = fp.add_workspace(name="plain-script")
        files = fp.agent_files(ws.id, tmp)  # its token written where the Heartbeat reads it
        print(f"no platform URL given: using an in-process FakePlatform at {fp.url}")
        run(fp.url, ws.id, interval, exit_timeout=None, **files)
        beats = fp.heartbeats(ws.id)
        tasks = []
        for body in beats:
            task = body.get("current_task")
            if task and task not in tasks:
                tasks.append(task)
        worst = max(beats, key=lambda b: _number(b.get("error_rate")), default={})
        print(f"the platform received {len(beats)} heartbeats")
        print(f"current_task values it saw: {tasks}")
        print(
            f"highest error_rate it saw: {worst.get('error_rate', 0.0)} "
            f"(sample_error {worst.get('sample_error', '')!r})"
        )


def _number(value: object) -> float:
    """A number from a JSON body (0.0 when it is not one)."""
    return float(value) if isinstance(value, (int, float)) else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A plain script with a heartbeat.")
    parser.add_argument("--platform-url", default=os.environ.get("PLATFORM_URL"))
    parser.add_argument("--workspace-id", default=os.environ.get("WORKSPACE_ID"))
    parser.add_argument("--interval", type=float, help="seconds between beats")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    if not args.platform_url:
        standalone(args.interval or 0.5)
        return 0
    if not args.workspace_id:
        parser.error("a platform URL needs a workspace id: set WORKSPACE_ID or --workspace-id")
    interval = args.interval or float(os.environ.get("HEARTBEAT_INTERVAL_SECONDS") or 30)
    run(args.platform_url, args.workspace_id, interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
