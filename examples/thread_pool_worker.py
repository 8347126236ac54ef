"""A ``ThreadPoolExecutor`` worker reporting its health through one shared ``Heartbeat``.

What it shows:

* one ``Heartbeat`` for the whole process, started with ``hb.start_thread()`` and stopped with
  ``hb.stop()`` in a ``finally``;
* tasks on pool threads calling ``hb.record_success()`` / ``hb.record_error(...)`` (both are
  thread-safe), which the next beat reports as ``error_rate`` and ``sample_error``;
* ``hb.active_tasks`` kept equal to the tasks in flight. The property itself is thread-safe,
  but ``hb.active_tasks += 1`` from several threads is a read-modify-write race, so a small
  tracker counts under its own lock and sets the property.

Against a platform::

    PLATFORM_URL=http://platform:8080 WORKSPACE_ID=<id> python examples/thread_pool_worker.py

With no platform URL it starts an in-process ``FakePlatform``, runs a dozen jobs on four
threads in about a second and prints what that platform received::

    python examples/thread_pool_worker.py
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

try:
    from heartbeat_sync import Heartbeat
except ImportError:  # run from a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from heartbeat_sync import Heartbeat

JOBS = 12
WORKERS = 4


class TaskTracker:
    """Counts the tasks in flight and mirrors the count into ``hb.active_tasks``."""

    def __init__(self, hb: Heartbeat) -> None:
        self._hb = hb
        self._lock = threading.Lock()
        self._count = 0
        self.peak = 0

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
            self.peak = max(self.peak, self._count)
            self._hb.active_tasks = self._count
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                self._hb.active_tasks = self._count


def handle(job: int, hb: Heartbeat, tracker: TaskTracker) -> str:
    """One task: some blocking work; every fifth job fails upstream."""
    with tracker.track():
        time.sleep(0.15 + 0.05 * (job % 3))
        if job % 5 == 4:
            hb.record_error(f"job {job}: upstream timed out")
            return f"job {job:2d}: error"
        hb.record_success()
        return f"job {job:2d}: ok"


def run(platform_url: str, workspace_id: str, interval: float, **files: Any) -> None:
    """Run the jobs on a thread pool with a heartbeat; ``files`` go to ``Heartbeat``."""
    hb = Heartbeat(platform_url, workspace_id, interval_seconds=interval, **files)
    hb.start_thread()
    try:
        tracker = TaskTracker(hb)
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="job") as pool:
            futures = [pool.submit(handle, job, hb, tracker) for job in range(JOBS)]
            for future in as_completed(futures):
                print(future.result())
        print(f"at most {tracker.peak} tasks ran at once; active_tasks is {hb.active_tasks} now")
    finally:
        hb.stop()
    status = hb.status()
    print(
        f"heartbeat: {status.beats_ok} beats ok, {status.beats_failed} failed, state {status.state}"
    )


def standalone(interval: float) -> None:
    """Run against an in-process FakePlatform and print what it received."""
    from heartbeat_sync.testing import FakePlatform

    with FakePlatform() as fp, tempfile.TemporaryDirectory() as tmp:
        ws = fp.add_workspace(name="pool-worker")
        files = fp.agent_files(ws.id, tmp)  # its token written where the Heartbeat reads it
        print(f"no platform URL given: using an in-process FakePlatform at {fp.url}")
        run(fp.url, ws.id, interval, exit_timeout=None, **files)
        beats = fp.heartbeats(ws.id)
        active = [int(_number(b.get("active_tasks"))) for b in beats]
        errors = [b for b in beats if _number(b.get("error_rate")) > 0]
        print(f"the platform received {len(beats)} heartbeats")
        print(f"active_tasks it saw: {active}")
        print(f"beats reporting errors: {len(errors)}")
        for body in errors:
            print(f"  error_rate {body['error_rate']}, sample_error {body['sample_error']!r}")


def _number(value: object) -> float:
    """A number from a JSON body (0.0 when it is not one)."""
    return float(value) if isinstance(value, (int, float)) else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A thread-pool worker with a heartbeat.")
    parser.add_argument("--platform-url", default=os.environ.get("PLATFORM_URL"))
    parser.add_argument("--workspace-id", default=os.environ.get("WORKSPACE_ID"))
    parser.add_argument("--interval", type=float, help="seconds between beats")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    if not args.platform_url:
        standalone(args.interval or 0.2)
        return 0
    if not args.workspace_id:
        parser.error("a platform URL needs a workspace id: set WORKSPACE_ID or --workspace-id")
    interval = args.interval or float(os.environ.get("HEARTBEAT_INTERVAL_SECONDS") or 30)
    run(args.platform_url, args.workspace_id, interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
