"""The integration suite against the real platform server (minimal: what these tests use).

Runs when ``$HEARTBEAT_SYNC_PLATFORM`` names the folder holding the server's ``start`` and
``stop`` scripts; skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._real import RealPlatform

ENV = "HEARTBEAT_SYNC_PLATFORM"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "platform: needs the real platform server")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.platform)


@pytest.fixture(scope="session")
def real_platform() -> Iterator[RealPlatform]:
    folder = os.environ.get(ENV)
    if not folder:
        pytest.skip(f"${ENV} is not set: the real platform server is not available")
    state = tempfile.mkdtemp(prefix="hbs-platform-")
    Path(state, "server.extra.env").write_text("RATE_LIMIT=100000\n")
    start = subprocess.run(
        [str(Path(folder, "start")), state], capture_output=True, text=True, timeout=300
    )
    if start.returncode != 0:
        raise AssertionError(f"platform start failed: {start.stderr[-2000:]}")
    env = dict(
        line.split("=", 1) for line in Path(state, "platform.env").read_text().splitlines() if line
    )
    try:
        yield RealPlatform(env["PLATFORM_URL"], env["ADMIN_TOKEN"], env["DATABASE_URL"])
    finally:
        subprocess.run([str(Path(folder, "stop")), state], capture_output=True, timeout=60)


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
