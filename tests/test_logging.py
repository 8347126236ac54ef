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
    (record,) = [r for r in logs.records if r.getMessage().startswith("heartbeat failed")]
    assert record.pathname.endswith(os.path.join("loop", "cycle.py"))
