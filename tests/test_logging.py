"""The library logs to the ``heartbeat_sync`` tree, installs no handler and prints nothing."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest

import heartbeat_sync
from heartbeat_sync.testing import FakePlatform, Workspace

from .conftest import HeartbeatFactory, LogCapture, wait_until

PACKAGE = Path(heartbeat_sync.__file__).parent
# The command line and its demo are the modules that print and configure logging, for themselves.
PRINTING_ALLOWED = {"cli/commands.py", "cli/demo.py"}


def test_no_module_of_the_library_prints_or_configures_logging() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):  # sub-packages too
        if path.relative_to(PACKAGE).as_posix() in PRINTING_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("print", "basicConfig", "addHandler", "dictConfig", "fileConfig"):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert offenders == []


def test_a_running_heartbeat_prints_nothing_and_adds_no_handler(
    platform: FakePlatform,
    ws: Workspace,
    make_hb: HeartbeatFactory,
    capfd: pytest.CaptureFixture[str],
) -> None:
    platform.fault("delegations", status=500, times=5)  # warnings are logged, not printed
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_ok >= 3)
    out, err = capfd.readouterr()
    assert out == ""
    assert "heartbeat" not in err
    names = [n for n in logging.root.manager.loggerDict if n.startswith("heartbeat_sync")]
    assert "heartbeat_sync" in names
    for name in names:
        assert logging.getLogger(name).handlers == [], name


def test_warnings_name_the_line_that_raised_them(
    platform: FakePlatform, ws: Workspace, make_hb: HeartbeatFactory, logs: LogCapture
) -> None:
    platform.fault("heartbeat", status=500, times=1)
    with make_hb() as hb:
        assert wait_until(lambda: hb.status().beats_failed >= 1)
    (record,) = [r for r in logs.records if "heartbeat failed" in r.getMessage()]
    assert record.pathname.endswith(os.path.join("loop", "cycle.py"))


def test_every_line_of_several_heartbeats_names_its_workspace(
    platform: FakePlatform, make_hb: HeartbeatFactory, logs: LogCapture, tmp_path: Path
) -> None:
    """Ten Heartbeats in one process and a platform that fails them all: each warning says in
    its message (short id) and in ``extra`` (full id) which workspace it is about, from every
    thread (the beat thread, the side effects, the event stream)."""
    workspaces = [platform.add_workspace(name=f"w{n}") for n in range(3)]
    for ws in workspaces:
        platform.add_delegation(ws.id, status="completed", response_preview="done")
    platform.fault("heartbeat", status=500, times=3)
    platform.fault("a2a", status=400)  # the wake-ups fail: a side-effect thread warns
    platform.fault("events", status=500)  # the streams are refused: their threads warn
    hbs = [
        make_hb(workspace_id=ws.id, **platform.agent_files(ws.id, tmp_path / ws.id))
        for ws in workspaces
    ]
    for hb in hbs:
        hb.start_thread()
    for hb in hbs:
        assert wait_until(lambda hb=hb: hb.status().drops.get("wakeup_failed", 0) >= 1)
        assert wait_until(lambda hb=hb: hb.status().beats_failed >= 1)
    for hb in hbs:
        hb.stop()
    warnings = [r for r in logs.records if r.levelno >= logging.WARNING]
    assert warnings
    for record in warnings:
        ws_id = getattr(record, "workspace_id", None)
        assert ws_id in {ws.id for ws in workspaces}, record.getMessage()
        assert record.getMessage().startswith(f"[{ws_id[:8]}] ")
    threads = {r.threadName.rsplit("-", 1)[0] for r in warnings}
    assert {"heartbeat-sync", "heartbeat-sync-side-effects", "heartbeat-sync-events"} <= threads
