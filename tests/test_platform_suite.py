"""How the integration suite (tests/platform) is switched on, and that CI cannot skip it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest_platform(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "HEARTBEAT_SYNC_PLATFORM")}
    return subprocess.run(
        # In-process (-n 0): the report is then the one pytest prints without workers.
        [sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", "tests/platform"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_without_the_variable_the_suite_is_skipped_with_the_reason() -> None:
    done = _pytest_platform()
    assert done.returncode == 0, done.stdout
    assert re.search(r"\b\d+ skipped\b", done.stdout)
    assert "passed" not in done.stdout and "failed" not in done.stdout
    assert "HEARTBEAT_SYNC_PLATFORM is not set" in done.stdout


@pytest.mark.slow
def test_under_ci_a_skipped_integration_test_is_a_failure() -> None:
    done = _pytest_platform(CI="true")
    assert done.returncode == 1, done.stdout
    assert "skipped" not in done.stdout.splitlines()[-1]
    assert "the integration suite must run here" in done.stdout


def test_ci_runs_the_integration_suite_once_against_both_generations() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    export = ci.index("export HEARTBEAT_SYNC_PLATFORM")
    # CI has the servers' folders beside the checkout; only .ci/run names them, each labelled.
    assert ci[export - 1] == 'HEARTBEAT_SYNC_PLATFORM="2026-05=$MAY:2026-08=$AUGUST"'
    # Each label's folder is resolved to an absolute path before it is exported.
    for label in ("MAY", "AUGUST"):
        line = next(x for x in ci if x.startswith(f'{label}="$(cd '))
        assert line.endswith(' && pwd -P)"'), line
    # Set before the README's test command, which runs the whole suite (tests/platform too)...
    tests = next(i for i, line in enumerate(ci) if line.endswith(".venv/bin/python -m pytest"))
    assert export < tests
    # ...and the nox sessions leave it out, so it runs once.
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'NO_INTEGRATION = ("--ignore=tests/platform",)' in noxfile
    assert noxfile.count("NO_INTEGRATION") == 4
