"""The integration suite against the real platform server.

It runs when ``$HEARTBEAT_SYNC_PLATFORM`` names the folder that holds the server's ``start`` and
``stop`` scripts; otherwise every test here is skipped with that reason. The server is started
once per session into a fresh ``mktemp -d`` folder (Postgres, running as the ``postgres`` user
when we are root, must be able to reach it) and stopped at the end.

The suite runs in parallel (pytest-xdist): these tests are one group, so one worker runs them
all and only that worker starts the server, when its first test here asks for it. A test's
timeout covers the test itself, not that start (which may install Postgres and Redis first and
has its own bound, ``START_TIMEOUT``).

When the variable is set, or ``CI`` is, a skipped test here is reported as a failure: in CI the
suite must have run, all of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._real import ENV_VAR, AgentServer, RealPlatform

HERE = Path(__file__).resolve().parent
#: Seconds ``start`` may take: it may install Postgres and Redis with apt-get first.
START_TIMEOUT = 600


def _scripts() -> Path | None:
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).resolve() if value else None


def _strict() -> bool:
    return bool(os.environ.get("CI", "").strip() or _scripts())


def _ours(item: pytest.Item) -> bool:
    return HERE in item.path.resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(
        reason=f"{ENV_VAR} is not set: it names the folder with the platform server's "
        "start/stop scripts (see README, 'The integration suite')"
    )
    for item in items:
        if _ours(item):
            item.add_marker(pytest.mark.platform)
            item.add_marker(pytest.mark.xdist_group("platform"))
            timeout = item.get_closest_marker("timeout")
            seconds = timeout.args[0] if timeout and timeout.args else config.getini("timeout")
            item.add_marker(pytest.mark.timeout(float(seconds), func_only=True), append=False)
            if _scripts() is None:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _strict() and _ours(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped, but the integration suite must run here (CI or {ENV_VAR} is set): {reason}"
        )


class _Server:
    """The session's server: started once the tests to run are known, stopped at the end."""

    platform: RealPlatform | None = None
    error: str | None = None
    scripts: Path | None = None


def _start(scripts: Path) -> RealPlatform:
    for name in ("start", "stop"):
        if not (scripts / name).is_file():
            raise RuntimeError(f"{ENV_VAR}={scripts}: no {name} script there")
    state = Path(tempfile.mkdtemp(prefix="heartbeat-sync-platform-"))
    # mkdtemp makes it 0700; Postgres (the postgres user when we are root) must reach pg/ in it.
    state.chmod(0o711)
    (state / "server.extra.env").write_text("RATE_LIMIT=100000\n")
    started = subprocess.run(
        [str(scripts / "start"), str(state)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(
            f"{scripts / 'start'} {state} failed ({started.returncode}):\n"
            f"{started.stdout[-4000:]}\n{started.stderr[-4000:]}"
        )
    env = dict(
        line.split("=", 1)
        for line in (state / "platform.env").read_text().splitlines()
        if "=" in line
    )
    return RealPlatform(env["PLATFORM_URL"], env["ADMIN_TOKEN"], env["DATABASE_URL"], state)


def pytest_sessionfinish(session: pytest.Session) -> None:
    platform, _Server.platform = _Server.platform, None
    if platform is not None and _Server.scripts is not None:
        platform.close()
        stopped = subprocess.run(
            [str(_Server.scripts / "stop"), str(platform.state_dir)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if stopped.returncode == 0:  # its data and logs are of no use to anyone now
            shutil.rmtree(platform.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def real_platform() -> RealPlatform:
    """The real server, started once per session (by the worker that runs this suite) and
    stopped at its end."""
    scripts = _scripts()
    if scripts is None:
        pytest.skip(f"{ENV_VAR} is not set")
    if _Server.platform is None and _Server.error is None:
        _Server.scripts = scripts
        try:
            _Server.platform = _start(scripts)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _Server.error = str(exc)
    if _Server.error is not None:
        pytest.fail(f"the platform server did not start: {_Server.error}")
    assert _Server.platform is not None, "the platform server was not started"
    return _Server.platform


@pytest.fixture
def agent_server() -> Iterator[AgentServer]:
    """A JSON-RPC agent on 127.0.0.1; register it with its ``url`` (``http://localhost:PORT``)."""
    agent = AgentServer()
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def hb_files(tmp_path: Path) -> dict[str, Any]:
    """Keyword arguments placing a Heartbeat's files and configs dir in ``tmp_path``."""
    configs = tmp_path / "configs"
    configs.mkdir()
    return {
        "results_file": tmp_path / "results.jsonl",
        "cursor_file": tmp_path / "cursor",
        "seen_file": tmp_path / "seen",
        "configs_dir": configs,
    }
