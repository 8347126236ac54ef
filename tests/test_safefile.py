"""The one atomic-write routine (heartbeat_sync._safefile.atomic_write) and its callers in _auth."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from heartbeat_sync import _safefile
from heartbeat_sync.wire.auth import Credentials, save_token


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        _safefile.atomic_write(str(tmp_path / "f"), b"x", fsync=True)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == 0o600
    assert (tmp_path / "f").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_failure_keeps_the_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    _safefile.atomic_write(str(target), b"old")

    def fail(fd: int, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_safefile, "write_all", fail)
    with pytest.raises(OSError, match="No space"):
        _safefile.atomic_write(str(target), b"new", tmp=str(tmp_path / "mine.tmp"))
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_never_writes_through_a_planted_temp_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "f.tmp").symlink_to(victim)
    _safefile.atomic_write(str(tmp_path / "f"), b"new")
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / "f").read_bytes() == b"new"


def test_token_and_secret_are_saved_0600_without_temp_files(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    path = save_token(configs, "tok-1")
    assert path.read_text() == "tok-1" and _mode(path) == 0o600
    creds = Credentials(configs)
    assert creds.save_inbound_secret("s3cret")
    assert not creds.save_inbound_secret("s3cret")  # unchanged: not written again
    assert creds.secret_path.read_text() == "s3cret" and _mode(creds.secret_path) == 0o600
    names = sorted(p.name for p in configs.iterdir())
    assert names == [".auth_token", ".auth_token.lock", ".platform_inbound_secret"]


def test_secret_save_failure_is_logged_without_the_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    creds = Credentials(configs)
    (configs / ".platform_inbound_secret").mkdir()  # cannot be replaced by a file
    assert not creds.save_inbound_secret("s3cret-value")
    assert "could not save the platform inbound secret" in caplog.text
    assert "s3cret-value" not in caplog.text
    assert sorted(p.name for p in configs.iterdir()) == [".platform_inbound_secret"]
