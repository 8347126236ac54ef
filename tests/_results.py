"""What the results-file tests share: records, their lines, warnings, fresh rate limits."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from heartbeat_sync.delivery import journal as _journal
from heartbeat_sync.delivery import results as _files
from heartbeat_sync.delivery.results import Record


@pytest.fixture(autouse=True)
def fresh_warning_counters() -> Iterator[None]:
    """Import into a test module: every test starts from zero, so warnings are predictable."""
    # The rate limiters are module-wide.
    for key in ("results-line", "torn-tail", "journal", "id-log"):
        _files._warn.reset(key)
        _journal._warn.reset(key)
    yield


def record(did: str, **extra: Any) -> Record:
    rec: Record = {
        "delegation_id": did,
        "target_id": "peer",
        "source_id": "me",
        "status": "completed",
        "summary": f"summary {did}",
        "response_preview": f"preview {did}",
        "error": "",
        "timestamp": 1700000000.5,
    }
    rec.update(extra)
    return rec


def line(rec: Record) -> bytes:
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
