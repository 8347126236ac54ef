"""The environment the project reads (``_config``) and the command line's configuration.

Everything here is pure: a mapping stands in for the environment and no process is started.
"""

from __future__ import annotations

import re
from pathlib import Path

from heartbeat_sync import _config

from .conftest import CONFIG_ENV

PACKAGE = Path(__file__).resolve().parent.parent / "heartbeat_sync"
#: Read by ``requests`` for the library (it honours them as ``requests`` does), not ours.
REQUESTS_ENV = {"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"}


def _env_constants() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(_config).items()
        if name.startswith("ENV_") and isinstance(value, str)
    }


def test_all_env_lists_every_variable_once() -> None:
    """A variable named in ``_config`` but missing from ``ALL_ENV`` would leak into tests."""
    assert sorted(_config.ALL_ENV) == sorted(_env_constants().values())
    assert len(set(_config.ALL_ENV)) == len(_config.ALL_ENV)


def test_the_tests_clear_every_variable_the_project_reads() -> None:
    """The test suite's isolation list is the one in ``_config``, so none can be forgotten."""
    assert set(_env_constants().values()) <= set(CONFIG_ENV)


def test_every_variable_read_in_the_package_is_named_in_config() -> None:
    """A name spelled out where the environment is read must also be one ``_config`` names."""
    patterns = (
        r"""environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]*)["']""",
        r"""getenv\(\s*["']([A-Z][A-Z0-9_]*)["']""",
        r"""^[A-Z_]*ENV\s*=\s*["']([A-Z][A-Z0-9_]*)["']""",
    )
    read: set[str] = set()
    for module in PACKAGE.glob("*.py"):
        text = module.read_text(encoding="utf-8")
        for pattern in patterns:
            read.update(re.findall(pattern, text, re.MULTILINE))
    assert read, "the scan found nothing: the patterns no longer match the code"
    assert read - REQUESTS_ENV <= set(_config.ALL_ENV)
