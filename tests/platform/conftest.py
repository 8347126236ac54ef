"""The integration suite against the real platform server (minimal fixtures).

It runs when ``$HEARTBEAT_SYNC_PLATFORM`` names the folder that holds the server's ``start``
and ``stop`` scripts, and is skipped with that reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._real import ENV_VAR, AgentServer, RealPlatform


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "platform: needs the real platform server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason=f"{ENV_VAR} is not set (the platform's start/stop folder)")
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.platform)
            if not os.environ.get(ENV_VAR):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def real_platform() -> Iterator[RealPlatform]:
    scripts = Path(os.environ[ENV_VAR]).resolve()
    state = Path(tempfile.mkdtemp(prefix="heartbeat-sync-platform-"))
    state.chmod(0o711)  # Postgres (the postgres user when root) must reach pg/ inside
    (state / "server.extra.env").write_text("RATE_LIMIT=100000\n")
    subprocess.run(
        [str(scripts / "start"), str(state)], capture_output=True, check=True, timeout=600
    )
    env = dict(
        line.split("=", 1)
        for line in (state / "platform.env").read_text().splitlines()
        if "=" in line
    )
    platform = RealPlatform(env["PLATFORM_URL"], env["ADMIN_TOKEN"], env["DATABASE_URL"])
    try:
        yield platform
    finally:
        platform.close()
        subprocess.run([str(scripts / "stop"), str(state)], capture_output=True, timeout=120)


@pytest.fixture
def agent_server() -> Iterator[AgentServer]:
    agent = AgentServer()
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def hb_files(tmp_path: Path) -> dict[str, Any]:
    configs = tmp_path / "configs"
    configs.mkdir()
    return {
        "results_file": tmp_path / "results.jsonl",
        "cursor_file": tmp_path / "cursor",
        "seen_file": tmp_path / "seen",
        "configs_dir": configs,
    }
