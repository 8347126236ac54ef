"""The adapters are optional: ``heartbeat_sync`` imports no framework, and an adapter whose
framework is missing says which extra to install. Runs with or without the frameworks."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
FRAMEWORKS = ("langchain_core", "langgraph", "langchain", "smolagents")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow
def test_importing_the_library_imports_no_framework() -> None:
    code = (
        "import sys, heartbeat_sync, heartbeat_sync.integrations, heartbeat_sync.testing\n"
        "import heartbeat_sync.integrations._runs\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("adapter", "framework", "extra"),
    [("langchain", "langchain_core", "langchain"), ("smolagents", "smolagents", "smolagents")],
)
def test_an_adapter_without_its_framework_names_the_extra(
    adapter: str, framework: str, extra: str
) -> None:
    # The framework blocked as if it were not installed (whether it is or not).
    code = (
        f"import sys; sys.modules[{framework!r}] = None\n"
        "try:\n"
        f"    import heartbeat_sync.integrations.{adapter}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert f"pip install 'heartbeat-sync[{extra}]'" in done.stdout
    assert f"heartbeat_sync.integrations.{adapter} needs" in done.stdout


#: Comma-separated frameworks (top-level module names) the run must have: set by the nox
#: sessions that install them, so that a broken install fails there, never skips the tests.
REQUIRED = "HEARTBEAT_SYNC_FRAMEWORKS"


def test_the_frameworks_this_run_installed_import() -> None:
    for name in filter(None, os.environ.get(REQUIRED, "").split(",")):
        importlib.import_module(name)
